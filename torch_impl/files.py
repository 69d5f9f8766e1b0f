"""PyTorch weight files (``.pth``, ``.pt``, ``.pth.tar``, ``.tar``, ``.bin``, ``.ckpt``) ⇄ canonical NumPy
weights, for :mod:`common.files.convert`.

Reading never unpickles code: always ``torch.load(..., weights_only=True)``, whose restricted unpickler
refuses any global it does not know (a custom class, ``os.system``, ...) *before* calling it. Accepted:
a plain ``state_dict``; a training checkpoint wrapping one under ``"state_dict"`` / ``"model_state_dict"``
/ ``"model"`` / ``"state_dict_ema"`` (one of them, or the one ``state_dict_key`` names; timm's
``state_dict`` + ``state_dict_ema`` pair defaults to the plain one), whose other entries (epoch, optimizer
state, arch, best accuracy) are reported and ignored; and keys prefixed by ``module.`` (DataParallel /
DDP), ``model.`` (Lightning) or ``_orig_mod.`` (``torch.compile``) when *every* key carries the prefix.
What was unwrapped is reported in the metadata's ``"container"``. Nothing inside the state_dict is
dropped: a non-tensor value is an error, not skipped.

Writing produces exactly what ``model.state_dict()`` saves — a plain ``OrderedDict`` of tensors in
``state_dict`` order — so ``torchvision.models.X().load_state_dict(torch.load(path))`` works with
``strict=True``. **No metadata is written** (the chosen trade-off): an extra key would break a strict
``load_state_dict``, and ``state_dict._metadata`` is a private PyTorch convention that any dict copy
drops. A ``.pth`` therefore records no model name (``read_file`` returns ``{}``) and ``common.files.convert``
identifies the architecture by ``check_weights`` alone. For hand-made checkpoints, ``read_file`` does
return a ``"groupnets_metadata"`` dict of strings found next to the state_dict (wrapped checkpoint) or
inside it (plain one; removed from the weights).
"""

from __future__ import annotations

import os
import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from common.errors import WeightsFileError, first_line
from common.spec.ir import NetworkSpec
from common.spec.params import canonical_params
from common.weights.porting import check_weights

TORCH_FORMATS = ("torch", "megvii")
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "state_dict_ema")
STRIPPED_PREFIXES = ("module.", "model.", "_orig_mod.")
METADATA_KEY = "groupnets_metadata"


def _check_format(fmt: str) -> None:
    if fmt not in TORCH_FORMATS:
        raise WeightsFileError(f"torch_impl reads and writes only the 'torch' (.pth, .pt, .pth.tar, .tar, .bin, "
                               f".ckpt) and 'megvii' (Megvii's .pth.tar layout) formats, not {fmt!r}")


def _looks_like_safetensors(source: Path) -> bool:
    try:
        with open(source, "rb") as handle:  # 8-byte little-endian header length, then a JSON header
            head = handle.read(9)
    except OSError:
        return False  # torch.load below reports the problem as a WeightsFileError
    return len(head) == 9 and head[8:9] == b"{"


def _load(source: Path) -> object:
    """``torch.load`` with ``weights_only=True``; every failure becomes a :class:`WeightsFileError`."""
    if _looks_like_safetensors(source):
        raise WeightsFileError(f"{source}: is a safetensors file, not a PyTorch .pth/.pt file; name it "
                               f"*.safetensors or pass --from canonical")
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # weights_only's unpickler stops at the first global it does not allow, before resolving it:
        # the named global is never imported or called. Other UnpicklingErrors are bad pickle streams.
        message = str(error)
        found = re.search(r"GLOBAL ([\w.]+)", message)
        if found:
            raise WeightsFileError(
                f"{source}: refused: the file carries pickled code (it needs the Python global "
                f"{found.group(1)!r}); it was not executed. torch_impl loads files only with "
                f"torch.load(weights_only=True); re-save just the tensors, e.g. "
                f"torch.save(model.state_dict(), path)") from None
        reason = message.split("WeightsUnpickler error:")[-1].split("Check the documentation")[0]
        raise WeightsFileError(
            f"{source}: not a readable PyTorch weights file: its pickle data is corrupt or holds objects "
            f"that weights_only loading refuses; nothing was executed ({first_line(Exception(reason))})") from None
    except Exception as error:  # corrupt zip, truncated legacy file, not a torch file at all, ...
        raise WeightsFileError(
            f"{source}: not a readable PyTorch weights file (corrupt, truncated or another format): "
            f"{type(error).__name__}: {first_line(error)}") from None


def _strings(source: Path, value: object) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise WeightsFileError(f"{source}: {METADATA_KEY!r} must be a dict of strings, got {type(value).__name__}")
    return dict(value)


def _chosen_wrapper(source: Path, loaded: Mapping, state_dict_key: str | None) -> str | None:
    """The checkpoint entry holding the state_dict: ``state_dict_key``, the only candidate, or timm's
    plain ``state_dict`` next to ``state_dict_ema``; None for a plain state_dict."""
    candidates = [key for key in WRAPPER_KEYS if isinstance(loaded.get(key), Mapping)]
    if state_dict_key is not None:
        if not isinstance(loaded.get(state_dict_key), Mapping):
            raise WeightsFileError(f"{source}: has no state_dict under {state_dict_key!r}; it has "
                                   f"{', '.join(map(repr, candidates)) or 'none'}")
        return state_dict_key
    if len(candidates) > 1 and set(candidates) != {"state_dict", "state_dict_ema"}:
        raise WeightsFileError(f"{source}: holds state dicts under {', '.join(map(repr, candidates))}; choose "
                               f"one with --state-dict KEY (state_dict_key=)")
    return candidates[0] if candidates else None


def _state_dict(source: Path, loaded: object, state_dict_key: str | None = None
                ) -> tuple[Mapping[str, object], dict[str, str]]:
    """The state_dict inside a loaded checkpoint, and its metadata: groupnets' own (when present) and
    ``"container"``, what was unwrapped and what was ignored."""
    if isinstance(loaded, torch.nn.Module):  # cannot happen with weights_only, kept for clarity
        raise WeightsFileError(f"{source}: holds a whole module, not a state_dict")
    if not isinstance(loaded, Mapping):
        raise WeightsFileError(f"{source}: holds a {type(loaded).__name__}, expected a state_dict (a dict of "
                               f"tensors) or a checkpoint dict with one of {', '.join(WRAPPER_KEYS)}")
    metadata: dict[str, str] = {}
    wrapper = _chosen_wrapper(source, loaded, state_dict_key)
    if wrapper is None:
        container = "a plain state_dict"
    else:
        if METADATA_KEY in loaded:
            metadata = _strings(source, loaded[METADATA_KEY])
        ignored = [str(key) for key in loaded if key not in (wrapper, METADATA_KEY)]
        container = f"the state_dict under {wrapper!r} of a checkpoint"
        if ignored:
            container += f" (ignored: {', '.join(ignored[:8])}{', ...' if len(ignored) > 8 else ''})"
        if wrapper == "state_dict" and isinstance(loaded.get("state_dict_ema"), Mapping):
            container += "; an EMA copy is under 'state_dict_ema' (--state-dict state_dict_ema)"
        loaded = loaded[wrapper]
    state = dict(loaded)
    if METADATA_KEY in state:
        metadata = _strings(source, state.pop(METADATA_KEY))
    if not state:
        raise WeightsFileError(f"{source}: holds no tensors")
    bad_keys = [repr(k) for k in state if not isinstance(k, str)]
    if bad_keys:
        raise WeightsFileError(f"{source}: state_dict keys must be strings, got {', '.join(bad_keys[:8])}")
    not_tensors = [f"{k} ({type(v).__name__})" for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        shown = ", ".join(not_tensors[:8]) + (f", ... (+{len(not_tensors) - 8} more)" if len(not_tensors) > 8 else "")
        raise WeightsFileError(f"{source}: state_dict values must be tensors; not tensors: {shown}")
    return state, {**metadata, "container": container}


def _strip_prefixes(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove ``module.`` / ``model.`` / ``_orig_mod.`` while every key carries it (DataParallel, DDP,
    Lightning, torch.compile); the prefixes removed, in order."""
    state, removed = dict(state), []
    stripped = True
    while stripped:
        stripped = False
        for prefix in STRIPPED_PREFIXES:
            if all(key.startswith(prefix) for key in state):
                state = {key[len(prefix):]: value for key, value in state.items()}
                removed.append(prefix)
                stripped = True
    return state, removed


def _to_numpy(source: Path, key: str, tensor: torch.Tensor) -> np.ndarray:
    try:
        tensor = tensor.detach().cpu()
        if tensor.layout != torch.strided or tensor.is_quantized:
            raise TypeError(f"{tensor.layout} / quantized tensors are not supported")
        if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16; float32 holds every value exactly
            tensor = tensor.float()
        return np.array(tensor.numpy(), copy=True, order="C")  # an independent contiguous copy
    except (TypeError, RuntimeError) as error:
        raise WeightsFileError(f"{source}: tensor {key!r} ({tensor.dtype}) cannot be converted to NumPy: "
                               f"{first_line(error)}") from None


def read_file(path: str | os.PathLike, fmt: str, spec: NetworkSpec | None, *, state_dict_key: str | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A PyTorch file → ``(canonical weights, metadata)``; never executes pickled code.

    ``spec`` is not needed (the keys *are* canonical) and is not used to filter anything; whether the
    weights fit a model is :func:`common.check_weights`' job (``common.files.convert`` calls it with the
    ``num_classes`` the file's ``fc`` implies). ``state_dict_key`` picks a training checkpoint's entry
    (module docstring). Errors are :class:`WeightsFileError` naming the file.
    """
    _check_format(fmt)
    source = Path(path)
    if not source.is_file():
        raise WeightsFileError(f"{source}: {'is a directory, expected a weights file' if source.is_dir() else 'no such file'}")
    state, metadata = _state_dict(source, _load(source), state_dict_key)
    state, removed = _strip_prefixes(state)
    if removed:
        metadata["container"] += f", key prefix {' + '.join(map(repr, removed))} removed"
    weights = {key: _to_numpy(source, key, value) for key, value in state.items()}
    return weights, metadata


def _to_tensor(array: object, integer: bool) -> torch.Tensor:
    value = np.asarray(array)
    if integer:  # PyTorch's num_batches_tracked is int64, whatever integer type the canonical set holds
        value = value.astype(np.int64)
    # Shares the array's memory (no second copy of every weight): the tensors only live until torch.save
    # has written them. Read-only arrays are copied (torch.from_numpy wants writable memory).
    value = np.require(value, dtype=value.dtype.newbyteorder("="), requirements=("C", "W"))
    return torch.from_numpy(value)


def write_file(path: str | os.PathLike, weights: Mapping[str, np.ndarray], spec: NetworkSpec | None, fmt: str,
               metadata: Mapping[str, str] | None = None) -> None:
    """Write canonical ``weights`` to exactly ``path`` as a plain, torchvision-style ``state_dict``
    (``fmt="megvii"``: weights already in Megvii's keys, wrapped as ``{'state_dict': module.*}``).

    Keys are in ``state_dict`` order (``spec``'s, after a strict :func:`common.check_weights`), floats
    keep their dtype, ``num_batches_tracked`` is int64. ``metadata`` is accepted for the common
    interface and deliberately not written (see the module docstring).
    """
    _check_format(fmt)
    if spec is not None:
        check_weights(spec, weights, strict=True, source="the weights to write")
        params = canonical_params(spec)
        keys = list(params)
        integer = {key: params[key].is_integer for key in keys}
    else:
        keys = list(weights)
        integer = {key: np.asarray(weights[key]).dtype.kind in "iu" for key in keys}
    state = OrderedDict((key, _to_tensor(weights[key], integer[key])) for key in keys)
    if fmt == "megvii":  # what Megvii's training script saves: a DataParallel model's state_dict, wrapped
        state = {"state_dict": OrderedDict((f"module.{key}", value) for key, value in state.items())}
    try:
        torch.save(state, Path(path))
    except (OSError, RuntimeError) as error:
        raise WeightsFileError(f"{path}: cannot write PyTorch file: {first_line(error)}") from None

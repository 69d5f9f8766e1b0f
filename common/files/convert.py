"""Weight files in any framework's format ⇄ canonical weights ⇄ any other format.

| format | extensions | read / written by |
|---|---|---|
| ``canonical`` | ``.safetensors`` | :mod:`common.weights.files` (metadata: model, num_classes, format) |
| ``torch`` | ``.pth``, ``.pt``, ``.pth.tar``, ``.tar``, ``.bin``, ``.ckpt`` | ``torch_impl`` — ``torch.load(weights_only=True)``; plain, wrapped (``state_dict`` / ``model``) or DataParallel (``module.``) state_dicts |
| ``keras-weights`` | ``.weights.h5`` | ``keras_impl`` — ``model.save_weights`` / ``load_weights`` |
| ``keras`` | ``.keras`` | ``keras_impl`` — whole model, loaded with ``safe_mode=True`` |
| ``flax`` | ``.msgpack`` | ``flax_impl`` — ``flax.serialization`` msgpack of the NNX state + metadata |
| ``megvii`` | (``--to megvii``; read by its keys) | ``torch_impl`` — Megvii ShuffleNet-Series ``{'state_dict': module.*}``, :mod:`common.weights.megvii` |

A PyTorch file with Megvii's keys is recognised by them and mapped (key renames, channel permutations) into
the model that holds Megvii's network: the standard one, or ``<standard>_megvii`` where Megvii's routing is
not the standard model's (``convert shufflenet_v2_x1_0 megvii.pth.tar ...`` then writes
``shufflenet_v2_x1_0_megvii`` and says so; the output's metadata names it).

Every path goes through canonical weights, so there is one porting table and N readers + N writers
instead of N² converters. Outputs are written atomically; inputs are never unpickled. An existing file
is read by what it holds (:mod:`common.files.sniff`), so any name works for a recognised file and a
misnamed one is an error saying what it really is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..check.backends import load_backend
from ..check.verify import verify as run_verify
from ..errors import GroupnetsError, WeightsFileError, WeightsMismatchError
from ..spec import megvii
from ..spec.ir import NetworkSpec
from ..spec.params import canonical_params
from ..spec.registry import get_spec, list_models
from ..weights.files import atomic_output, check_destination, check_readable_file, load_weights, save_weights
from ..weights.fingerprint import fingerprint
from ..weights.heads import infer_num_classes
from ..weights.megvii import from_megvii, is_megvii_layout, to_megvii
from ..weights.porting import check_weights
from .sniff import KINDS, sniff

#: format → (backend package or None for common, extensions)
FORMATS: dict[str, tuple[str | None, tuple[str, ...]]] = {
    "canonical": (None, (".safetensors",)),
    "torch": ("torch", (".pth", ".pt", ".pth.tar", ".tar", ".bin", ".ckpt")),
    "keras-weights": ("keras", (".weights.h5",)),
    "keras": ("keras", (".keras",)),
    "flax": ("flax", (".msgpack",)),
    "megvii": ("torch", ()),  # no extension of its own: --to megvii (a .pth.tar, as Megvii names them)
}


def _format_by_name(path: str | Path) -> str | None:
    name = Path(path).name.lower()
    matches = [(len(ext), fmt) for fmt, (_, exts) in FORMATS.items() for ext in exts if name.endswith(ext)]
    return max(matches)[1] if matches else None


def detect_format(path: str | Path, explicit: str | None = None, *, reading: bool = False) -> str:
    """The format named by ``explicit``; else, for a file to read (``reading``), the one its content
    shows (an error if its name says another); else the one its name's ending says (longest match)."""
    if explicit is not None:
        if explicit not in FORMATS:
            raise WeightsFileError(f"unknown format {explicit!r}; choose from {', '.join(FORMATS)}")
        return explicit
    by_name = _format_by_name(path)
    kind = sniff(path) if reading and Path(path).is_file() else None
    if kind is not None:
        by_content, what = KINDS[kind]
        if by_name is not None and by_name != by_content:
            raise WeightsFileError(f"{path}: is {what}, not a {by_name} file as its name says; rename it or "
                                   f"pass --from {by_content}")
        return by_content
    if by_name is None:
        known = ", ".join(ext for _, exts in FORMATS.values() for ext in exts)
        unknown = "unknown extension and unrecognised content" if reading else "unknown extension"
        raise WeightsFileError(f"{path}: {unknown}; use one of {known} (or --from/--to)")
    return by_name


def _backend(fmt: str):
    framework = FORMATS[fmt][0]
    return None if framework is None else load_backend(framework)


def read_weights(path: str | Path, fmt: str | None = None, model: str | NetworkSpec | None = None, *,
                 state_dict_key: str | None = None) -> tuple[dict[str, np.ndarray], str | None]:
    """Read any supported file → ``(canonical weights, model name recorded in the file or None)``.

    ``model`` is needed only by formats that do not record the architecture (``.weights.h5``);
    ``state_dict_key`` picks the entry of a PyTorch training checkpoint (e.g. ``"state_dict_ema"``).
    :func:`read_weights_file` also says what was unwrapped.
    """
    weights, metadata = read_weights_file(path, fmt, model, state_dict_key=state_dict_key)
    return weights, metadata.get("model")


def read_weights_file(path: str | Path, fmt: str | None = None, model: str | NetworkSpec | None = None, *,
                      state_dict_key: str | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """:func:`read_weights` with the file's whole metadata: ``"model"`` when recorded, and for a PyTorch
    file ``"container"`` (what was unwrapped, what was ignored)."""
    source = check_readable_file(path)
    fmt = detect_format(source, fmt, reading=True)
    backend = _backend(fmt)
    spec = None if model is None else get_spec(model) if isinstance(model, str) else model
    if backend is None:
        weights, metadata = load_weights(source)
    else:
        options = {} if state_dict_key is None else {"state_dict_key": state_dict_key}
        if options and fmt != "torch":
            raise WeightsFileError(f"{source}: state_dict_key picks an entry of a PyTorch checkpoint; this is "
                                   f"a {fmt} file")
        weights, metadata = backend.read_file(source, fmt, spec, **options)
    if FORMATS[fmt][0] == "torch" and is_megvii_layout(weights):
        target, weights = from_megvii(weights, None if spec is None else spec.name, str(source))
        metadata.update(model=target, layout="megvii")
        how = ("keys renamed (Megvii's own architecture)" if target.endswith(megvii.SUFFIX)
               else "keys renamed, channels permuted")
        metadata["container"] = (metadata.get("container", "") + f"; Megvii ShuffleNet-Series layout: {how} into "
                                 f"{target}").lstrip("; ")
    elif fmt == "megvii":
        raise WeightsFileError(f"{source}: does not have Megvii ShuffleNet-Series keys (first_conv.*, features.*)")
    recorded = metadata.get("model")
    order_spec = spec if spec is not None else (get_spec(recorded) if recorded in list_models() else None)
    if order_spec is not None:  # state_dict order (safetensors stores keys sorted); unknown keys last
        rank = {key: i for i, key in enumerate(canonical_params(order_spec))}
        weights = dict(sorted(weights.items(), key=lambda item: rank.get(item[0], len(rank))))
    return dict(weights), dict(metadata)


def read_weights_without_model(path: str | Path, fmt: str | None = None, *, state_dict_key: str | None = None
                               ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """:func:`read_weights_file` for a file whose model is not known yet. A Keras ``.weights.h5`` records
    none and is read by layout, so each registered model's layout is tried until one fits."""
    source = check_readable_file(path)
    fmt = detect_format(source, fmt, reading=True)
    if fmt != "keras-weights":
        return read_weights_file(source, fmt, state_dict_key=state_dict_key)
    for name in list_models():
        try:
            return read_weights_file(source, fmt, name)
        except WeightsFileError:
            continue
    raise WeightsFileError(f"{source}: a Keras .weights.h5 file that fits no registered model's layout")


def model_of(source: str | Path, weights: Mapping[str, np.ndarray]) -> str:
    """The one registered model whose keys and shapes ``weights`` match; else an error saying why not."""
    fits = fingerprint(weights)
    exact = [f.model for f in fits if f.exact]
    if len(exact) == 1:
        return exact[0]
    if exact:
        raise WeightsFileError(f"{source}: fits {' and '.join(exact)} alike; name the model")
    closest = fits[0]
    raise WeightsFileError(f"{source}: fits no registered model; the closest, {closest.model}, differs in "
                           f"{closest.distance} tensors ({len(closest.missing)} missing, {len(closest.unexpected)} "
                           f"unexpected, {len(closest.wrong_shape)} mis-shaped)")


def write_weights(path: str | Path, weights: Mapping[str, np.ndarray], spec: NetworkSpec, fmt: str | None = None,
                  overwrite: bool = False) -> Path:
    """Write canonical ``weights`` for ``spec`` in ``fmt`` (from the extension by default), atomically."""
    fmt = detect_format(path, fmt)
    check_weights(spec, weights, strict=True)
    metadata = {"model": spec.name, "num_classes": str(spec.num_classes)}
    backend = _backend(fmt)
    if fmt == "megvii":  # Megvii's keys and channel order; the torch writer wraps them as Megvii saves them
        weights, spec = to_megvii(weights, spec.name), None
    if backend is None:
        return save_weights(path, weights, metadata, overwrite=overwrite)
    with atomic_output(path, overwrite) as tmp:
        backend.write_file(tmp, weights, spec, fmt, metadata)
    return Path(path)


def nonfinite_keys(weights: Mapping[str, np.ndarray]) -> list[str]:
    return [k for k, v in weights.items() if np.asarray(v).dtype.kind == "f" and not np.isfinite(v).all()]


@dataclass
class ConvertResult:
    source: Path
    destination: Path
    source_format: str
    destination_format: str
    model: str
    num_classes: int
    tensors: int
    parameters: int
    report: object | None = None  # a VerifyReport with --verify
    container: str | None = None  # what was unwrapped from a PyTorch checkpoint
    note: str | None = None  # the model written is not the one asked for, and why (Megvii's own architectures)


def convert(model: str | NetworkSpec | None, source: str | Path, destination: str | Path, *,
            source_format: str | None = None, destination_format: str | None = None,
            num_classes: int | None = None, overwrite: bool = False, verify: bool = False,
            verify_size: int = 64, state_dict_key: str | None = None,
            progress: Callable[[str], None] | None = None) -> ConvertResult:
    """Convert a weight file for ``model`` between any two formats; optionally prove equivalence.

    Checks everything that can be checked before writing anything: formats, the destination (exists
    without ``overwrite``, missing directory), the model name recorded in the source, and every key,
    shape and dtype (one error listing all). ``verify`` re-reads the written file (must be bit-exact)
    and runs :func:`common.check.verify.verify` with those weights; NaN/Inf weights fail it by name.
    ``state_dict_key`` picks the entry of a PyTorch training checkpoint (:func:`read_weights`).
    ``model=None`` takes the model from the file: the one registered model its keys and shapes match.
    """
    src_fmt = detect_format(check_readable_file(source), source_format, reading=True)
    dst_fmt = detect_format(destination, destination_format)
    destination = check_destination(destination, overwrite)
    if Path(source).resolve() == destination.resolve():
        raise WeightsFileError(f"{destination}: source and destination are the same file")
    if model is None:
        weights, metadata = read_weights_without_model(source, src_fmt, state_dict_key=state_dict_key)
        model = metadata["model"] if metadata.get("layout") == "megvii" else model_of(source, weights)
    else:
        weights, metadata = read_weights_file(source, src_fmt, get_spec(model), state_dict_key=state_dict_key)
    name = model.name if isinstance(model, NetworkSpec) else model
    recorded = metadata.get("model")
    note = None
    if recorded and recorded != name and metadata.get("layout") == "megvii":
        note = (f"Megvii's {name} is an architecture of its own ({megvii.DIFFERENCES[recorded]}): "
                f"written as {recorded}")
        model = name = recorded
    elif recorded and recorded != name:
        raise WeightsFileError(f"{source}: holds weights for {recorded!r}, not {name!r}")
    classes = num_classes if num_classes is not None else (infer_num_classes(weights) or get_spec(model).num_classes)
    spec = get_spec(model, classes)
    try:
        check_weights(spec, weights, strict=True, source=str(source))
    except WeightsMismatchError:
        other = [f for f in fingerprint(weights) if f.exact and f.model != spec.name]
        if other:  # another model's file: say what it is rather than list every key
            raise WeightsFileError(f"{source}: holds {other[0].describe()}, not {name}") from None
        raise
    if verify:  # before writing: a file that cannot pass verification is not produced
        bad = nonfinite_keys(weights)
        if bad:
            raise GroupnetsError(f"{source}: NaN/Inf in {len(bad)} tensors: {', '.join(bad[:8])}")
    write_weights(destination, weights, spec, dst_fmt, overwrite=overwrite)
    result = ConvertResult(Path(source), destination, src_fmt, dst_fmt, spec.name, classes, len(weights),
                           sum(int(np.size(v)) for k, v in weights.items() if not k.endswith("num_batches_tracked")),
                           container=metadata.get("container"), note=note)
    if verify:
        written, _ = read_weights(destination, dst_fmt, spec)
        changed = [k for k in weights if k not in written or not np.array_equal(written[k], weights[k])]
        if changed or set(written) != set(weights):
            raise GroupnetsError(f"{destination}: read back differently for {changed[:8]}")
        result.report = run_verify(spec, weights=weights, input_shape=(2, spec.in_channels, verify_size, verify_size),
                                   progress=progress)
    return result

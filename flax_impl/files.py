"""Flax weight files (``.msgpack``) ⇄ canonical NumPy weights, for :mod:`common.files.convert`.

A file is ``flax.serialization.msgpack_serialize`` of one pure dict (msgpack, never pickle)::

    {"format": "groupnets-flax/1",
     "metadata": {str: str},               # "model", "num_classes", ... as common.files.convert passes them
     "state": {"stage2": {"0": {"branch2": {"0": {"kernel": ndarray, ...}}}}, ...}}

``state`` mirrors ``nnx.state(model)``: the framework keys of ``common.weights.porting.framework_shapes(spec,
"flax")`` split on ``"."`` (HWIO kernels, ``(in, out)`` dense kernels, ``scale`` / ``bias`` / ``mean`` /
``var`` / ``num_batches_tracked``). So ``nnx.update(model, nnx.State(restored["state"]))`` — or
``flax_impl.load_weights`` on what :func:`read_file` returns — restores a model. Floats keep the dtype
they were written with; ``num_batches_tracked`` is written and read as int64 (PyTorch's type) whatever
``jax_enable_x64`` says, so a canonical → msgpack → canonical round trip is bit-exact.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import numpy as np
from flax import serialization

from common.errors import GroupnetsError, WeightsFileError, first_line
from common.spec.ir import NetworkSpec
from common.spec.params import canonical_params
from common.spec.registry import get_spec
from common.weights.porting import check_weights, framework_key, framework_shapes, to_canonical, to_framework

FORMAT_VERSION = "groupnets-flax/1"
FLAX_FORMATS = ("flax",)


def _check_format(fmt: str) -> None:
    if fmt not in FLAX_FORMATS:
        raise WeightsFileError(f"flax_impl reads and writes only the 'flax' format (.msgpack), not {fmt!r}")


# ------------------------------------------------------------------------------------- nesting
def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b.c": v}`` → ``{"a": {"b": {"c": v}}}`` (the NNX state tree of the framework keys)."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"key {key!r} nests under an array")
        if leaf in node:
            raise ValueError(f"duplicate key {key!r}")
        node[leaf] = value
    return tree


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Inverse of :func:`nest`; non-string keys and empty sub-dicts are errors (``ValueError``)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if not isinstance(key, str):
            raise ValueError(f"state key {key!r} under {prefix or 'the root'!r} is not a string")
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, Mapping):
            if not value:
                raise ValueError(f"state entry {path!r} is empty")
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


# --------------------------------------------------------------------------------------- write
def write_file(path: str | os.PathLike, weights: Mapping[str, np.ndarray], spec: NetworkSpec | None, fmt: str,
               metadata: Mapping[str, str] | None = None) -> None:
    """Write canonical ``weights`` for ``spec`` to exactly ``path`` as a groupnets Flax msgpack file.

    The weights are checked strictly against ``spec`` and mapped to Flax keys/layouts by
    ``common.weights.porting.to_framework`` (no model is built). ``metadata`` is stored as strings, with ``model`` and
    ``num_classes`` always ``spec``'s so the file is self-describing. ``spec=None`` takes the
    architecture from ``metadata["model"]`` / ``metadata["num_classes"]``.
    """
    _check_format(fmt)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    if spec is None:
        spec = _spec_from_metadata(Path(path), meta, None)
    framework, _ = to_framework(spec, "flax", weights, strict=True, source="the weights to write")
    params = canonical_params(spec)
    integer_keys = {framework_key("flax", p) for p in params.values() if p.is_integer}
    arrays = {}
    for key, value in framework.items():
        value = np.asarray(value)
        if key in integer_keys:  # PyTorch's num_batches_tracked type, whatever the caller passed
            value = value.astype(np.int64)
        arrays[key] = value.astype(value.dtype.newbyteorder("="), copy=False)  # views stay views
    payload = {"format": FORMAT_VERSION,
               # the architecture actually written wins over a caller's stale model / num_classes
               "metadata": {**meta, "model": spec.name, "num_classes": str(spec.num_classes)},
               "state": nest(arrays)}
    try:
        with open(path, "wb") as handle:
            write_msgpack(handle, payload)
    except OSError as error:
        raise WeightsFileError(f"{path}: cannot write Flax msgpack file: {first_line(error)}") from None


def write_msgpack(handle: BinaryIO, tree: Mapping[str, Any]) -> None:
    """The bytes of ``flax.serialization.msgpack_serialize(tree)``, streamed into ``handle`` one array at a
    time: ``msgpack_serialize`` builds the whole file in memory (plus a contiguous copy of every array),
    which took ResNeXt-101's conversion to 4.5x the weights' size. Nested dicts of str keys and NumPy
    arrays / str values only (what :func:`write_file` writes); arrays of Flax's chunking size or more
    are refused rather than written differently (no network here comes near it)."""
    packer = msgpack.Packer(default=serialization._msgpack_ext_pack, strict_types=True)  # noqa: SLF001
    stack: list[Any] = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            handle.write(packer.pack_map_header(len(item)))
            # sorted keys, as msgpack_serialize's tree_map copy leaves them; reversed: popped back in order
            for key, value in sorted(item.items(), reverse=True):
                stack.append(value)
                stack.append(_Key(key))
        elif isinstance(item, _Key):
            handle.write(packer.pack(item.text))
        elif isinstance(item, np.ndarray):
            if item.nbytes >= serialization.MAX_CHUNK_SIZE:
                raise WeightsFileError(f"an array of {item.nbytes} bytes exceeds Flax's msgpack chunk size")
            handle.write(packer.pack(item))  # Flax packs tobytes("C"): a transposed view is fine
        else:
            handle.write(packer.pack(item))


def read_msgpack(handle: BinaryIO, size: int) -> Any:
    """``flax.serialization.msgpack_restore`` of the file's bytes, unpacked from the file as it is read
    (the whole file is never in memory next to the arrays rebuilt from it). msgpack only: arrays are
    (shape, dtype name, raw bytes) ext records rebuilt by ``np.frombuffer``, object dtypes are refused, so
    nothing in a file can run code. Trailing bytes are an error, as for ``msgpack_restore``."""
    unpacker = msgpack.Unpacker(handle, ext_hook=serialization._msgpack_ext_unpack,  # noqa: SLF001
                                raw=False, strict_map_key=False, max_buffer_size=max(size, 1))
    tree = unpacker.unpack()
    try:
        unpacker.unpack()
    except msgpack.OutOfData:
        return serialization._unchunk_array_leaves_in_place(tree)  # noqa: SLF001 - as msgpack_restore
    raise msgpack.ExtraData(tree, b"")


class _Key(str):
    """A map key on :func:`write_msgpack`'s stack (told apart from a str value)."""

    @property
    def text(self) -> str:
        return str.__str__(self)


# ---------------------------------------------------------------------------------------- read
def _restore(source: Path) -> dict[str, Any]:
    try:
        size = source.stat().st_size
        if not size:
            raise WeightsFileError(f"{source}: file is empty")
        with open(source, "rb") as handle:
            restored = read_msgpack(handle, size)
    except OSError as error:
        raise WeightsFileError(f"{source}: cannot read: {first_line(error)}") from None
    except WeightsFileError:
        raise
    except Exception as error:  # msgpack raises OutOfData / ExtraData / ValueError ... for bad or short input
        raise WeightsFileError(f"{source}: not a readable Flax msgpack file (corrupt, truncated or another "
                               f"format): {type(error).__name__}: {first_line(error)}") from None
    if not isinstance(restored, dict) or restored.get("format") != FORMAT_VERSION:
        found = restored.get("format") if isinstance(restored, dict) else None
        what = f"format marker {found!r}" if found is not None else "no groupnets format marker"
        raise WeightsFileError(f"{source}: not a groupnets Flax file ({what}; expected {FORMAT_VERSION!r}). "
                               f"Write one with flax_impl.write_file / `groupnets convert ... x.msgpack`")
    return restored


def _spec_from_metadata(source: Path, metadata: Mapping[str, str], spec: NetworkSpec | None,
                        classes_hint: int | None = None) -> NetworkSpec:
    """The architecture to read ``source`` with: ``spec`` (re-sized to the recorded / stored class count)
    or, without one, the recorded ``model`` + ``num_classes``."""
    recorded = metadata.get("model")
    classes: int | None = classes_hint
    if "num_classes" in metadata:
        try:
            classes = int(metadata["num_classes"])
        except ValueError:
            raise WeightsFileError(f"{source}: metadata num_classes={metadata['num_classes']!r} is not an "
                                   f"integer") from None
    try:
        if spec is not None:
            return get_spec(spec, classes)
        if recorded is None:
            raise WeightsFileError(f"{source}: records no model name; pass the model (spec)")
        return get_spec(recorded, classes)
    except WeightsFileError:
        raise
    except GroupnetsError as error:
        raise WeightsFileError(f"{source}: its architecture cannot be resolved: {first_line(error, 300)}") from None


def read_file(path: str | os.PathLike, fmt: str, spec: NetworkSpec | None
              ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A groupnets ``.msgpack`` file → ``(canonical weights, metadata)``, never unpickling anything.

    ``spec`` may be ``None``: the file records ``model`` and ``num_classes``. A given ``spec`` whose class
    count differs from the file's is re-sized to it (``common.files.convert`` passes the 1000-class spec and
    checks the recorded model name itself). If the recorded model differs from ``spec``'s and names a
    registered architecture, that one is used to decode the file, so the caller's "holds weights for X,
    not Y" check can speak. Errors are :class:`WeightsFileError` naming the file: corrupt, truncated,
    not a groupnets msgpack, bad metadata, keys/shapes/dtypes that do not fit.
    """
    _check_format(fmt)
    source = Path(path)
    if not source.is_file():
        raise WeightsFileError(f"{source}: {'is a directory, expected a weights file' if source.is_dir() else 'no such file'}")
    restored = _restore(source)
    metadata = restored.get("metadata", {})
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise WeightsFileError(f"{source}: 'metadata' must be a dict of strings")
    state = restored.get("state")
    if not isinstance(state, dict) or not state:
        raise WeightsFileError(f"{source}: holds no 'state' arrays")
    try:
        flat = flatten(state)
    except ValueError as error:
        raise WeightsFileError(f"{source}: malformed state: {error}") from None
    not_arrays = [f"{k} ({type(v).__name__})" for k, v in flat.items() if not isinstance(v, np.ndarray)]
    if not_arrays:
        raise WeightsFileError(f"{source}: state values must be arrays; not arrays: {', '.join(not_arrays[:8])}")

    fc = flat.get("fc.kernel")
    hint = int(fc.shape[-1]) if fc is not None and fc.ndim == 2 else None
    recorded = metadata.get("model")
    if spec is not None and recorded is not None and recorded != spec.name:
        try:  # decode with the architecture the file records; the caller reports the name mismatch
            spec = _spec_from_metadata(source, metadata, None, hint)
        except WeightsFileError:
            spec = _spec_from_metadata(source, metadata, spec, hint)
    else:
        spec = _spec_from_metadata(source, metadata, spec, hint)
    expected = framework_shapes(spec, "flax")
    wrong = [f"{key}: expected {expected[key]}, got {tuple(value.shape)}" for key, value in flat.items()
             if key in expected and tuple(value.shape) != tuple(expected[key])]
    if wrong:
        more = f", ... (+{len(wrong) - 8} more)" if len(wrong) > 8 else ""
        raise WeightsFileError(f"{source}: its arrays do not fit {spec.name!r} ({spec.num_classes} classes): "
                               f"wrong shapes ({len(wrong)}, Flax layout): {', '.join(wrong[:8])}{more}")
    try:
        weights = to_canonical(spec, "flax", flat)
        params = canonical_params(spec)
        weights = {k: (v.astype(np.int64) if params[k].is_integer and v.dtype.kind in "iu" else v)
                   for k, v in weights.items()}
        check_weights(spec, weights, strict=True, source=str(source))
    except ValueError as error:  # WeightsMismatchError, or a layout transpose of a wrongly-ranked array
        raise WeightsFileError(f"{source}: its arrays do not fit {spec.name!r} "
                               f"({spec.num_classes} classes): {error}") from None
    return weights, dict(metadata)


__all__ = ["FORMAT_VERSION", "read_file", "write_file"]

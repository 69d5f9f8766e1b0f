"""Keras weight files ⇄ canonical NumPy weights, for :mod:`common.files.convert` — read and written directly.

Two formats (``common.files.convert.FORMATS``):

* ``"keras-weights"`` — ``.weights.h5``, exactly as ``model.save_weights`` writes it and
  ``model.load_weights`` reads it: one HDF5 group per layer, keyed by layer *class* + counter in
  ``model.layers`` order, never by layer name (so a file written on one Keras backend loads on another).
  :mod:`keras_impl.h5_layout` derives that layout from the spec, so files are read and written with h5py
  alone — no model is built (that took several times the weights' size in memory). The file does not
  record the architecture, so reading needs the model (``spec``; its number of classes is taken from the
  file's ``fc`` kernel) and checks the file against it: every missing, unexpected or wrongly shaped / typed
  entry is reported at once (Keras itself would silently ignore extra entries, e.g. a deeper model's file).
  Links to other files, virtual or externally stored datasets are refused. HDF5 stores no checksums:
  bytes flipped inside an array's data cannot be detected (truncation and damaged metadata are).
* ``"keras"`` — ``.keras``: the zip ``model.save`` writes (``metadata.json``, ``config.json``,
  ``model.weights.h5`` in the layout above). Writing produces what ``model.save`` does for a
  :class:`~keras_impl.model.GroupNet` (its ``get_config`` + Keras' wrapper; loads with
  ``keras.saving.load_model(path, safe_mode=True)``). Reading accepts only a groupnets ``GroupNet``
  config — a registered model name + ``num_classes`` or an IR spec (plain JSON of whitelisted dataclasses) —
  and never deserialises any class: the architecture comes from the config, so ``spec`` may be ``None``.

Floats keep their dtype (float64 stays float64; a mix is widened to the widest, as a model in that dtype
would store it), so canonical → file → canonical is bit-exact. Writes are atomic (a temporary file in the
same directory, renamed over ``path``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import tempfile
import types
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import h5py
import keras
import numpy as np

from common.errors import GroupnetsError, WeightsFileError, first_line
from common.runtime.dtypes import SUPPORTED_DTYPES
from common.spec.ir import NetworkSpec
from common.spec.params import ParamInfo, canonical_params
from common.spec.registry import get_spec
from common.weights.files import atomic_output, check_readable_file
from common.weights.heads import infer_num_classes
from common.weights.porting import PORTING_TABLE, check_weights, layer_kind

from .h5_layout import H5Layout, keras_layout
from .model import GroupNet, spec_from_model_config

KERAS_FORMATS = ("keras-weights", "keras")
SUFFIXES = {"keras-weights": ".weights.h5", "keras": ".keras"}
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
CONFIG_FILE, METADATA_FILE, WEIGHTS_FILE = "config.json", "metadata.json", "model.weights.h5"
MAX_CONFIG_BYTES = 64 * 2**20


def _check_format(fmt: str) -> None:
    if fmt not in KERAS_FORMATS:
        raise WeightsFileError(f"keras_impl reads and writes only the 'keras-weights' (.weights.h5) and "
                               f"'keras' (.keras) formats, not {fmt!r}")


def _float_dtype(weights: Mapping[str, np.ndarray]) -> np.dtype:
    """float64 if any float tensor is float64, else float32 (float16 / bfloat16 widen exactly)."""
    kinds = {np.asarray(v).dtype for v in weights.values() if np.asarray(v).dtype.kind == "f"}
    return np.dtype("float64") if np.dtype("float64") in kinds else np.dtype("float32")


def _layout_of(param: ParamInfo):
    return PORTING_TABLE["keras"][(layer_kind(param.op), param.role)][1]


def _file_shape(param: ParamInfo) -> tuple[int, ...]:
    return tuple(_layout_of(param).to_framework(np.empty(param.shape, np.uint8), param.op).shape)


# ------------------------------------------------------------------------------------------ write
def _write_h5(handle: h5py.File, weights: Mapping[str, np.ndarray], spec: object) -> None:
    """The groups, attributes and datasets ``model.save_weights`` writes (see :mod:`keras_impl.h5_layout`)."""
    layout = keras_layout(spec)
    params = canonical_params(spec)
    floats = _float_dtype(weights)
    handle.create_group("vars").attrs["name"] = layout.model_name
    for entry in layout.layers:
        group = handle.create_group(entry.group).create_group("vars")
        group.attrs["name"] = entry.name
        for i, key in enumerate(entry.params):
            param = params[key]
            array = _layout_of(param).to_framework(np.asarray(weights[key]), param.op)
            array = array.astype(np.int64 if param.is_integer else floats, copy=False)
            group.create_dataset(str(i), data=np.require(array, requirements="C"))


def _keras_config(spec: object, dtype: str) -> dict:
    """``serialize_keras_object(build(spec, dtype))`` — what ``model.save`` puts in ``config.json``."""
    model = types.SimpleNamespace(name=keras_layout(spec).model_name, trainable=True, groupnets_dtype=dtype,
                                  spec=spec)
    return {"module": GroupNet.__module__, "class_name": GroupNet.__name__,
            "config": GroupNet.get_config(model),  # the class's own get_config, on the fields it reads
            "registered_name": keras.saving.get_registered_name(GroupNet),
            "build_config": {"input_shape": None}, "compile_config": {}}


def _write_keras(target: Path, weights: Mapping[str, np.ndarray], spec: object) -> None:
    """The zip ``model.save`` writes: metadata.json, config.json (both via ``ZipFile.open``), model.weights.h5
    (written to a temporary file beside ``target`` first, then streamed in: no second in-memory copy)."""
    import datetime

    metadata = {"keras_version": keras.__version__,
                "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S")}
    config = _keras_config(spec, _float_dtype(weights).name)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".h5.tmp", dir=target.parent)
    os.close(fd)
    try:
        with h5py.File(tmp_name, "w") as handle:
            _write_h5(handle, weights, spec)
        with zipfile.ZipFile(target, "w") as archive:
            with archive.open(METADATA_FILE, "w") as member:
                member.write(json.dumps(metadata).encode())
            with archive.open(CONFIG_FILE, "w") as member:
                member.write(json.dumps(config).encode())
            archive.write(tmp_name, WEIGHTS_FILE)
    finally:
        os.unlink(tmp_name)


def write_file(path: str | os.PathLike, weights: Mapping[str, np.ndarray], spec: NetworkSpec | None, fmt: str,
               metadata: Mapping[str, str] | None = None) -> None:
    """Write canonical ``weights`` for ``spec`` to ``path`` (``.weights.h5`` or ``.keras``), atomically.

    Every key, shape and dtype is checked first. ``metadata`` is accepted for the common interface: a
    ``.keras`` file records the model itself (name and ``num_classes`` in its config); a ``.weights.h5``
    records nothing.
    """
    _check_format(fmt)
    target = Path(path)
    if spec is None:
        raise WeightsFileError(f"{target}: writing a Keras file needs the model (its spec)")
    check_weights(spec, weights, strict=True, source="the weights to write")
    try:
        with atomic_output(target, overwrite=True) as tmp:
            if fmt == "keras-weights":
                with h5py.File(tmp, "w") as handle:
                    _write_h5(handle, weights, spec)
            else:
                _write_keras(tmp, weights, spec)
    except (OSError, ValueError, TypeError, RuntimeError) as error:
        if isinstance(error, GroupnetsError):
            raise
        raise WeightsFileError(f"{target}: cannot write Keras file: {first_line(error)}") from None


# ------------------------------------------------------------------------------------------- read
def _head(source: Path, size: int = 8) -> bytes:
    try:
        with open(source, "rb") as handle:
            return handle.read(size)
    except OSError as error:
        raise WeightsFileError(f"{source}: cannot read: {first_line(error)}") from None


def _kind_hint(source: Path) -> str:
    """What the file looks like instead, for error messages."""
    head = _head(source, 9)
    if head.startswith(HDF5_SIGNATURE):
        return " (it is an HDF5 file: a .weights.h5 file?)"
    if head.startswith(b"PK"):
        if not zipfile.is_zipfile(source):
            return " (it starts like a zip archive but is damaged or truncated)"
        return " (it is a zip archive: a .keras model or a PyTorch .pth file?)"
    if len(head) == 9 and head[8:9] == b"{":
        return " (it looks like a safetensors file)"
    return ""


def _datasets(handle: h5py.File) -> tuple[dict[str, h5py.Dataset], list[str]]:
    """Every dataset by path, and every unsafe entry (soft / external link, virtual or external data),
    found without following any link out of the file."""
    found: dict[str, h5py.Dataset] = {}
    unsafe: list[str] = []
    pending: list[tuple[str, h5py.Group]] = [("", handle)]
    while pending:
        prefix, group = pending.pop()
        for name in group:
            path = f"{prefix}{name}"
            if not isinstance(group.get(name, getlink=True), h5py.HardLink):
                unsafe.append(f"{path}: a link (only plain groups and datasets are read)")
                continue
            item = group[name]
            if isinstance(item, h5py.Group):
                pending.append((f"{path}/", item))
            elif isinstance(item, h5py.Dataset):
                if item.is_virtual or item.external:
                    unsafe.append(f"{path}: data stored outside the file")
                else:
                    found[path] = item
    return found, unsafe


def _with_file_classes(spec: object, layout: H5Layout, found: Mapping[str, h5py.Dataset]) -> object:
    """``spec`` re-headed to the file's number of classes, like the other readers (``fc`` is not part of
    the architecture's name; ``common.files.convert`` passes the registered 1000-class spec)."""
    if not isinstance(spec, NetworkSpec):
        return spec
    stored = {key: found[path] for path, key in layout.datasets.items() if path in found}
    classes = infer_num_classes(stored, axis=1)  # a Dense kernel is (features, classes)
    return spec if classes in (None, 0, spec.num_classes) else get_spec(spec, classes)


def _read_h5(handle: h5py.File, source: Path, spec: object, what: str, infer_classes: bool
             ) -> dict[str, np.ndarray]:
    """Canonical weights of ``spec`` from an open ``.weights.h5`` layout, checked against the spec first
    (``infer_classes``: ``spec`` re-headed to the file's ``fc`` first)."""
    found, unsafe = _datasets(handle)
    if unsafe:
        raise WeightsFileError(f"{source}: refused: {len(unsafe)} unsafe entries in the {what}: "
                               + "; ".join(unsafe[:6]) + ("; ..." if len(unsafe) > 6 else ""))
    if not any(ds.dtype.kind == "f" for ds in found.values()):
        raise WeightsFileError(f"{source}: holds no Keras weights")
    layout = keras_layout(spec)
    if infer_classes:
        spec = _with_file_classes(spec, layout, found)
    params = canonical_params(spec)
    problems = []
    for path, key in layout.datasets.items():
        param = params[key]
        expected = _file_shape(param)
        if path not in found:
            problems.append(f"missing {path} ({key}, shape {expected})")
            continue
        ds = found[path]
        if tuple(ds.shape) != expected:
            problems.append(f"{path} ({key}): shape {tuple(ds.shape)}, expected {expected}")
        if ds.dtype.kind not in ("iu" if param.is_integer else "f"):
            problems.append(f"{path} ({key}): dtype {ds.dtype}, expected "
                            f"{'an integer' if param.is_integer else 'a floating'} type")
    problems += [f"unexpected {path} (shape {tuple(ds.shape)})" for path, ds in found.items()
                 if path not in layout.datasets]
    if problems:
        name = getattr(spec, "name", type(spec).__name__)
        raise WeightsFileError(f"{source}: the {what} does not fit {name!r} ({len(problems)} problems): "
                               + "; ".join(problems))
    floats = np.dtype("float64") if any(found[p].dtype == np.float64 for p in layout.datasets
                                        if not params[layout.datasets[p]].is_integer) else np.dtype("float32")
    out = {}
    try:
        for path, key in layout.datasets.items():
            param = params[key]
            array = np.asarray(found[path][()]).astype(np.int64 if param.is_integer else floats, copy=False)
            out[key] = np.require(_layout_of(param).to_canonical(array, param.op), requirements="C")
    except (OSError, ValueError, TypeError, KeyError) as error:  # h5py: damaged data / truncated file
        raise WeightsFileError(f"{source}: cannot read the {what} (corrupt or truncated?): "
                               f"{first_line(error)}") from None
    return {key: out[key] for key in params}


@contextlib.contextmanager
def _open_h5(source: Path | io.RawIOBase, name: Path, what: str) -> Iterator[h5py.File]:
    try:
        handle = h5py.File(source, "r")
    except Exception as error:  # h5py OSError (truncated / corrupt) and friends
        raise WeightsFileError(f"{name}: not a readable {what} (corrupt or truncated?): "
                               f"{first_line(error)}") from None
    with handle:
        yield handle


def _read_weights_h5(source: Path, spec: NetworkSpec | None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if spec is None:
        raise WeightsFileError(f"{source}: a .weights.h5 file does not record the architecture; name the "
                               f"model it belongs to (e.g. `groupnets convert MODEL {source.name} ...`)")
    if not _head(source).startswith(HDF5_SIGNATURE):
        raise WeightsFileError(f"{source}: not a Keras .weights.h5 file: no HDF5 signature{_kind_hint(source)}")
    with _open_h5(source, source, "Keras .weights.h5 file") as handle:
        return _read_h5(handle, source, spec, "file", infer_classes=True), {}


class _Window(io.RawIOBase):
    """A read-only view of ``length`` bytes at ``start`` of an open binary file: an uncompressed zip member
    that h5py can seek in (``ZipFile.open`` re-reads from the start on every backward seek)."""

    def __init__(self, raw, start: int, length: int) -> None:
        super().__init__()
        self._raw, self._start, self._length, self._pos = raw, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        size = max(0, min(len(buffer), self._length - self._pos))
        self._raw.seek(self._start + self._pos)
        got = self._raw.readinto(memoryview(buffer)[:size])
        self._pos += got
        return got


@contextlib.contextmanager
def _member(archive: zipfile.ZipFile, raw, info: zipfile.ZipInfo, source: Path) -> Iterator[io.RawIOBase]:
    """A seekable reader of one zip member: a window onto the archive when it is stored uncompressed (as
    Keras writes it), else a temporary extracted copy."""
    if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
        raw.seek(info.header_offset)
        header = raw.read(30)
        if len(header) == 30 and header[:4] == b"PK\x03\x04":
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            yield _Window(raw, info.header_offset + 30 + name_len + extra_len, info.file_size)
            return
        raise WeightsFileError(f"{source}: damaged zip archive (bad local header of {info.filename})")
    with tempfile.TemporaryFile() as copy:
        with archive.open(info) as member:
            while chunk := member.read(1 << 24):
                copy.write(chunk)
        copy.seek(0)
        yield copy


def _spec_from_keras_config(data: object, source: Path) -> tuple[object, str]:
    """The IR spec and dtype of a ``config.json`` — only a groupnets ``GroupNet``; nothing deserialised."""
    if not isinstance(data, dict):
        raise WeightsFileError(f"{source}: not a .keras model: config.json is not a JSON object")
    registered = keras.saving.get_registered_name(GroupNet)
    if data.get("class_name") != GroupNet.__name__ or data.get("registered_name", registered) != registered:
        kind = data.get("registered_name") or data.get("class_name")
        name = data.get("config", {}).get("name") if isinstance(data.get("config"), dict) else None
        raise WeightsFileError(f"{source}: holds a {kind} ({name!r}), not a groupnets model; it was not built "
                               f"by keras_impl")
    config = data.get("config")
    if not isinstance(config, dict) or config.get("dtype", "float32") not in SUPPORTED_DTYPES:
        raise WeightsFileError(f"{source}: a GroupNet config.json without a valid config / dtype")
    try:
        spec = spec_from_model_config(config)  # the very rule GroupNet.from_config rebuilds by
    except (GroupnetsError, TypeError, ValueError, KeyError) as error:
        raise WeightsFileError(f"{source}: cannot rebuild the saved groupnets model: {first_line(error)}") from None
    return spec, config.get("dtype", "float32")


def _read_keras(source: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if not zipfile.is_zipfile(source):
        raise WeightsFileError(f"{source}: not a .keras file: not a readable zip archive{_kind_hint(source)}")
    try:
        with open(source, "rb") as raw, zipfile.ZipFile(raw) as archive:
            members = {info.filename: info for info in archive.infolist()}
            missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if name not in members]
            if missing:
                raise WeightsFileError(f"{source}: not a .keras model: the archive has no {' or '.join(missing)}")
            if members[CONFIG_FILE].file_size > MAX_CONFIG_BYTES:
                raise WeightsFileError(f"{source}: config.json is implausibly large")
            try:
                data = json.loads(archive.read(CONFIG_FILE))
            except ValueError as error:
                raise WeightsFileError(f"{source}: not a .keras model: config.json is not JSON: "
                                       f"{first_line(error)}") from None
            spec, _ = _spec_from_keras_config(data, source)
            with _member(archive, raw, members[WEIGHTS_FILE], source) as inner:
                head = inner.read(8)
                inner.seek(0)
                if head != HDF5_SIGNATURE:
                    raise WeightsFileError(f"{source}: its {WEIGHTS_FILE} is not an HDF5 file")
                with _open_h5(inner, source, f"{WEIGHTS_FILE} in the .keras archive") as handle:
                    weights = _read_h5(handle, source, spec, WEIGHTS_FILE, infer_classes=False)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise WeightsFileError(f"{source}: damaged .keras archive: {first_line(error)}") from None
    metadata: dict[str, str] = {}
    if isinstance(spec, NetworkSpec):
        metadata = {"model": spec.name, "num_classes": str(spec.num_classes)}
    return weights, metadata


def read_file(path: str | os.PathLike, fmt: str, spec: NetworkSpec | None
              ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A ``.weights.h5`` (needs ``spec``) or ``.keras`` file → ``(canonical weights, metadata)``.

    Metadata is ``{"model", "num_classes"}`` for a ``.keras`` file and ``{}`` for a ``.weights.h5``. Every
    failure (missing, empty, truncated, corrupt, another kind of file, wrong model structure, a config that
    is not a groupnets model) is a :class:`WeightsFileError` naming the file.
    """
    _check_format(fmt)
    source = check_readable_file(path)
    if fmt == "keras-weights":
        return _read_weights_h5(source, spec)
    return _read_keras(source)


__all__ = ["read_file", "write_file"]

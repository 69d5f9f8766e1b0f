"""Keras weight files ⇄ canonical NumPy weights, for :mod:`common.convert`.

Two formats (``common.convert.FORMATS``):

* ``"keras-weights"`` — ``.weights.h5``: ``model.save_weights`` / ``model.load_weights``. The file holds
  only arrays (keyed by Keras' object structure: layer *class* + counter, not layer names, so a file
  written on one Keras backend loads on another); it does not record the architecture, so reading needs
  the model (``spec``; its number of classes is taken from the file's ``fc``) and checks the file's
  structure against it with ``keras.saving.KerasFileEditor`` (Keras itself would silently ignore extra
  entries, e.g. a deeper model's file). HDF5 stores no checksums: bytes flipped inside an array's data
  cannot be detected (truncation and damaged metadata are).
* ``"keras"`` — ``.keras``: the whole model (``model.save``), read with
  ``keras.saving.load_model(path, safe_mode=True)``: only registered classes (``package="groupnets"``) and
  Keras' own layers, no ``Lambda``, no pickled code. The architecture comes from the file
  (:meth:`keras_impl.model.GroupNet.get_config`), so ``spec`` may be ``None``.

Keras insists on the exact suffix in the paths it reads and writes, while ``common.weights_io.atomic_output``
hands :func:`write_file` a temporary name like ``.x.weights.h5.a1b2.tmp``: Keras writes to a temporary file
with the right suffix *in the same directory*, which is then ``os.replace``-d onto ``path`` (nothing else is
left behind). A file to read whose name lacks the suffix (``--from``) is linked (or copied) under one into a
temporary directory first. Floats keep the dtype they were written with (the model is built in the dtype
of the weights / of the file), so canonical → file → canonical is bit-exact.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import keras
import numpy as np

from common.weights_io import check_readable_file
from common.errors import GroupnetsError, WeightsFileError
from common.ir import NetworkSpec
from common.porting import check_weights
from common.registry import get_spec

from .model import GroupNet, build
from .weights import export_weights, load_weights

KERAS_FORMATS = ("keras-weights", "keras")
SUFFIXES = {"keras-weights": ".weights.h5", "keras": ".keras"}
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _check_format(fmt: str) -> None:
    if fmt not in KERAS_FORMATS:
        raise WeightsFileError(f"keras_impl reads and writes only the 'keras-weights' (.weights.h5) and "
                               f"'keras' (.keras) formats, not {fmt!r}")


def _first_line(error: BaseException, limit: int = 240) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _float_dtype(weights: Mapping[str, np.ndarray]) -> str:
    """float64 if any float tensor is float64, else float32 (float16 / bfloat16 widen exactly)."""
    kinds = {np.asarray(v).dtype for v in weights.values() if np.asarray(v).dtype.kind == "f"}
    return "float64" if np.dtype("float64") in kinds else "float32"


def _build(spec: object, dtype: str, path: Path, action: str) -> GroupNet:
    try:
        return build(spec, dtype)
    except GroupnetsError as error:  # float64 on JAX without x64
        raise WeightsFileError(f"{path}: cannot {action} {dtype} weights here: {error}") from None


# ------------------------------------------------------------------------------------------ write
def write_file(path: str | os.PathLike, weights: Mapping[str, np.ndarray], spec: NetworkSpec | None, fmt: str,
               metadata: Mapping[str, str] | None = None) -> None:
    """Write canonical ``weights`` for ``spec`` to exactly ``path`` (``.weights.h5`` or ``.keras``).

    The model is built in the weights' float dtype and loaded strictly (every key, shape and dtype
    checked first). ``metadata`` is accepted for the common interface: a ``.keras`` file records the
    model itself (name and ``num_classes`` in its config); a ``.weights.h5`` records nothing.
    """
    _check_format(fmt)
    target = Path(path)
    if spec is None:
        raise WeightsFileError(f"{target}: writing a Keras file needs the model (its spec) to build")
    check_weights(spec, weights, strict=True, source="the weights to write")
    model = _build(spec, _float_dtype(weights), target, "write")
    load_weights(model, weights, strict=True)
    suffix = SUFFIXES[fmt]
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if fmt == "keras-weights":
            model.save_weights(str(tmp))
        else:
            model.save(str(tmp))
        os.replace(tmp, target)
    except (OSError, ValueError, TypeError, RuntimeError) as error:
        raise WeightsFileError(f"{target}: cannot write Keras file: {_first_line(error)}") from None
    finally:
        tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------- read
def _head(source: Path, size: int = 8) -> bytes:
    try:
        with open(source, "rb") as handle:
            return handle.read(size)
    except OSError as error:
        raise WeightsFileError(f"{source}: cannot read: {_first_line(error)}") from None


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


@contextlib.contextmanager
def _with_suffix(source: Path, suffix: str) -> Iterator[str]:
    """``source`` itself when its name ends with ``suffix`` (Keras picks the loader by name), else a link
    (or copy) under such a name in a temporary directory."""
    if source.name.endswith(suffix):
        yield str(source)
        return
    with tempfile.TemporaryDirectory(prefix="groupnets-keras-") as tmp_dir:
        alias = Path(tmp_dir) / f"file{suffix}"
        try:
            alias.symlink_to(source.resolve())
        except OSError:
            shutil.copyfile(source, alias)
        yield str(alias)


def _check_file(source: Path) -> None:
    check_readable_file(source)


def _quiet_editor(path: str) -> keras.saving.KerasFileEditor:
    """``KerasFileEditor`` prints a banner (rich console on stdout); keep library reads silent."""
    with contextlib.redirect_stdout(io.StringIO()):
        return keras.saving.KerasFileEditor(path)


def _leaves(tree: Mapping) -> Iterator[np.ndarray]:
    for value in tree.values():
        if isinstance(value, Mapping):
            yield from _leaves(value)
        else:
            yield np.asarray(value)


def _structure_problems(editor: keras.saving.KerasFileEditor, model: keras.Model) -> list[str]:
    """Entries present on one side only / with another shape (``KerasFileEditor.compare``'s report)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        result = editor.compare(model)
    if result["status"] == "success":
        return []
    lines = [" ".join(line.split()) for line in buffer.getvalue().splitlines()]
    problems = [line.lstrip(".") for line in lines if line.startswith("...")]
    return problems or [f"{result['error_count']} mismatching entries"]


def _with_file_classes(spec: object, tree: Mapping) -> object:
    """``spec`` re-headed to the file's number of classes, like the other readers (``fc`` is not part of
    the architecture's name; ``common.convert`` passes the registered 1000-class spec)."""
    # Keras keys a layer's variables in the file by its class name in snake case + a counter; a network
    # has exactly one ``Linear`` (fc), whose variable "0" is the (in, num_classes) kernel.
    kernel = tree.get("layers", {}).get("linear", {}).get("0") if isinstance(spec, NetworkSpec) else None
    if kernel is None or np.ndim(kernel) != 2 or int(np.shape(kernel)[1]) in (spec.num_classes, 0):
        return spec
    return get_spec(spec, int(np.shape(kernel)[1]))


def _read_weights_h5(source: Path, spec: NetworkSpec | None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if spec is None:
        raise WeightsFileError(f"{source}: a .weights.h5 file does not record the architecture; name the "
                               f"model it belongs to (e.g. `groupnets convert MODEL {source.name} ...`)")
    if not _head(source).startswith(HDF5_SIGNATURE):
        raise WeightsFileError(f"{source}: not a Keras .weights.h5 file: no HDF5 signature{_kind_hint(source)}")
    with _with_suffix(source, SUFFIXES["keras-weights"]) as readable:
        try:
            editor = _quiet_editor(readable)
        except Exception as error:  # h5py OSError (truncated / corrupt), Keras' ValueError (unsafe links)
            raise WeightsFileError(f"{source}: not a readable Keras .weights.h5 file (corrupt or truncated?): "
                                   f"{_first_line(error)}") from None
        floats = [a.dtype for a in _leaves(editor.weights_dict) if a.dtype.kind == "f"]
        if not floats:
            raise WeightsFileError(f"{source}: holds no Keras weights")
        dtype = "float64" if np.dtype("float64") in floats else "float32"
        spec = _with_file_classes(spec, editor.weights_dict)
        model = _build(spec, dtype, source, "read")
        problems = _structure_problems(editor, model)
        if problems:
            shown = "; ".join(problems[:6]) + (f"; ... (+{len(problems) - 6} more)" if len(problems) > 6 else "")
            raise WeightsFileError(f"{source}: does not fit {getattr(spec, 'name', type(spec).__name__)!r} "
                                   f"({len(problems)} problems): {shown}")
        try:
            model.load_weights(readable)
        except Exception as error:  # noqa: BLE001 - Keras raises ValueError / KeyError / OSError here
            raise WeightsFileError(f"{source}: cannot load into {getattr(spec, 'name', 'the model')!r}: "
                                   f"{_first_line(error)}") from None
    return export_weights(model), {}


def _read_keras(source: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    if not zipfile.is_zipfile(source):
        raise WeightsFileError(f"{source}: not a .keras file: not a readable zip archive{_kind_hint(source)}")
    with _with_suffix(source, SUFFIXES["keras"]) as readable:
        try:
            # compile=False: only the weights matter; a saved optimizer / loss is never deserialised.
            model = keras.saving.load_model(readable, compile=False, safe_mode=True)
        except GroupnetsError as error:  # e.g. a float64 model on JAX without x64, an unknown model name
            raise WeightsFileError(f"{source}: cannot rebuild the saved groupnets model here: {error}") from None
        except Exception as error:  # noqa: BLE001 - unknown class (TypeError), Lambda/unsafe (ValueError), zip/h5
            raise WeightsFileError(f"{source}: not a loadable .keras model (loaded with safe_mode=True: only "
                                   f"registered layers, no Lambda or pickled code): "
                                   f"{type(error).__name__}: {_first_line(error)}") from None
    if not isinstance(model, GroupNet):
        raise WeightsFileError(f"{source}: holds a {type(model).__name__} ({model.name!r}), not a groupnets "
                               f"model; it was not built by keras_impl")
    metadata: dict[str, str] = {}
    if isinstance(model.spec, NetworkSpec):
        metadata = {"model": model.spec.name, "num_classes": str(model.spec.num_classes)}
    return export_weights(model), metadata


def read_file(path: str | os.PathLike, fmt: str, spec: NetworkSpec | None
              ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A ``.weights.h5`` (needs ``spec``) or ``.keras`` file → ``(canonical weights, metadata)``.

    Metadata is ``{"model", "num_classes"}`` for a ``.keras`` file and ``{}`` for a ``.weights.h5``. Every
    failure (missing, empty, truncated, corrupt, another kind of file, wrong model structure, unknown or
    unsafe layer class) is a :class:`WeightsFileError` naming the file.
    """
    _check_format(fmt)
    source = Path(path)
    _check_file(source)
    if fmt == "keras-weights":
        return _read_weights_h5(source, spec)
    return _read_keras(source)


__all__ = ["read_file", "write_file"]

"""Canonical weight files: safetensors + metadata, written atomically, never unpickled.

A file is ``{canonical key: array}`` plus string metadata (``model``, ``num_classes``,
``format``). Writing goes to a temporary file in the destination directory, is fsync'ed and then
renamed over the target, so an error or Ctrl-C never leaves a half-written file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from ..errors import WeightsFileError

FORMAT_VERSION = "groupnets-canonical/1"


def check_destination(path: str | os.PathLike, overwrite: bool) -> Path:
    """``path`` as a file a writer may create: not a directory, in an existing directory, and not an
    existing file unless ``overwrite``; else :class:`WeightsFileError` saying which."""
    target = Path(path)
    if target.is_dir():
        raise WeightsFileError(f"{target}: is a directory, expected a file path")
    if not target.parent.exists():
        raise WeightsFileError(f"{target}: directory {target.parent} does not exist")
    if target.exists() and not overwrite:
        raise WeightsFileError(f"{target}: exists; refusing to overwrite (use --force / overwrite=True)")
    return target


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``, else delete it."""
    target = check_destination(path, overwrite)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp (and some writers) make 0600; give the mode open() would
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_weights(path: str | os.PathLike, weights: Mapping[str, np.ndarray],
                 metadata: Mapping[str, str] | None = None, overwrite: bool = True) -> Path:
    """Write canonical ``weights`` to a ``.safetensors`` file atomically; returns the path."""
    from safetensors.numpy import save_file

    meta = {"format": FORMAT_VERSION, **{str(k): str(v) for k, v in (metadata or {}).items()}}
    arrays = {k: np.require(np.asarray(v), requirements="C") for k, v in weights.items()}  # keeps 0-d shapes
    with atomic_output(path, overwrite) as tmp:
        save_file(arrays, str(tmp), metadata=meta)
    return Path(path)


def check_readable_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path if it is an existing, non-empty regular file; else :class:`WeightsFileError`."""
    source = Path(path)
    if not source.exists():
        raise WeightsFileError(f"{source}: no such file")
    if source.is_dir():
        raise WeightsFileError(f"{source}: is a directory, expected a weights file")
    if source.stat().st_size == 0:
        raise WeightsFileError(f"{source}: file is empty")
    return source


def load_weights(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a ``.safetensors`` file → ``(weights, metadata)``. Raises :class:`WeightsFileError` with the
    path and the problem for a missing, empty, truncated or corrupt file."""
    from safetensors import safe_open

    source = check_readable_file(path)
    try:
        with safe_open(str(source), framework="numpy") as handle:
            metadata = dict(handle.metadata() or {})
            weights = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # safetensors raises several types for bad headers / short files
        raise WeightsFileError(f"{source}: not a readable safetensors file ({error})") from None
    return weights, metadata

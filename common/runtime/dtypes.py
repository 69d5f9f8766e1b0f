"""The one dtype-name parser: every backend accepts the same spellings and refuses the rest alike."""

from __future__ import annotations

import numpy as np

from ..errors import GroupnetsError

#: The dtypes every backend builds and the bounds are stated for.
SUPPORTED_DTYPES = ("float32", "float64")


def dtype_name(dtype: object) -> str:
    """``"float32"`` / ``"float64"`` from a name or any NumPy-convertible dtype object (a framework's
    dtype object converts through its string name, e.g. ``torch.float64`` → ``"float64"``); anything
    else is a :class:`GroupnetsError` naming the choices."""
    if dtype is None:  # NumPy would read None as float64
        raise GroupnetsError(f"dtype must be one of {SUPPORTED_DTYPES}, got None")
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype).rpartition(".")[2]  # "torch.float64", "<dtype: 'float64'>" is refused below
    if name not in SUPPORTED_DTYPES:
        raise GroupnetsError(f"dtype must be one of {SUPPORTED_DTYPES}, got {dtype!r}")
    return name

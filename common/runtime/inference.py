"""What a compiled eval-mode forward is in every channels-last backend, written once: a callable over the
backend's arrays that knows its network and dtype and answers ``forward_numpy`` like the model does."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..spec.ir import NetworkSpec
from . import channel_major
from .checks import check_input
from .dtypes import dtype_name


class InferenceFunction:
    """``logits = fast(x)``. A backend subclass sets :attr:`backend` and :attr:`channels_last` and
    implements :meth:`_compiled` (the backend's compiled forward) and :meth:`_to_numpy`."""

    backend = "common"
    channels_last = True
    #: the activation layouts the backend's compiled graph can run in; the first is the default
    layouts: tuple[str, ...] = ("channels_last",)

    def __init__(self, model: Any, dtype: object, layout: str | None = None) -> None:
        spec = getattr(model, "spec", None)
        if not isinstance(spec, NetworkSpec):
            raise TypeError(f"optimize_for_inference needs a whole groupnets network, got {type(model).__name__}")
        layout = self.layouts[0] if layout is None else layout
        if layout not in self.layouts:
            raise ValueError(f"{self.backend}.optimize_for_inference: layout must be one of {self.layouts}, "
                             f"got {layout!r}")
        self.spec = spec
        self.dtype = dtype_name(dtype)
        self.layout = layout
        self._forward = self._compiled(model)

    def _compiled(self, model: Any) -> Any:
        raise NotImplementedError

    def _channel_major_forward(self, weights: Mapping[str, np.ndarray],
                               kernels: channel_major.Kernels) -> Callable[[Any], Any]:
        """``x_nhwc → logits`` as the channel-major graph over canonical ``weights``, for the backend to
        ``jit``: the one spelling behind every ``layout="channel_major"``."""
        return functools.partial(channel_major.forward, self.spec, weights, self.dtype, kernels)

    def _to_numpy(self, value: Any) -> np.ndarray:
        return np.asarray(value)

    def __call__(self, x: Any) -> Any:
        return self._forward(x)

    def forward_numpy(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """``{"logits": ...}`` for a NumPy batch in the backend's layout (checked, cast to the model's dtype)."""
        array = check_input(x, self.spec, self.channels_last, self.backend)
        return {"logits": self._to_numpy(self(np.asarray(array, self.dtype)))}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.spec.name}, dtype={self.dtype}, backend={self.backend}, "
                f"layout={self.layout})")

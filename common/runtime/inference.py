"""What a compiled eval-mode forward is in every channels-last backend, written once: a callable over the
backend's arrays that knows its network and dtype and answers ``forward_numpy`` like the model does.

On JAX a large batch runs as micro-batches whose working buffer fits :data:`MAX_BUFFER_BYTES`
(:mod:`common.runtime.micro_batch`; XLA's memory analysis says what a call needs). A backend that cannot
say runs every batch whole.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..spec.ir import NetworkSpec
from . import channel_major
from .checks import check_input
from .dtypes import dtype_name
from .micro_batch import MAX_BUFFER_BYTES, call_in_slices, check_max_buffer_bytes, micro_batch_size


class InferenceFunction:
    """``logits = fast(x)``. A backend subclass sets :attr:`backend` and :attr:`channels_last` and
    implements :meth:`_compiled` (the backend's compiled forward) and :meth:`_to_numpy`; one that can say
    what a call costs (:meth:`_buffer_bytes`) also :meth:`_concatenate`, and gets micro-batches."""

    backend = "common"
    channels_last = True
    #: the activation layouts the backend's compiled graph can run in; the first is the default
    layouts: tuple[str, ...] = ("channels_last",)

    def __init__(self, model: Any, dtype: object, layout: str | None = None,
                 max_buffer_bytes: int | None = MAX_BUFFER_BYTES) -> None:
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
        self.max_buffer_bytes = check_max_buffer_bytes(max_buffer_bytes, f"{self.backend}.optimize_for_inference")
        self._micro: dict[tuple, int] = {}  # (input shape, dtype) → rows per call
        self._forward = self._compiled(model)

    def _compiled(self, model: Any) -> Any:
        raise NotImplementedError

    def _channel_major_forward(self, weights: Mapping[str, np.ndarray],
                               kernels: channel_major.Kernels) -> Callable[[Any], Any]:
        """``x_nhwc → logits`` as the channel-major graph over canonical ``weights``, for the backend to
        ``jit``: the one spelling behind every ``layout="channel_major"``."""
        return functools.partial(channel_major.forward, self.spec, weights, self.dtype, kernels)

    def _xla_buffer_bytes(self, x: Any) -> int | None:
        """:meth:`_buffer_bytes` of a ``jax.jit`` forward: XLA's own figure for the executable's temporary
        buffer (one allocation per call), from the compile the call on ``x`` would make anyway."""
        stats = self._forward.lower(x).compile().memory_analysis()
        return None if stats is None else int(stats.temp_size_in_bytes)

    def _to_numpy(self, value: Any) -> np.ndarray:
        return np.asarray(value)

    def _prepare(self, x: Any) -> Any:
        """The caller's batch as the compiled forward takes it."""
        return x

    def _buffer_bytes(self, x: Any) -> int | None:
        """The largest buffer one call on ``x`` allocates (compiling for its shape if need be); None: unknown."""
        return None

    def _concatenate(self, parts: list[Any]) -> Any:
        raise NotImplementedError

    def micro_batch(self, x: Any) -> int:
        """Rows per compiled call for a batch shaped like ``x`` (:func:`micro_batch_size`; cached per shape)."""
        key = (tuple(x.shape), str(x.dtype))
        if key not in self._micro:
            batch = int(x.shape[0])
            rows = batch
            if self.max_buffer_bytes is not None and batch > 1:
                whole = self._buffer_bytes(x)
                if whole is not None:
                    rows = micro_batch_size(batch, whole, self.max_buffer_bytes)
                    # the linear estimate, checked on the size that will run (its compile is needed anyway)
                    while rows > 1 and rows < batch and self._buffer_bytes(x[:rows]) > self.max_buffer_bytes:
                        rows = max(1, rows // 2)
            self._micro[key] = rows
        return self._micro[key]

    def __call__(self, x: Any) -> Any:
        x = self._prepare(x)
        return call_in_slices(self._forward, x, self.micro_batch(x), self._concatenate)

    def forward_numpy(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """``{"logits": ...}`` for a NumPy batch in the backend's layout (checked, cast to the model's dtype)."""
        array = check_input(x, self.spec, self.channels_last, self.backend)
        return {"logits": self._to_numpy(self(np.asarray(array, self.dtype)))}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.spec.name}, dtype={self.dtype}, backend={self.backend}, "
                f"layout={self.layout}, max_buffer_bytes={self.max_buffer_bytes})")

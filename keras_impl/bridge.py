"""NumPy in, NumPy out: eval-mode forward passes and per-stage taps.

Keras has no train/eval *mode* (it is the ``training`` call argument), so ``forward_numpy`` always calls
with ``training=False`` and leaves nothing to restore.
"""

from __future__ import annotations

import weakref

import keras
import numpy as np

from common.runtime.checks import check_input
from common.spec import ir

_TAPS_MODELS: "weakref.WeakKeyDictionary[keras.Model, keras.Model]" = weakref.WeakKeyDictionary()


def taps_model(model: keras.Model) -> keras.Model:
    """A second functional model sharing ``model``'s layers whose outputs are the dict of every tap
    (``spec.stage_names``). Cached per model, outside Keras' tracking so it is not saved twice."""
    if not isinstance(model.spec, ir.NetworkSpec):
        raise ValueError(f"taps exist only for networks, not for a {type(model.spec).__name__}")
    cached = _TAPS_MODELS.get(model)
    if cached is None:
        outputs = {name: model.tap_tensors[name] for name in model.spec.stage_names}
        cached = keras.Model(model.inputs[0], outputs, name=f"{model.name}_taps")
        _TAPS_MODELS[model] = cached
    return cached


def _check_input(model: keras.Model, x: np.ndarray) -> np.ndarray:
    dtype = keras.backend.standardize_dtype(model.inputs[0].dtype)
    return check_input(x, model.spec, channels_last=True, backend="keras_impl").astype(dtype, copy=False)


def _infer(model: keras.Model, x: np.ndarray):
    """``model`` in inference mode, the way Keras runs inference on the active backend.

    On JAX that is ``predict_on_batch``: one XLA program per input shape, as ``model.predict`` runs. An
    eager call there compiles every op on its own — ShuffleNet V1 g3's first forward took 14.5 s eagerly,
    6.7 s as one program (2026-12-01). TensorFlow and torch run eagerly (no compile to amortise)."""
    if keras.backend.backend() == "jax":
        return model.predict_on_batch(x)
    return model(x, training=False)


def forward_numpy(model: keras.Model, x: np.ndarray, taps: bool = False) -> dict[str, np.ndarray]:
    """Eval-mode forward of an NHWC NumPy array. A network gives ``{"logits"}`` (every tap of
    ``spec.stage_names`` with ``taps=True``); any other node gives ``{"output"}``."""
    x = _check_input(model, x)
    if isinstance(model.spec, ir.NetworkSpec):
        if taps:
            out = _infer(taps_model(model), x)
            return {name: keras.ops.convert_to_numpy(out[name]) for name in model.spec.stage_names}
        return {"logits": keras.ops.convert_to_numpy(_infer(model, x))}
    return {"output": keras.ops.convert_to_numpy(_infer(model, x))}

"""The registered model class, ``build`` / ``create_model``, dtype checks and IR (de)serialisation.

A :class:`GroupNet` is a functional ``keras.Model`` subclass: Keras sees a plain layer graph (so
``summary()``, ``fit()``, ``save()`` and feature extraction all work), and the class adds ``spec`` (the IR
node it was built from) plus a ``get_config`` that rebuilds the same graph on load. Registered networks
store just their name and ``num_classes``; any other node stores its IR tree as plain JSON (whitelisted
dataclasses only — nothing executable), so custom specs save and load under ``safe_mode=True`` too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from common.errors import GroupnetsError, SpecError, UnknownModelError
from common.runtime.dtypes import SUPPORTED_DTYPES, dtype_name  # noqa: F401 (SUPPORTED_DTYPES re-exported)
from common.spec import ir
from common.spec.registry import get_spec

from .blocks import Build, wire_model
from .layers import keras_name, placeholder_init
from .weights import load_weights

#: The IR dataclasses a saved config may create, by class name (nothing else is ever instantiated).
_IR_TYPES: dict[str, type] = {cls.__name__: cls for cls in ir.NODE_TYPES}


# ------------------------------------------------------------------------------------------- dtype
def check_dtype(dtype: Any) -> str:
    """Normalise ``dtype`` to ``"float32"`` / ``"float64"`` (:func:`common.runtime.dtypes.dtype_name`, the
    parser every backend shares); refuse float64 that would silently be float32.

    On the JAX backend without x64, JAX truncates float64 to float32 on every array creation, so a
    "float64" model would compute in float32 without any error. Detected without importing jax.
    """
    name = dtype_name(dtype)
    if name == "float64" and keras.backend.backend() == "jax":
        probe = keras.ops.convert_to_tensor(np.zeros(1, "float64"))
        if keras.backend.standardize_dtype(probe.dtype) != "float64":
            raise GroupnetsError(
                "float64 on the Keras JAX backend needs JAX's 64-bit mode, which is off: every float64 "
                "array would silently become float32. Set the environment variable JAX_ENABLE_X64=1 "
                "before starting Python (or run jax.config.update('jax_enable_x64', True) before "
                "importing keras)."
            )
    return name


# ----------------------------------------------------------------------------- IR <-> plain JSON
def spec_to_config(node: object) -> Any:
    """An IR tree as JSON-able data: dataclasses become ``{"__ir__": type, field: value}``."""
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        kind = type(node).__name__
        if _IR_TYPES.get(kind) is not type(node):
            raise TypeError(f"not a groupnets IR node: {type(node)!r}")
        return {"__ir__": kind, **{f.name: spec_to_config(getattr(node, f.name)) for f in dataclasses.fields(node)}}
    if isinstance(node, (tuple, list)):
        return [spec_to_config(v) for v in node]
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    raise TypeError(f"cannot serialise {type(node).__name__} in an IR tree")


def spec_from_config(data: Any) -> Any:
    """Inverse of :func:`spec_to_config`; only the IR dataclasses of :mod:`common.spec.ir` can be created."""
    if isinstance(data, dict):
        fields = dict(data)
        kind = fields.pop("__ir__", None)
        cls = _IR_TYPES.get(kind)
        if cls is None:
            raise SpecError(f"unknown IR node type {kind!r} in a saved config")
        return cls(**{k: spec_from_config(v) for k, v in fields.items()})
    if isinstance(data, list):  # every IR container field is a tuple (frozen dataclasses)
        return tuple(spec_from_config(v) for v in data)
    return data


def _is_registered(spec: object) -> bool:
    if not isinstance(spec, ir.NetworkSpec):
        return False
    try:
        return get_spec(spec.name, spec.num_classes) == spec
    except UnknownModelError:
        return False


# ------------------------------------------------------------------------------------------- model
def input_shape(node: object) -> tuple:
    """Keras input shape (no batch axis): NHWC with the node's input channels, or ``(in,)`` for Linear.

    Weightless ops (ReLU, pools, shuffle) keep any channel count, so theirs is ``None``.
    """
    if isinstance(node, ir.Linear):  # the only node that takes flat features, not an image
        return (node.in_features,)
    return (None, None, node.input_channels)


@keras.saving.register_keras_serializable(package="groupnets")
class GroupNet(keras.Model):
    """A functional Keras model built from any groupnets IR node, keeping it as ``self.spec``.

    For a :class:`~common.spec.ir.NetworkSpec` the output is the logits ``(N, num_classes)``; the per-stage
    taps (``stem``, stages, ``pre_logits``, ``logits``) are the tensors in :attr:`tap_tensors`.
    """

    def __init__(self, spec: object, dtype: str = "float32", name: str | None = None,
                 trainable: bool = True) -> None:
        if not isinstance(spec, ir.NODE_TYPES):
            raise TypeError(f"build() takes a groupnets IR node, got {type(spec).__name__}")
        dtype = check_dtype(dtype)
        inputs = keras.Input(input_shape(spec), dtype=dtype, name="input")
        outputs, taps = wire_model(Build(dtype), spec, inputs)
        super().__init__(inputs=inputs, outputs=outputs, name=name or _default_name(spec),
                         trainable=trainable)
        self.dtype_policy = dtype  # so model.dtype reports the dtype every layer was built with
        self.spec = spec
        self.groupnets_dtype = dtype
        self.tap_tensors = taps

    @property
    def is_network(self) -> bool:
        return isinstance(self.spec, ir.NetworkSpec)

    def _run_through_graph(self, inputs, operation_fn=lambda op: op, call_fn=None):
        """Keras's own graph walk, except that each intermediate is dropped once its last consumer ran.

        Keras 3.15 keeps every node's output until the walk ends, so an *eager* forward (the torch backend
        always; TF / JAX outside ``tf.function`` / ``jit``) peaks at the sum of all activations: ResNeXt-50
        at batch 32 on torch took 7.7 GB against ONNX Runtime's 0.9 GB. Compiled graphs free buffers
        themselves and are unaffected. Symbolic walks (``call_fn``) use Keras's method unchanged.
        """
        if call_fn is not None:
            return super()._run_through_graph(inputs, operation_fn=operation_fn, call_fn=call_fn)
        from keras import tree  # noqa: PLC0415 (public re-export of Keras's tree utilities)

        remaining = dict(self._consumer_counts())
        keep = {id(x) for x in self.outputs}
        tensor_dict = {id(x): y for x, y in zip(self.inputs, tree.flatten(inputs))}
        for depth in sorted(self._nodes_by_depth, reverse=True):
            for node in self._nodes_by_depth[depth]:
                if not node.operation or node.is_input:
                    continue
                if any(id(x) not in tensor_dict for x in node.input_tensors):
                    continue  # not computable from these inputs (as Keras)
                args, kwargs = node.arguments.fill_in(tensor_dict)
                outputs = operation_fn(self._get_operation_for_node(node))(*args, **kwargs)
                del args, kwargs
                for x in node.input_tensors:
                    remaining[id(x)] -= 1
                    if remaining[id(x)] == 0 and id(x) not in keep:
                        tensor_dict.pop(id(x), None)
                for x, y in zip(node.outputs, tree.flatten(outputs)):
                    tensor_dict[id(x)] = y
        missing = [x for x in self.outputs if id(x) not in tensor_dict]
        if missing:
            raise ValueError(f"{self.name}: outputs {missing} are not connected to the inputs")
        return tree.pack_sequence_as(self._outputs_struct, [tensor_dict[id(x)] for x in self.outputs])

    def _consumer_counts(self) -> dict[int, int]:
        """How many graph nodes read each symbolic tensor (by ``id``), computed once per model."""
        counts = getattr(self, "_groupnets_consumers", None)
        if counts is None:
            counts = {}
            for nodes in self._nodes_by_depth.values():
                for node in nodes:
                    if node.operation and not node.is_input:
                        for x in node.input_tensors:
                            counts[id(x)] = counts.get(id(x), 0) + 1
            object.__setattr__(self, "_groupnets_consumers", counts)  # plain cache, not Keras-tracked state
        return counts

    def get_config(self) -> dict:
        config: dict[str, Any] = {"name": self.name, "trainable": self.trainable, "dtype": self.groupnets_dtype}
        if _is_registered(self.spec):
            config.update(model_name=self.spec.name, num_classes=self.spec.num_classes, spec=None)
        else:
            config.update(model_name=None, num_classes=None, spec=spec_to_config(self.spec))
        return config

    @classmethod
    def from_config(cls, config: dict, custom_objects: dict | None = None) -> "GroupNet":
        return cls(spec_from_model_config(config), dtype=config.get("dtype", "float32"), name=config.get("name"),
                   trainable=config.get("trainable", True))


def spec_from_model_config(config: dict) -> object:
    """The IR node a :meth:`GroupNet.get_config` describes: its IR tree, or a registered name + classes.
    Only whitelisted IR dataclasses can come out (:func:`spec_from_config`); nothing else is created."""
    if config.get("spec") is not None:
        return spec_from_config(config["spec"])
    return get_spec(config["model_name"], config["num_classes"])


def _default_name(spec: object) -> str:
    if isinstance(spec, ir.NetworkSpec):
        return spec.name
    return type(spec).__name__.lower()


def get_layer(model: keras.Model, path: str) -> keras.layers.Layer:
    """The Keras layer at canonical dotted ``path`` (``"stage2.0.branch2.3"``) on any Keras backend
    (the torch backend's layer names use ``_`` for ``.``; see :func:`layers.keras_name`)."""
    return model.get_layer(keras_name(path))


def build(node: object, dtype: str = "float32", *,
          weights: Mapping[str, np.ndarray] | None = None) -> GroupNet:
    """A Keras model for any IR node: a leaf op, a ``Sequential``, a block, a ``Stage`` or a network.

    ``weights`` (canonical names): loaded strictly, and no random initial values are drawn for them — a
    mismatch raises and no model is returned."""
    if weights is None:
        return GroupNet(node, dtype=dtype)
    with placeholder_init():
        model = GroupNet(node, dtype=dtype)
    load_weights(model, weights)
    return model


def create_model(name: str | ir.NetworkSpec, num_classes: int | None = None, dtype: str = "float32") -> GroupNet:
    """``build(get_spec(name, num_classes), dtype)`` — a registered name or a custom ``NetworkSpec``
    (``num_classes=None``: 1000 for a name, the spec's own for a spec, as :func:`common.get_spec`)."""
    return build(get_spec(name, num_classes), dtype)

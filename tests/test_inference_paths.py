"""Deployment paths compute the same function: torch_impl's ``optimize_for_inference`` (BatchNorm folded,
channels-last, frozen TorchScript) and the ONNX export run by ONNX Runtime, each against the float64 NumPy
oracle under the same bounds as every framework (``common.check.verify.BOUNDS``), on batch and spatial sizes
other than the ones traced with."""

from __future__ import annotations

import functools
import inspect
from dataclasses import replace

import numpy as np
import onnxruntime as ort  # a CI requirement: missing means a loud collection error, never a skip
import pytest

import store
from common import get_spec, list_models, random_input, random_weights
from common.check.compare import BOUNDS, compare
from common.check.oracle import forward
from common.spec import ir
from common.spec.fusion import conv_bn_pairs
from common.spec.summary import peak_activation
from conftest import import_backend
from harness import FULL, TRAIN_MODELS, keras_backend, network_outputs, network_weights, train_spec

#: One model per family, together taking every conv formulation any registered model takes (held by
#: ``test_family_models_take_every_conv_path``; SA-ResNet-50 brings the ungrouped 3x3 bottleneck convs, and
#: Shuffle Attention to every inference path), and both ShuffleNet V2 routings (torchvision's chunk +
#: shuffle at x0.5, Megvii's even/odd split at x1.0: a block-level path of its own in every backend).
#: The two ResNets run two bottlenecks per stage (``*_d2``: the first and one repeat — every conv shape
#: of the registered 50-layer model, half the graph to compile: XLA took 16.8 s for ResNeXt-50's Keras
#: inference function alone). Megvii's V1 unit order is a reordering of the same leaf layers (no new path;
#: 36 worker-s here when it ran). ``--full`` adds it, V1 g8 0.5x and the registered 50-layer ResNets;
#: every model of every family runs in ``test_networks``.
SHALLOW = {"resnext50_d2": "resnext50_32x4d", "sa_resnet50_d2": "sa_resnet50"}
FAMILY_MODELS = ("shufflenet_v2_x0_5", "shufflenet_v2_x1_0_megvii", "shufflenet_v1_g3_x1_0", *SHALLOW) + (
    ("shufflenet_v1_g8_x0_5", "shufflenet_v1_g8_x1_0_megvii", *SHALLOW.values()) if FULL else ())


def family_spec(model: str, num_classes: int | None = None):
    """A :data:`FAMILY_MODELS` name's spec: registered, or a :data:`SHALLOW` cut of a registered ResNet."""
    if model not in SHALLOW:
        return get_spec(model, num_classes)
    from common.spec import resnext, sa_resnet
    module = sa_resnet if SHALLOW[model] in sa_resnet.VARIANTS else resnext
    config = replace(module.VARIANTS[SHALLOW[model]], layers=(2, 2, 2, 2))
    return resnext.build(model, config, 1000 if num_classes is None else num_classes)


def family_weights(model: str) -> dict[str, np.ndarray]:
    """The network tests' weights of a registered model; seed-1 random weights of a shallow one."""
    return network_weights(model) if model not in SHALLOW else _shallow_weights(model)


def family_oracle(model: str, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Every tap of the float64 oracle on :func:`family_weights` at ``size`` (batch 2, the shared input)."""
    return network_outputs("numpy", model, "float64", size) if model not in SHALLOW else _shallow_oracle(model, size)


# A shallow net's weights (~1 s, BatchNorm calibration) and oracle (~0.5 s) per process, not in the test
# store: neighbouring tests need them at once, and through the store one worker idled while the other
# computed (48 waits, 67 s of the main run).
@functools.lru_cache(maxsize=None)
def _shallow_weights(model: str) -> dict[str, np.ndarray]:
    return random_weights(family_spec(model), seed=1, dtype="float64")


@functools.lru_cache(maxsize=None)
def _shallow_oracle(model: str, size: tuple[int, int]) -> dict[str, np.ndarray]:
    return forward(family_spec(model), _shallow_weights(model), _input(size), taps=True)


#: The whole-network size of test_networks (even in H, odd in W), so the oracle outputs are shared.
SIZE = (64, 49)
#: Models whose compiled functions are also called at a second input shape (a retrace of the same function
#: object); the shape is a property of the mechanism, so the cheapest family carries it (``--full``: all).
SECOND_SIZE = (48, 40)
SECOND_SIZE_MODELS = FAMILY_MODELS if FULL else ("shufflenet_v2_x0_5",)


def _conv_paths(model: str) -> set[tuple]:
    """(kernel, stride, grouped, depthwise, Flax / Keras-on-XLA formulation in float32 and in float64) of
    every conv of ``model``."""
    from flax_impl.layers import conv_path  # the rules of common.runtime.xla_cpu, which keras_impl applies too
    return {(op.kernel_size, op.stride, op.groups > 1, op.groups == op.in_channels,
             conv_path(op, "auto", "float32"), conv_path(op, "auto", "float64"))
            for _, op in ir.iter_leaves(family_spec(model)) if isinstance(op, ir.Conv2d)}


def test_family_models_take_every_conv_path():
    """The inference-path tests run a few models; together they must meet every (kernel, stride, grouped,
    depthwise, formulation) a registered model has, or a new model brings a path they never compile."""
    paths = {m: _conv_paths(m) for m in list_models()}
    covered = set().union(*(_conv_paths(m) for m in FAMILY_MODELS))
    missing = {m: sorted(p - covered) for m, p in paths.items() if p - covered}
    assert not missing, f"add a model to FAMILY_MODELS; conv paths not covered: {missing}"


def _torch_model(model: str, dtype: str):
    torch_impl = import_backend("torch")
    net = torch_impl.create_model(family_spec(model), dtype=dtype)
    torch_impl.load_weights(net, family_weights(model))
    return torch_impl, net


def _input(size=SIZE, batch=2) -> np.ndarray:
    return random_input((batch, 3, *size), seed=2, dtype="float64")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mode", ["eager", "script"])
@pytest.mark.parametrize("model", FAMILY_MODELS)
def test_torch_optimized_matches_oracle(model, mode, dtype):
    torch_impl, net = _torch_model(model, dtype)
    fast = torch_impl.optimize_for_inference(net, mode=mode, example_size=(32, 48))
    oracle = family_oracle(model, SIZE)
    got = torch_impl.forward_numpy(fast, _input(), taps=(mode == "eager"))
    assert got.keys() <= oracle.keys() and "logits" in got
    for tap, value in got.items():
        max_abs, max_rel = compare(value, oracle[tap])
        assert max_rel <= BOUNDS[dtype], f"{model} {mode} {dtype} {tap}: max rel {max_rel:.3e} (|Δ| {max_abs:.3e})"


_COMPILED_LOGITS = """
import sys, numpy as np
sys.path[:0] = [{root!r}, {tests!r}]
from common import random_input, random_weights
import torch_impl
from test_inference_paths import compile_spec
x = random_input((2, 3, {h}, {w}), seed=2, dtype="float64")
spec = compile_spec({model!r})
weights = random_weights(spec, seed=1, dtype="float64")
logits = {{}}
for mode in {modes!r}:
    for dtype in ("float32", "float64"):
        net = torch_impl.create_model(spec, dtype=dtype)
        torch_impl.load_weights(net, weights)
        fast = torch_impl.optimize_for_inference(net, mode=mode)
        logits[mode + "-" + dtype] = torch_impl.forward_numpy(fast, x)["logits"]
np.savez({out!r}, **logits)
"""


def _compiled_logits(model: str) -> dict[str, np.ndarray]:
    """``mode="compile"`` (and for :data:`AOT_MODELS` ``"aot"``) logits of ``model`` in float32 and float64
    (keys ``"<mode>-<dtype>"``), from one child process per model (one torch import serves every mode and
    dtype, and one model's compiles never run side by side), once per run (``store``)."""
    modes = ("compile", "aot") if model in AOT_MODELS else ("compile",)
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    def compute() -> dict[str, np.ndarray]:
        tests = Path(__file__).resolve().parent
        with tempfile.TemporaryDirectory() as scratch:
            out = Path(scratch) / "logits.npz"
            code = _COMPILED_LOGITS.format(root=str(tests.parent), tests=str(tests), model=model, modes=modes,
                                           h=SIZE[0], w=SIZE[1], out=str(out))
            subprocess.run([sys.executable, "-c", code], check=True, timeout=600)
            with np.load(out) as data:
                return {k: data[k] for k in data.files}

    return store.cached(("inductor", model, SIZE, modes), compute)


#: The Inductor tests' networks: the training problems, which hold every unit kind of their family in 4
#: blocks (``resnext_sa_tiny``: plain ResNeXt and Shuffle-Attention bottlenecks) — Inductor's compile time
#: grows with the graph: the registered models' 16 repeats took 32-42 s per family of the main run
#: (SA-ResNet-50: 50 s). ``--full`` adds the registered family models.
COMPILE_MODELS = TRAIN_MODELS + (FAMILY_MODELS if FULL else ())
#: ``mode="aot"`` compiles the same Inductor code as ``"compile"`` (tested on every model above) and adds
#: ``torch.export`` and the AOT package: the fast tier takes them through ShuffleNet V2 (channel split,
#: shuffle and concat: the view ops export must trace), ``--full`` through every compile model.
AOT_MODELS = COMPILE_MODELS if FULL else ("shufflenet_v2_tiny",)


def compile_spec(model: str):
    """The spec of a :data:`COMPILE_MODELS` name (imported by the compiling child process too)."""
    return train_spec(model) if model in TRAIN_MODELS else get_spec(model)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("model,mode", [(m, "compile") for m in COMPILE_MODELS] + [(m, "aot") for m in AOT_MODELS])
def test_torch_compiled_matches_oracle(model, mode, dtype):
    """``mode="compile"`` (Inductor) and ``mode="aot"`` (AOTInductor) against the oracle, in a child
    process, so a test worker never holds Inductor's compiled C++ kernels next to XLA's. (A worker's XLA
    abort was first blamed on that; it recurred without Inductor in the process, and the cause was memory
    growth — see conftest.)"""
    spec = compile_spec(model)  # the child's weights (seed 1): cheap for the training problems
    oracle = forward(spec, random_weights(spec, seed=1, dtype="float64"), _input())["logits"]
    got = _compiled_logits(model)[f"{mode}-{dtype}"]
    assert got.dtype == np.dtype(dtype)
    max_abs, max_rel = compare(got, oracle)
    assert max_rel <= BOUNDS[dtype], f"{model} {mode} {dtype}: max rel {max_rel:.3e} (|Δ| {max_abs:.3e})"


def test_optimize_for_inference_leaves_the_model_alone():
    torch_impl, net = _torch_model("shufflenet_v1_g3_x1_0", "float32")
    before = torch_impl.export_weights(net)
    fast = torch_impl.optimize_for_inference(net, mode="eager")
    after = torch_impl.export_weights(net)
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)
    # every BatchNorm that follows a conv is gone from the inference copy, none from the model
    pairs = list(conv_bn_pairs(net.spec))
    assert pairs and all(type(fast.net.get_submodule(bn)).__name__ == "Identity" for _, bn in pairs)
    assert all(type(net.get_submodule(bn)).__name__ == "BatchNorm2d" for _, bn in pairs)
    with pytest.raises(RuntimeError, match="inference only"):
        fast.train()


def test_script_mode_has_no_taps():
    torch_impl, net = _torch_model("shufflenet_v2_x0_5", "float32")
    fast = torch_impl.optimize_for_inference(net, mode="script", example_size=(32, 32))
    with pytest.raises(ValueError, match="stage taps"):
        torch_impl.forward_numpy(fast, _input((32, 32)), taps=True)


@pytest.mark.parametrize("model", list_models())
def test_every_batch_norm_is_folded(model):
    """In all three families every BatchNorm directly follows a conv (as in torchvision), so the fold
    must find one pair per BatchNorm, each conv feeding a BatchNorm of its own width."""
    spec = get_spec(model)
    batch_norms = [path for path, op in ir.iter_leaves(spec) if isinstance(op, ir.BatchNorm2d)]
    pairs = list(conv_bn_pairs(spec))
    assert [bn for _, bn in pairs] == batch_norms
    assert len({conv for conv, _ in pairs}) == len(pairs)


@pytest.mark.parametrize("model", FAMILY_MODELS)
def test_onnx_export_matches_torch(model, tmp_path):
    """The exported file (dynamic batch) run by ONNX Runtime vs torch_impl eager and the oracle: ≤ 1e-5."""
    torch_impl, net = _torch_model(model, "float32")
    path = torch_impl.export_onnx(net, tmp_path / f"{model}.onnx", input_size=SIZE)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = _input(SIZE, batch)
        (logits,) = session.run(None, {"input": x.astype(np.float32)})
        eager = torch_impl.forward_numpy(net, x)["logits"]
        assert compare(logits, eager)[1] <= BOUNDS["float32"]
    oracle = family_oracle(model, SIZE)["logits"]
    (logits,) = session.run(None, {"input": _input().astype(np.float32)})
    assert compare(logits, oracle)[1] <= BOUNDS["float32"]


@pytest.mark.parametrize("model,mode", [("shufflenet_v2_x1_0", "script"), ("resnext50_32x4d", "script"),
                                        ("shufflenet_v1_g3_x1_0", "eager"), ("shufflenet_v1_g1_x1_0", "script")])
def test_auto_mode_follows_the_benchmark(model, mode):
    """Frozen TorchScript except for grouped 1x1 convs (ShuffleNet V1, g > 1), where eager was faster."""
    torch_impl, net = _torch_model(model, "float32")
    assert torch_impl.optimize_for_inference(net, example_size=(32, 32)).mode == mode


@pytest.mark.backend_neutral  # the walk and its bookkeeping are Python; the layers' ops are tested per backend
@pytest.mark.parametrize("framework", ["keras"])
@pytest.mark.parametrize("model", ["shufflenet_v2_x0_5", "shufflenet_v1_g3_x0_5", "resnext50_32x4d"])
def test_keras_eager_forward_frees_intermediates(framework, model):
    """GroupNet's graph walk drops each activation after its last reader (Keras keeps them all, so an eager
    forward peaked at the sum of all activations). Same output as Keras's own walk of the same graph, bit
    for bit; at most a handful of activations alive at any step instead of every one computed so far."""
    import keras
    keras_impl = import_backend(framework)
    net = keras_impl.create_model(model, num_classes=10)
    x = np.asarray(random_input((2, 32, 32, 3), seed=2, dtype="float32"))
    plain = keras.Model(net.inputs, net.outputs)  # same layers, Keras's own _run_through_graph
    assert np.array_equal(keras.ops.convert_to_numpy(net(x, training=False)),
                          keras.ops.convert_to_numpy(plain(x, training=False)))
    alive: list[int] = []
    walk = net._run_through_graph  # noqa: SLF001 - the method under test (Keras's own: max(alive) ~ layers)

    def operation_fn(op):
        def run(*args, **kwargs):
            alive.append(len(inspect.currentframe().f_back.f_locals["tensor_dict"]))
            return op(*args, training=False, **kwargs) if isinstance(op, keras.layers.Layer) else op(*args, **kwargs)
        return run

    walk([x], operation_fn=operation_fn)
    layers = len(alive)
    assert layers > 50 and max(alive) <= 6, (layers, max(alive))


def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


#: (framework, layout) of every compiled channels-last graph: each layout a backend offers — Keras's
#: channel-major graph on JAX only (its refusal elsewhere: ``test_channel_major_needs_xla_on_jax``).
LAYOUTS = [("flax", "channels_last"), ("flax", "channel_major"), ("keras", "channels_last")] + (
    [("keras", "channel_major")] if keras_backend() == "jax" else [])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("framework,layout", LAYOUTS)
@pytest.mark.parametrize("model", FAMILY_MODELS)
def test_optimized_function_matches_oracle(framework, layout, model, dtype):
    """keras_impl / flax_impl ``optimize_for_inference`` (weights as compile-time constants on JAX, XLA on
    TensorFlow; the model's own graph, or ``common.runtime.channel_major``'s) against the float64 oracle
    (one compile per input size)."""
    backend = import_backend(framework)
    net = backend.create_model(family_spec(model), dtype=dtype)
    backend.load_weights(net, family_weights(model))
    fast = backend.optimize_for_inference(net, layout=layout)
    assert fast.layout == layout
    for size in (SIZE, SECOND_SIZE) if model in SECOND_SIZE_MODELS else (SIZE,):
        oracle = family_oracle(model, size)["logits"]
        got = fast.forward_numpy(_nhwc(_input(size)))["logits"]
        assert got.dtype == np.dtype(dtype)
        max_abs, max_rel = compare(got, oracle)
        assert max_rel <= BOUNDS[dtype], f"{framework} {model} {dtype} {size}: max rel {max_rel:.3e} (|Δ| {max_abs:.3e})"


@pytest.mark.parametrize("batch,buffer_bytes,limit,rows", [
    (32, 230, 31, 4),    # ShuffleNet V1 g8 at 224 (MiB): 7.2 a row, 4 fit, 4 divides 32
    (32, 56, 31, 16),    # ShuffleNet V2 x1.0: 17 fit, 16 divides
    (32, 144, 31, 4),    # V1 g3: 6 fit, the divisor 4 is kept (a call fewer than 6 would not pay a compile)
    (31, 144, 31, 6),    # a prime batch: no divisor near 6, so 6 and a ragged last call
    (32, 528, 31, 1),    # SA-ResNet-50: one row per call
    (32, 20, 31, 32),    # fits whole
    (1, 528, 31, 1),     # one row never splits
    (8, 800, None, 8),   # no limit
])
def test_micro_batch_size(batch, buffer_bytes, limit, rows):
    """The rows per call :mod:`common.runtime.micro_batch` picks for a batch whose call needs ``buffer_bytes``
    (MiB here)."""
    from common.runtime.micro_batch import micro_batch_size
    mib = 2**20
    assert micro_batch_size(batch, buffer_bytes * mib, limit and limit * mib) == rows


@pytest.mark.parametrize("framework", ["torch", "flax", "keras"])
def test_micro_batches_match_the_oracle(framework):
    """A batch past ``max_buffer_bytes`` runs as micro-batches (a ragged last one here) and gives every row
    its own logits in order; where the backend cannot say what a call costs (Keras off JAX) it runs whole.
    The split is one loop per fast path over any of its compiled forwards, so one layout / mode proves it."""
    model = "shufflenet_v2_x0_5"
    backend = import_backend(framework)
    net = backend.create_model(family_spec(model), dtype="float32")
    for bad in (0, -1, 2.5, True, "32 MiB"):
        with pytest.raises(ValueError, match="max_buffer_bytes"):
            backend.optimize_for_inference(net, max_buffer_bytes=bad)
    x2 = _input(SIZE).astype("float32")
    x = np.concatenate([x2, x2[::-1], x2[:1]])  # 5 rows, no two neighbours alike
    if framework != "torch":
        x = _nhwc(x)
    if framework == "keras" and keras_backend() != "jax":
        fast = backend.optimize_for_inference(net, max_buffer_bytes=1)
        assert fast._buffer_bytes(x) is None and fast.micro_batch(x) == len(x)
        return
    backend.load_weights(net, family_weights(model))
    if framework == "torch":
        import torch
        sample = torch.from_numpy(x)
        assert backend.optimize_for_inference(net, mode="eager", max_buffer_bytes=None).micro_batch(sample) == len(x)
        row = backend.inference.OP_BUFFER_FACTOR * x.itemsize * peak_activation(family_spec(model), SIZE)
        fast = backend.optimize_for_inference(net, mode="eager", max_buffer_bytes=int(0.7 * len(x) * row))
    else:
        sample = x
        assert backend.optimize_for_inference(net, max_buffer_bytes=None).micro_batch(x) == len(x)
        fast = backend.optimize_for_inference(net)
        fast.max_buffer_bytes = int(fast._buffer_bytes(x) * 0.7)  # the whole batch's own figure
    assert 1 < fast.micro_batch(sample) < len(x)  # 3 of the 5 rows fit: calls of 3 and 2
    got = backend.forward_numpy(fast, x)["logits"] if framework == "torch" else fast.forward_numpy(x)["logits"]
    oracle = family_oracle(model, SIZE)["logits"][[0, 1, 1, 0, 0]]
    max_abs, max_rel = compare(got, oracle)
    assert max_rel <= BOUNDS["float32"], f"{framework}: max rel {max_rel:.3e} (|Δ| {max_abs:.3e})"


@pytest.mark.parametrize("framework", ["keras", "flax"])
def test_channel_major_needs_xla_on_jax(framework):
    """Keras offers the channel-major graph where it is jitted by XLA (JAX) and refuses it clearly on the
    other backends; an unknown layout is refused by every backend."""
    backend = import_backend(framework)
    net = backend.create_model("shufflenet_v2_x0_5", num_classes=10)
    if framework == "flax" or keras_backend() == "jax":
        assert backend.optimize_for_inference(net, layout="channel_major").layout == "channel_major"
    else:
        with pytest.raises(ValueError, match="JAX backend"):
            backend.optimize_for_inference(net, layout="channel_major")
    with pytest.raises(ValueError, match="layout must be one of"):
        backend.optimize_for_inference(net, layout="NCHW")


@pytest.mark.parametrize("framework", ["keras"])
@pytest.mark.parametrize("model", FAMILY_MODELS)
def test_keras_inference_folds_every_batch_norm(framework, model):
    """Every BatchNorm of these networks follows a conv; the Keras inference function must find each pair
    in the layer graph (on every backend's layer naming), or it would silently run unfolded."""
    keras_impl = import_backend(framework)
    net = keras_impl.create_model(family_spec(model, 10))
    folded, skipped = keras_impl.inference.folded_batch_norms(net)
    batch_norms = sum(isinstance(op, ir.BatchNorm2d) for _, op in ir.iter_leaves(family_spec(model)))
    assert len(folded) == len(skipped) == batch_norms > 0


@pytest.mark.parametrize("framework", ["keras", "flax"])
def test_optimized_function_keeps_the_weights_it_was_made_with(framework):
    """On JAX and TensorFlow the function holds the weights of its creation (folded, or copied into variables
    of its own): loading others into the model afterwards does not reach it. Keras on torch runs the model
    itself, so it runs the new weights at once — each as documented."""
    backend = import_backend(framework)
    spec = get_spec("shufflenet_v2_x0_5", 10)
    net = backend.create_model(spec)
    backend.load_weights(net, random_weights(spec, 0, "float32"))
    x = random_input((1, 32, 32, 3), seed=3, dtype="float32")
    fast = backend.optimize_for_inference(net)
    before = fast.forward_numpy(x)["logits"]
    backend.load_weights(net, random_weights(spec, 1, "float32"))
    after = fast.forward_numpy(x)["logits"]
    own = backend.forward_numpy(net, x)["logits"]  # the model's own forward, on the new weights
    assert compare(before, own)[1] > 1e-2  # the two weight sets give other logits
    if framework == "flax" or keras_backend() != "torch":
        assert np.array_equal(after, before)
    else:
        assert compare(after, own)[1] <= BOUNDS["float32"]


@pytest.mark.parametrize("framework", ["keras", "flax"])
def test_optimized_function_leaves_the_model_alone(framework):
    """The model keeps its mode and weights; a non-network is refused with a clear error."""
    backend = import_backend(framework)
    net = backend.create_model("shufflenet_v2_x0_5", num_classes=10)
    before = backend.export_weights(net)
    if framework == "flax":
        net.train()
    fast = backend.optimize_for_inference(net)
    fast.forward_numpy(np.zeros((1, 32, 32, 3), "float32"))
    after = backend.export_weights(net)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    if framework == "flax":
        assert not net.stage2["0"].branch2["1"].use_running_average  # still in train mode
        # the function folds BatchNorm on every path of its own copy; the model keeps the jit-safe default
        assert {m.fold_bn for m in backend.iter_modules(net) if isinstance(m, backend.Conv2d)} == {"taps"}
    with pytest.raises(TypeError, match="whole"):
        backend.optimize_for_inference(backend.build(ir.ReLU()))

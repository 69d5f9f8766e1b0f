"""ShuffleNet V1's grouped 1x1 convs one at a time: XLA CPU against oneDNN (torch) and ONNX Runtime.

    .venv/bin/python benchmarks/grouped_pointwise.py                        # V1 g3 x1.0, batch 32
    .venv/bin/python benchmarks/grouped_pointwise.py --model shufflenet_v1_g8_x1_0 --batch 1

Why it exists: at batch 32 the JAX rows of ``benchmarks/inference.py`` miss the 1.5x target on ShuffleNet
V1 and nowhere else. This times every distinct grouped 1x1 conv of the network (shapes from the spec, each
weighted by how often the network runs it) on:

* ``xla``: the formulation ``flax_impl`` runs for it (``conv_path``: one matmul batched over the groups);
* ``xla_lax``: one ``lax.conv_general_dilated`` with ``feature_group_count`` (what ``nnx.Conv`` does);
* ``torch``: ``nn.Conv2d(groups=g)`` on channels-last input (oneDNN);
* ``onnxruntime``: a one-node ONNX ``Conv`` with ``group=g``;
* ``xla_channel_major``: XLA on channel-major ``(C, N, H, W)`` activations, one matmul batched over the
  groups — no groupnets path runs this layout; it measures what the layout would give.

Each backend runs in its own process with the same thread count. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the repository root, for ``benchmarks.*`` and ``common``

from benchmarks.timing import median_seconds  # noqa: E402
BACKENDS = ("onnxruntime", "torch", "xla", "xla_lax", "xla_channel_major")

Shape = tuple[int, int, int, int, int, int]  # (in channels, out channels, groups, stride, H, W)


def grouped_pointwise_shapes(model: str, size: int) -> Counter:
    """Every grouped 1x1 conv of ``model`` at a ``size`` x ``size`` input: ``{shape: times it runs}``."""
    from common import get_spec, ir
    from common.spec.summary import trace

    found: Counter = Counter()

    def walk(node: object, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        if isinstance(node, ir.Conv2d) and node.kernel_size == 1 and node.groups > 1:
            found[(node.in_channels, node.out_channels, node.groups, node.stride, shape[1], shape[2])] += 1
        if isinstance(node, (ir.Sequential, ir.Stage)):
            for _, child in node.children():
                shape = walk(child, shape)
            return shape
        if isinstance(node, ir.ShuffleV1Block):
            walk(node.branch, shape)
        return trace(node, shape)[0]

    spec = get_spec(model)
    shape = (spec.in_channels, size, size)
    for _, layer in spec.stem:
        shape = walk(layer, shape)
    for stage in spec.stages:
        shape = walk(stage, shape)
    return found


def time_backend(backend: str, shape: Shape, batch: int, threads: int, warmup: int, repeats: int) -> float:
    """Median ms of one grouped 1x1 conv of ``shape`` at ``batch`` on ``backend`` (random data)."""
    import numpy as np

    cin, cout, groups, stride, h, w = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, cin, h, w)).astype("float32")
    kernel = rng.standard_normal((cout, cin // groups, 1, 1)).astype("float32")  # OIHW
    if backend == "onnxruntime":
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        graph = helper.make_graph(
            [helper.make_node("Conv", ["x", "w"], ["y"], group=groups, strides=[stride, stride])], "conv",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, cout, -(-h // stride), -(-w // stride)])],
            [numpy_helper.from_array(kernel, "w")])
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        onnx.checker.check_model(proto)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return median_seconds(lambda: session.run(None, {"x": x}), warmup, repeats) * 1e3
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
        conv = torch.nn.Conv2d(cin, cout, 1, stride, groups=groups, bias=False).eval()
        conv.weight.data = torch.from_numpy(kernel)
        conv = conv.to(memory_format=torch.channels_last)
        xt = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)

        def run():
            with torch.inference_mode():
                return conv(xt)
        return median_seconds(run, warmup, repeats) * 1e3
    if backend in ("xla", "xla_lax"):
        import jax
        from common.spec import ir
        from flax_impl.layers import conv2d, conv_path

        op = ir.Conv2d(cin, cout, 1, stride, 0, groups)
        path = conv_path(op, "auto" if backend == "xla" else "lax")
        hwio = jax.numpy.asarray(kernel.transpose(2, 3, 1, 0))
        fn = jax.jit(lambda v: conv2d(v, hwio, op, path))  # the kernel is a constant, as in optimize_for_inference
        xj = jax.numpy.asarray(x.transpose(0, 2, 3, 1))
        return median_seconds(lambda: fn(xj).block_until_ready(), warmup, repeats) * 1e3
    if backend == "xla_channel_major":
        # The same conv with the activations channel-major, (C, N, H, W): each group's input is one
        # contiguous (C/g, N·H·W) block, so the conv is one matmul batched over the groups whose long
        # dimension is N·H·W — the layout ORT's MLAS and oneDNN compute grouped convs in. Not what any
        # groupnets path runs (its models are channels-last): a measurement of what that layout would give.
        import jax
        import jax.numpy as jnp

        weights = jnp.asarray(kernel[:, :, 0, 0].reshape(groups, cout // groups, cin // groups))

        def conv(v):
            v = v[:, :, ::stride, ::stride] if stride > 1 else v
            c, n, hh, ww = v.shape
            out = jnp.einsum("goi,gip->gop", weights, v.reshape(groups, c // groups, n * hh * ww))
            return out.reshape(cout, n, hh, ww)
        fn = jax.jit(conv)
        xj = jnp.asarray(x.transpose(1, 0, 2, 3))
        return median_seconds(lambda: fn(xj).block_until_ready(), warmup, repeats) * 1e3
    raise ValueError(f"unknown backend {backend!r}")


def _env(threads: int) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads),
            "XLA_FLAGS": f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={threads}"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shufflenet_v1_g3_x1_0")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every backend this many times, interleaved, and keep each conv's fastest median")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shapes = grouped_pointwise_shapes(args.model, args.size)
    if not shapes:
        parser.error(f"{args.model} has no grouped 1x1 convs")
    if args.worker:
        times = {json.dumps(s): time_backend(args.worker, s, args.batch, args.threads, args.warmup, args.repeats)
                 for s in shapes}
        print("RESULT " + json.dumps(times), flush=True)
        return 0

    results: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):
        for backend in args.backends:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", backend, "--model", args.model,
                   "--batch", str(args.batch), "--size", str(args.size), "--threads", str(args.threads),
                   "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(args.threads))
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                print(f"# {backend}: failed: {(proc.stderr.strip().splitlines() or ['no output'])[-1][:100]}")
                continue
            times = json.loads(line[len("RESULT "):])
            best = results.setdefault(backend, times)
            for key, ms in times.items():
                best[key] = min(best[key], ms)

    backends = list(results)
    print(f"# {args.model}, batch {args.batch}, {args.size}x{args.size} input, {args.threads} threads; "
          f"ms per conv (median of {args.repeats}, best of {args.rounds} round(s)), x = ratio to onnxruntime")
    print(f"{'in→out':>10}{'g':>3}{'s':>3}{'HxW':>8}{'runs':>6}" + "".join(f"{b:>18}" for b in backends))
    totals = dict.fromkeys(backends, 0.0)
    for shape, count in sorted(shapes.items(), key=lambda kv: (-kv[0][4], kv[0][0])):
        key = json.dumps(list(shape))
        cin, cout, groups, stride, h, w = shape
        cells = []
        for b in backends:
            ms = results[b][key]
            totals[b] += ms * count
            ref = results.get("onnxruntime", {}).get(key)
            cells.append(f"{ms:>9.2f}" + (f" ({ms / ref:4.2f}x)" if ref else " " * 8))
        label = f"{f'{cin}→{cout}':>10}{groups:>3}{stride:>3}{f'{h}x{w}':>8}{count:>6}"
        print(label + "".join(f"{c:>18}" for c in cells))
    ref = totals.get("onnxruntime")
    print(f"{'network total':>30}" + "".join(
        f"{f'{totals[b]:>9.1f}' + (f' ({totals[b] / ref:4.2f}x)' if ref else ' ' * 8):>18}" for b in backends))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Inference latency of every backend vs ONNX Runtime, measured side by side in one run.

    .venv/bin/python benchmarks/inference.py                   # 5 models x batch 1, 32 at 224x224
    .venv/bin/python benchmarks/inference.py --quick           # fewer repeats, batch 1 and 8
    .venv/bin/python benchmarks/inference.py --models shufflenet_v2_x1_0 --batches 1

Every row runs in its own subprocess (Keras binds its backend at import; peak RSS is then the row's own),
with the same thread count, after warm-up; the time is the median of the repeats and compile / first-call
time is reported separately. The ratio column divides by ONNX Runtime's median *from the same run*;
with ``--rounds R`` every row runs R times, interleaved with the others, and keeps its fastest median
(ORT's too).
This is a measurement, not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the repository root, for ``benchmarks.*`` and ``common``

from benchmarks.timing import median_seconds, peak_mb, reset_peak  # noqa: E402
ROWS = ("onnxruntime", "torch", "torch_channels_last", "torch_compile", "torch_aot", "torch_fused", "torch_script",
        "keras_tensorflow_xla", "keras_tensorflow", "keras_tensorflow_inference",
        "keras_jax", "keras_jax_inference", "keras_jax_channel_major", "keras_torch", "flax_jit", "flax_inference",
        "flax_channel_major", "naive_keras_v1")
DEFAULT_MODELS = ("shufflenet_v2_x1_0", "shufflenet_v1_g3_x1_0", "resnext50_32x4d", "sa_resnet50",
                  "shufflenet_v1_g8_x1_0")


# ------------------------------------------------------------------------------------------- workers
def _time(fn, warmup: int, repeats: int) -> tuple[float, float, float, float]:
    """``(median s, first call s, peak MB, steady peak MB)``. The peak covers the whole process up to the
    end of the first call (imports, weights, build, compile); the steady peak covers warm-up and repeats
    only (NaN where the window cannot be reset), i.e. what serving the model needs once it is compiled."""
    start = time.perf_counter()
    fn()  # first call: tracing / compilation / allocation
    first = time.perf_counter() - start
    peak = peak_mb()
    steady_window = reset_peak()
    median = median_seconds(fn, warmup - 1, repeats)
    steady = peak_mb() if steady_window else float("nan")
    return median, first, max(peak, steady), steady


def _weights(model: str):
    from common import get_spec, random_weights
    spec = get_spec(model)
    return spec, random_weights(spec, 0, "float32", calibrate=False)


def _input(batch: int, size: int, channels_last: bool):
    import numpy as np
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype("float32")
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if channels_last else x


def run_row(row: str, model: str, batch: int, size: int, threads: int, warmup: int, repeats: int) -> dict:
    spec, weights = _weights(model)
    if row == "onnxruntime":
        # The file is exported by torch_impl in a child process, so this row's peak RSS is ORT's own.
        import onnxruntime as ort
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--export-onnx", model, str(path),
                            "--size", str(size)], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {"input": _input(batch, size, False)}
        fn = lambda: session.run(None, feed)  # noqa: E731
    elif row.startswith("torch"):
        import torch
        import torch_impl
        torch.set_num_threads(threads)
        net = torch_impl.create_model(model)
        torch_impl.load_weights(net, weights)
        net.eval()
        x = torch.from_numpy(_input(batch, size, False))
        if row == "torch_channels_last":
            net = net.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        if row in ("torch_compile", "torch_aot"):  # BN folded, channels-last, Inductor freezing (+ AOT)
            net = torch_impl.optimize_for_inference(net, mode=row[len("torch_"):])
        if row in ("torch_fused", "torch_script"):  # torch_impl's recommended inference path
            mode = "eager" if row == "torch_fused" else "script"
            net = torch_impl.optimize_for_inference(net, mode=mode, example_size=(size, size))

        def fn():
            with torch.inference_mode():
                return net(x)
    elif row.startswith("keras") or row == "naive_keras_v1":
        import keras
        x = _input(batch, size, True)
        if row == "naive_keras_v1":
            from benchmarks.naive_keras import build_naive
            net = build_naive(spec)
        else:
            import keras_impl
            net = keras_impl.create_model(model)
            keras_impl.load_weights(net, weights)
        if row in ("keras_jax_inference", "keras_jax_channel_major"):  # keras_impl's recommended path on JAX
            import jax
            fast = keras_impl.optimize_for_inference(net, layout="channel_major" if row.endswith("major")
                                                     else "channels_last")
            x = jax.numpy.asarray(x)
            fn = lambda: fast(x).block_until_ready()  # noqa: E731
        elif row == "keras_tensorflow_inference":  # keras_impl's recommended path on TensorFlow (XLA)
            fast = keras_impl.optimize_for_inference(net)
            x = keras.ops.convert_to_tensor(x)
            fn = lambda: fast(x).numpy()  # noqa: E731
        else:
            net.compile(jit_compile=(row == "keras_tensorflow_xla") if keras.backend.backend() == "tensorflow"
                        else "auto")
            fn = lambda: net.predict_on_batch(x)  # noqa: E731
    elif row in ("flax_inference", "flax_channel_major"):  # flax_impl's recommended path: weights as jit constants
        import jax
        import flax_impl
        net = flax_impl.create_model(model)
        flax_impl.load_weights(net, weights)
        fast = flax_impl.optimize_for_inference(net, layout="channel_major" if row.endswith("major")
                                                else "channels_last")
        x = jax.numpy.asarray(_input(batch, size, True))
        fn = lambda: fast(x).block_until_ready()  # noqa: E731
    elif row == "flax_jit":
        import jax
        from flax import nnx
        import flax_impl
        net = flax_impl.create_model(model)
        flax_impl.load_weights(net, weights)
        net.eval()
        graphdef, state = nnx.split(net)
        forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
        x = jax.numpy.asarray(_input(batch, size, True))
        fn = lambda: forward(state, x).block_until_ready()  # noqa: E731
    else:
        raise ValueError(f"unknown row {row}")
    median, first, peak, steady = _time(fn, warmup, repeats)
    return {"row": row, "model": model, "batch": batch, "ms": median * 1e3, "first_ms": first * 1e3,
            "peak_mb": peak, "steady_mb": steady}


def export_onnx(model: str, path: str, size: int) -> None:
    """torch_impl's ONNX export (opset 17, dynamic batch) of the benchmark weights."""
    import torch_impl
    net = torch_impl.create_model(model)
    torch_impl.load_weights(net, _weights(model)[1])
    torch_impl.export_onnx(net, path, input_size=(size, size))


# ------------------------------------------------------------------------------------------- driver
#: glibc's malloc keeping freed memory for reuse (read at process start, so set per row): one arena, no
#: mmap, no trimming. By default every buffer over 32 MB (and every buffer of a thread's own arena) is a
#: fresh mmap whose 4 KiB pages fault in on first touch, on every call of every framework that allocates
#: per call; ONNX Runtime's arena keeps its memory. (Transparent huge pages, ``glibc.malloc.hugetlb=1``,
#: cut the faults too but stalled in compaction here: docs/performance.md.)
REUSE = "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296"


def _row_env(row: str, threads: int, malloc: str = "default") -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TF_CPP_MIN_LOG_LEVEL": "3",
           "TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": "1",
           "XLA_FLAGS": f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={threads}",
           "PYTHONPATH": str(ROOT)}
    if malloc == "reuse":
        env["GLIBC_TUNABLES"] = ":".join(filter(None, [os.environ.get("GLIBC_TUNABLES"), REUSE]))
    if row.startswith("keras_"):
        env["KERAS_BACKEND"] = {"keras_tensorflow_xla": "tensorflow", "keras_tensorflow": "tensorflow",
                                "keras_tensorflow_inference": "tensorflow",
                                "keras_jax": "jax", "keras_jax_inference": "jax", "keras_jax_channel_major": "jax",
                                "keras_torch": "torch"}[row]
    if row == "naive_keras_v1":
        env["KERAS_BACKEND"] = "tensorflow"
    return env


def versions() -> str:
    code = ("import torch, tensorflow, keras, jax, flax, onnxruntime, numpy;"
            "print(f'torch {torch.__version__}, tensorflow {tensorflow.__version__}, keras {keras.__version__}, "
            "jax {jax.__version__}, flax {flax.__version__}, onnxruntime {onnxruntime.__version__}, "
            "numpy {numpy.__version__}')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return out.stdout.strip() or out.stderr.strip().splitlines()[-1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every row this many times, interleaved, and keep each row's fastest median "
                             "(a shared machine's slow spells then cannot pick which rows they hit)")
    parser.add_argument("--quick", action="store_true", help="batches 1 and 8, 2 warm-up, 5 repeats")
    parser.add_argument("--malloc", choices=("default", "reuse"), default="default",
                        help="reuse: every row (ONNX Runtime too) runs with GLIBC_TUNABLES=" + REUSE)
    parser.add_argument("--json", help="also write the raw rows to this file")
    parser.add_argument("--worker", nargs=3, metavar=("ROW", "MODEL", "BATCH"), help=argparse.SUPPRESS)
    parser.add_argument("--export-onnx", nargs=2, metavar=("MODEL", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.batches, args.warmup, args.repeats = [1, 8], 2, 5
    if args.export_onnx:
        export_onnx(args.export_onnx[0], args.export_onnx[1], args.size)
        return 0
    if args.worker:
        row, model, batch = args.worker
        print("RESULT " + json.dumps(run_row(row, model, int(batch), args.size, args.threads, args.warmup,
                                             args.repeats)), flush=True)
        return 0

    print(f"# machine: {platform.machine()}, {os.cpu_count()} cpus, {platform.python_version()}; "
          f"threads {args.threads}; input {args.size}x{args.size}; median of {args.repeats} after "
          f"{args.warmup} warm-up, best of {args.rounds} interleaved round(s); malloc {args.malloc}")
    print(f"# {versions()}")
    results = []
    for model in args.models:
        if "naive_keras_v1" in args.rows and not model.startswith("shufflenet_v1"):
            rows = [r for r in args.rows if r != "naive_keras_v1"]
        else:
            rows = list(args.rows)
        for batch in args.batches:
            best: dict[str, dict] = {}
            for round_ in range(args.rounds):
                for row in rows:  # rows interleaved across rounds: a slow spell hits every row alike
                    result = _run_worker(row, model, batch, args)
                    if round_ == 0 or ("ms" in result and ("ms" not in best[row] or result["ms"] < best[row]["ms"])):
                        best[row] = result
            reference = best.get("onnxruntime") if "ms" in best.get("onnxruntime", {}) else None
            for row in rows:
                result = best[row]
                ok = reference is not None and "ms" in result
                result["ratio"] = result["ms"] / reference["ms"] if ok else None
                result["mem_ratio"] = result["peak_mb"] / reference["peak_mb"] if ok else None
                result["steady_ratio"] = result["steady_mb"] / reference["steady_mb"] if ok else None
                results.append(result)
                _print_row(result, batch)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def _run_worker(row: str, model: str, batch: int, args: argparse.Namespace) -> dict:
    """One row in its own process; its RESULT line, or the last line of its error."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", row, model, str(batch),
           "--size", str(args.size), "--threads", str(args.threads), "--warmup", str(args.warmup),
           "--repeats", str(args.repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_row_env(row, args.threads, args.malloc))
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        error = (proc.stderr.strip().splitlines() or ["no output"])[-1][:80]
        return {"row": row, "model": model, "batch": batch, "error": error}
    return json.loads(line[len("RESULT "):])


def _print_row(r: dict, batch: int) -> None:
    if not getattr(_print_row, "header", False):
        print(f"{'model':<24}{'batch':>6} {'row':<22}{'ms/batch':>10}{'img/s':>9}{'x ORT':>7}{'first ms':>10}"
              f"{'peak MB':>9}{'mem x ORT':>10}{'steady MB':>10}{'x ORT':>7}")
        _print_row.header = True
    if "error" in r:
        print(f"{r['model']:<24}{batch:>6} {r['row']:<22}  error: {r['error']}", flush=True)
        return
    ratio = f"{r['ratio']:.2f}" if r.get("ratio") else "-"
    mem_ratio = f"{r['mem_ratio']:.2f}" if r.get("mem_ratio") else "-"
    steady_ratio = f"{r['steady_ratio']:.2f}" if math.isfinite(r.get("steady_ratio") or math.nan) else "-"
    print(f"{r['model']:<24}{batch:>6} {r['row']:<22}{r['ms']:>10.1f}{batch / r['ms'] * 1e3:>9.1f}{ratio:>7}"
          f"{r['first_ms']:>10.0f}{r['peak_mb']:>9.0f}{mem_ratio:>10}{r['steady_mb']:>10.0f}{steady_ratio:>7}",
          flush=True)


if __name__ == "__main__":
    sys.exit(main())

"""Time and peak memory of ``groupnets convert`` for a large model, every direction or a chosen few.

    .venv/bin/python benchmarks/convert.py                          # resnext101_32x8d, all 20 directions
    .venv/bin/python benchmarks/convert.py --formats canonical torch flax

Each conversion runs in its own process (so peak RSS is that conversion's own, imports included) and
is timed end to end, process start-up and framework imports included, plus the conversion alone as
the process measures it. Each runs the CLI's own code path (``common.cli.main(["convert", ...])``), with
its default Keras backend for Keras files unless ``--keras-backend`` or ``$KERAS_BACKEND`` says otherwise. Targets (issue 4): under 5 s and under 3x the weights' size in peak memory.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTENSION = {"canonical": ".safetensors", "torch": ".pth", "keras-weights": ".weights.h5", "keras": ".keras",
             "flax": ".msgpack"}

WORKER = r"""
import json, sys, time
def peak_mb():  # VmHWM: this process's own peak RSS (ru_maxrss would carry the parent's across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
t0 = time.perf_counter()
from common.cli import main
t1 = time.perf_counter()
status = main(["convert", *sys.argv[1:4], "--force", *sys.argv[4:]])  # exactly what `groupnets convert` runs
t2 = time.perf_counter()
assert status == 0, f"groupnets convert exited with {status}"
print("RESULT " + json.dumps({"convert_s": t2 - t1, "import_s": t1 - t0,
                              "peak_mb": peak_mb()}))
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnext101_32x8d")
    parser.add_argument("--formats", nargs="+", default=list(EXTENSION), choices=list(EXTENSION))
    parser.add_argument("--keras-backend", choices=["tensorflow", "jax", "torch"],
                        help="passed to `groupnets convert` (default: its own)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from common import get_spec, random_weights
    from common.files.convert import write_weights

    spec = get_spec(args.model)
    weights = random_weights(spec, 0, "float32", calibrate=False)
    size_mb = sum(v.nbytes for v in weights.values()) / 2**20
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    print(f"# {args.model}: {sum(v.size for v in weights.values()):,} values, {size_mb:.0f} MiB of float32 weights")
    print(f"{'from':<15}{'to':<15}{'wall s':>8}{'convert s':>11}{'import s':>10}{'peak MiB':>10}{'x size':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        sources = {}
        for fmt in args.formats:
            sources[fmt] = Path(tmp) / f"source{EXTENSION[fmt]}"
            write_weights(sources[fmt], weights, spec)
        for src, dst in itertools.permutations(args.formats, 2):
            out = Path(tmp) / f"out{EXTENSION[dst]}"
            start = time.perf_counter()
            extra = ["--keras-backend", args.keras_backend] if args.keras_backend else []
            proc = subprocess.run([sys.executable, "-c", WORKER, args.model, str(sources[src]), str(out), *extra],
                                  capture_output=True, text=True, env=env)
            wall = time.perf_counter() - start
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                print(f"{src:<15}{dst:<15}  error: {(proc.stderr.strip().splitlines() or ['?'])[-1][:70]}")
                continue
            r = json.loads(line[7:])
            print(f"{src:<15}{dst:<15}{wall:>8.1f}{r['convert_s']:>11.1f}{r['import_s']:>10.1f}"
                  f"{r['peak_mb']:>10.0f}{r['peak_mb'] / size_mb:>8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

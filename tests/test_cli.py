"""The ``groupnets`` command line, run as users run it (a subprocess of the installed console script)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

GROUPNETS = str(Path(sys.executable).with_name("groupnets"))


def run(*args: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([GROUPNETS, *args], capture_output=True, text=True, timeout=timeout,
                          env=env if env is not None else {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_verify_taps_and_the_oracle():
    result = run("verify", "shufflenet_v1_g2_x0_5", "--size", "32", "40", "--batch", "1", "--taps",
                 "--frameworks", "torch,numpy", "--dtype", "float64")
    assert result.returncode == 0, result.stderr
    for tap in ("stem", "stage2", "stage3", "stage4", "pre_logits", "logits"):
        assert f" {tap} " in result.stdout


@pytest.mark.slow
def test_verify_default_is_the_main_job():
    """No arguments: shufflenet_v2_x1_0, torch/keras/flax, float32 and float64, 224x224 — a table row for
    every pair and dtype. (A second run of the same table on a smaller model proved nothing more: 25 s of
    the TensorFlow run, most of it importing three frameworks and compiling in a fresh process.)"""
    result = run("verify", env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == "" and result.stdout.startswith("model ")  # its own first line, no framework logs
    rows = [line for line in result.stdout.splitlines() if line.startswith("shufflenet_v2_x1_0 ")]
    pairs = {" ".join(line.split()[2:5]) for line in rows}
    assert pairs == {"torch vs keras[tensorflow]", "torch vs flax", "keras[tensorflow] vs flax"}
    assert sorted(line.split()[1] for line in rows) == ["float32"] * 3 + ["float64"] * 3
    assert all(line.rstrip().endswith("ok") for line in rows) and "all pairs within bounds" in result.stdout


@pytest.mark.parametrize("args,message", [
    (("verify", "shufflenet_v9"), "unknown model 'shufflenet_v9'"),
    (("verify", "--frameworks", "torch"), "at least two frameworks"),
    (("verify", "--frameworks", "torch,mxnet"), "unknown framework 'mxnet'"),
    (("summary", "resnext50_32x3d"), "did you mean resnext50_32x4d"),
    (("verify", "--size", "1", "2", "3"), "--size takes"),
])
def test_bad_input_exits_2_with_a_message(args, message):
    result = run(*args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_summary_prints_reference_figures():
    result = run("summary", "resnext50_32x4d", "shufflenet_v2_x1_0")
    assert result.returncode == 0
    assert "25,028,904" in result.stdout and "4.230 GMACs" in result.stdout
    assert "2,278,604" in result.stdout and "0.145 GMACs" in result.stdout


def test_list():
    result = run("list", "resnext")
    assert result.returncode == 0 and result.stdout.split()[::3] == [
        "resnext101_32x8d", "resnext101_64x4d", "resnext50_32x4d", "sa_resnext50_32x4d"]


def test_a_command_prints_no_framework_log_lines(tmp_path):
    """TensorFlow's C++ start-up notices (absl, oneDNN, CPU features) are not silenced by any environment
    variable; the command imports the frameworks with them captured, so its output is only its own."""
    source = Path(__file__).parent / "fixtures" / "files_4206595" / "w.safetensors"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = subprocess.run([GROUPNETS, "convert", "shufflenet_v1_g3_x0_5", str(source), str(tmp_path / "w.weights.h5"),
                          "--keras-backend", "tensorflow"], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert out.stdout.splitlines()[0].startswith(f"{source} (canonical) -> ")


def test_verify_weights_without_a_model_verifies_the_model_the_file_holds():
    source = Path(__file__).parent / "fixtures" / "files_4206595" / "w.msgpack"
    out = run("verify", "--weights", str(source), "--size", "32", "--frameworks", "torch,numpy")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1].startswith("shufflenet_v1_g3_x0_5 ")


def test_verify_json_is_the_whole_report_and_progress_only_on_a_terminal():
    import json
    import pty
    args = ["verify", "shufflenet_v2_x0_5", "--size", "32", "--frameworks", "torch,numpy", "--taps", "--json"]
    out = run(*args)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    (report,) = json.loads(out.stdout)
    assert report["model"] == "shufflenet_v2_x0_5" and report["ok"] and report["input_shape"] == [2, 3, 32, 32]
    rows = {(r["dtype"], r["tap"]) for r in report["results"]}
    from common import get_spec
    taps = get_spec("shufflenet_v2_x0_5").stage_names
    assert rows == {(d, t) for d in ("float32", "float64") for t in taps}
    assert all(r["max_rel"] <= r["bound"] and r["a"] == "torch" and r["b"] == "numpy" for r in report["results"])
    leader, follower = pty.openpty()  # stderr a terminal: the progress bar goes there, stdout unchanged
    try:
        tty = subprocess.run([GROUPNETS, *args], stdout=subprocess.PIPE, stderr=follower, text=True, timeout=600,
                             env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
    assert tty.returncode == 0 and json.loads(tty.stdout)[0]["results"] == report["results"]
    assert b"shufflenet_v2_x0_5 float64 numpy" in shown

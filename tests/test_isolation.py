"""Each backend imports only its own framework; ``keras_impl`` never imports a Keras backend directly."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {  # top-level modules a package may import (besides the standard library)
    "common": {"numpy", "safetensors", "common"},
    "torch_impl": {"numpy", "torch", "common", "torch_impl", "onnx", "onnxruntime"},
    "keras_impl": {"numpy", "keras", "common", "keras_impl", "h5py"},
    "flax_impl": {"numpy", "jax", "flax", "optax", "orbax", "msgpack", "common", "flax_impl"},
}
FRAMEWORK_MODULES = {"torch", "tensorflow", "keras", "jax", "flax", "torchvision", "tf_keras"}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_sources_import_only_their_framework(package):
    offenders = []
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in FRAMEWORK_MODULES | {"onnx", "onnxruntime", "orbax", "optax", "h5py", "safetensors"} \
                        and top not in ALLOWED[package]:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("package,forbidden", [
    ("torch_impl", ("tensorflow", "keras", "jax", "flax")),
    ("flax_impl", ("torch", "tensorflow", "keras")),
    ("keras_impl", ("flax",)),  # keras itself imports its chosen backend; we never import another
])
def test_importing_a_backend_loads_no_other_framework(package, forbidden):
    code = (f"import sys, {package}; bad = [m for m in {forbidden!r} if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)

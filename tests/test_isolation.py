"""Each backend imports only its own framework; ``keras_impl`` never imports a Keras backend directly, except
function-local imports of the active backend in ``keras_impl/inference.py`` (see ``LAZY_BACKEND_IMPORTS``)."""

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
#: The one exception: keras_impl's inference module compiles with the *active* Keras backend's own library
#: (``jax.jit`` of ``stateless_call``, ``tf.function``, ``torch.inference_mode``), as Keras' own guides do.
#: Those imports must sit inside functions (run only for that backend), never at module level.
LAZY_BACKEND_IMPORTS = {"keras_impl/inference.py": {"jax", "tensorflow", "torch"}}


def _function_local_imports(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside a function body."""
    inside = set()
    for func in ast.walk(tree):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside.update(id(node) for node in ast.walk(func) if isinstance(node, (ast.Import, ast.ImportFrom)))
    return inside


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_sources_import_only_their_framework(package):
    offenders = []
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text())
        lazy_ok = LAZY_BACKEND_IMPORTS.get(path.relative_to(ROOT).as_posix(), set())
        local = _function_local_imports(tree)
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in lazy_ok and id(node) in local:
                    continue
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
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600)

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


#: ``common``'s layers, bottom to top, with the backends in between: a module imports only from its own
#: layer and the ones before it (``common/__init__.py`` and ``_moved.py`` are the facade over all).
LAYERS = ("errors", "spec", "weights", "runtime", "backends", "check", "files", "cli")
BACKENDS = ("torch_impl", "keras_impl", "flax_impl")


def _layer(module: str) -> str | None:
    """The layer of a dotted module name (``common.check.verify`` → ``check``); None for outside modules."""
    parts = module.split(".")
    if parts[0] in BACKENDS:
        return "backends"
    if parts[0] != "common" or len(parts) == 1 or parts[1] in ("_moved",):
        return None if parts[0] != "common" else "facade"
    return parts[1] if parts[1] in LAYERS else "facade"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports, at module level or inside functions, as absolute names
    (``from . import ir`` imports ``<package>.ir``; ``from .x import f`` imports ``<package>.x``)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            submodules = {f"{prefix}.{alias.name}" for alias in node.names} & modules
            found.update(submodules or {prefix})
    return found & modules


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for package in ("common", *BACKENDS) for p in (ROOT / package).rglob("*.py")}
    return {name: _imports(path, set(paths)) for name, path in paths.items()}


def test_imports_go_one_way_through_the_layers():
    offenders = []
    for module, imported in _graph().items():
        layer = _layer(module)
        for target in imported:
            target_layer = _layer(target)
            if layer == "facade" or target_layer is None:
                continue
            if target_layer == "facade" or LAYERS.index(target_layer) > LAYERS.index(layer):
                offenders.append(f"{module} ({layer}) imports {target} ({target_layer})")
    assert not offenders, "\n".join(sorted(offenders))


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [])):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_old_module_paths_forward_with_a_warning():
    code = ("import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
            "try:\n    from common.verify import verify\nexcept DeprecationWarning as w:\n    print(w)\n"
            "warnings.simplefilter('ignore', DeprecationWarning)\n"
            "from common.verify import verify; from common.check.verify import verify as new\n"
            "from common.labels import random_labels, check_labels; assert verify is new")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120)
    assert "common.verify moved to common.check.verify" in out.stdout

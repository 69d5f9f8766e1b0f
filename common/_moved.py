"""Module paths from before ``common`` was layered keep working: ``import common.verify`` gives a module
that forwards to ``common.check.verify`` and warns once with the new path (a ``DeprecationWarning``)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

#: old ``common.<name>`` → the module(s), under ``common``, that hold its names now
MOVED: dict[str, tuple[str, ...]] = {
    "ir": ("spec.ir",), "build_helpers": ("spec.build_helpers",), "primitives": ("spec.primitives",),
    "resnext": ("spec.resnext",), "shufflenet_v1": ("spec.shufflenet_v1",),
    "shufflenet_v2": ("spec.shufflenet_v2",), "registry": ("spec.registry",), "params": ("spec.params",),
    "summary": ("spec.summary",), "shuffle": ("spec.shuffle",), "fusion": ("spec.fusion",),
    "porting": ("weights.porting",), "weights_io": ("weights.files",), "xla_cpu": ("runtime.xla_cpu",),
    "labels": ("runtime.checks", "check.random"), "oracle": ("check.oracle",),
    "random_weights": ("check.random",), "verify": ("check.verify", "check.backends", "check.compare"), "train_verify": ("check.train_verify",),
    "convert": ("files.convert",),
}


def _forwarding_module(name: str, targets: tuple[str, ...]) -> types.ModuleType:
    new_names = " and ".join(f"common.{t}" for t in targets)
    module = types.ModuleType(name, f"Moved: {name} is now {new_names}.")

    def forward(attribute: str) -> object:
        for target in targets:
            found = importlib.import_module(f"common.{target}")
            if hasattr(found, attribute):
                return getattr(found, attribute)
        raise AttributeError(f"module {name!r} (moved to {new_names}) has no attribute {attribute!r}")

    module.__getattr__ = forward  # type: ignore[method-assign]  # PEP 562: module-level __getattr__
    warnings.warn(f"{name} moved to {new_names}; import from there", DeprecationWarning, stacklevel=3)
    return module


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: object, target: object = None) -> importlib.machinery.ModuleSpec | None:
        package, _, leaf = fullname.partition(".")
        if package == "common" and leaf in MOVED:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _forwarding_module(spec.name, MOVED[spec.name.partition(".")[2]])

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: the module only forwards."""


def install() -> None:
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())

"""The one place a framework name becomes its backend package.

Backends are imported by name only when asked for (``importlib``), so nothing below this layer of
``common`` ever imports a framework, and a missing framework is a clear error instead of a traceback.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from ..errors import GroupnetsError

#: "numpy" is the float64 oracle of :mod:`common.check.oracle`, usable as a fourth party.
KNOWN_FRAMEWORKS = ("torch", "keras", "flax", "numpy")
DEFAULT_FRAMEWORKS = ("torch", "keras", "flax")


def load_backend(framework: str) -> ModuleType:
    """``torch_impl`` / ``keras_impl`` / ``flax_impl``; a clear error if the framework is missing."""
    if framework not in KNOWN_FRAMEWORKS or framework == "numpy":
        raise GroupnetsError(f"unknown framework {framework!r}; choose from {', '.join(KNOWN_FRAMEWORKS)}")
    try:
        return importlib.import_module(f"{framework}_impl")
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] in {"torch", "keras", "tensorflow", "jax", "flax", "optax"}:
            raise GroupnetsError(f"framework {framework!r} is not installed ({error}); "
                                 f"install groupnets[{framework}]") from error
        raise  # a broken install or a bug: show the real traceback


def framework_label(framework: str) -> str:
    """``keras`` is labelled with the Keras backend it ran on, e.g. ``keras[jax]``."""
    if framework == "keras":
        return f"keras[{os.environ.get('KERAS_BACKEND', 'tensorflow')}]"
    return framework

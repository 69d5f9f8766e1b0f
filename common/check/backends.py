"""The one place a framework name becomes its backend package.

Backends are imported by name only when asked for (``importlib``), so nothing below this layer of
``common`` ever imports a framework, and a missing framework is a clear error instead of a traceback.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
from collections.abc import Iterator
from types import ModuleType

from ..errors import GroupnetsError

#: "numpy" is the float64 oracle of :mod:`common.check.oracle`, usable as a fourth party.
KNOWN_FRAMEWORKS = ("torch", "keras", "flax", "numpy")
DEFAULT_FRAMEWORKS = ("torch", "keras", "flax")


#: Set by the ``groupnets`` command: importing a framework must not print its C++ start-up log lines
#: (TensorFlow's absl / oneDNN / CPU-feature notices, which no environment variable turns off).
QUIET_IMPORTS = False


@contextlib.contextmanager
def _stderr_captured() -> Iterator[None]:
    """Route file descriptor 2 (C++ code writes there directly) to a temporary file; give the text back
    on stderr only if the block fails, so an import error still shows everything."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def load_backend(framework: str) -> ModuleType:
    """``torch_impl`` / ``keras_impl`` / ``flax_impl``; a clear error if the framework is missing."""
    if framework not in KNOWN_FRAMEWORKS or framework == "numpy":
        raise GroupnetsError(f"unknown framework {framework!r}; choose from {', '.join(KNOWN_FRAMEWORKS)}")
    try:
        if QUIET_IMPORTS and f"{framework}_impl" not in sys.modules:
            with _stderr_captured():
                return importlib.import_module(f"{framework}_impl")
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

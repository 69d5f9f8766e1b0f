"""groupnets' framework-free core, in layers whose imports only go down the list:

- :mod:`common.errors` — the exception types every layer raises;
- :mod:`common.spec` — what a network is: IR, families, registry, parameter names, shuffle conventions;
- :mod:`common.weights` — canonical weights: the porting table, the canonical file, the head;
- :mod:`common.runtime` — what each backend applies at run time (argument checks, XLA CPU thresholds);
- the backends ``torch_impl``, ``keras_impl``, ``flax_impl`` build on the three above;
- :mod:`common.check` — the oracle and the cross-framework checks (the only layer that loads backends);
- :mod:`common.files` — weight files in any format, converted through canonical weights;
- :mod:`common.cli` — the ``groupnets`` command.

Imports only the standard library and NumPy (safetensors lazily), never a deep-learning framework.
"""

from .check.random import random_input, random_weights
from .errors import (GroupnetsError, SpecError, UnknownModelError, WeightsFileError,
                     WeightsMismatchError)
from .spec.ir import NetworkSpec
from .spec.params import ParamInfo, canonical_params, count_parameters
from .spec.registry import get_spec, list_models
from .spec.shuffle import shuffle_permutation
from .weights.files import load_weights, save_weights
from .weights.porting import (FRAMEWORKS, LoadReport, check_weights, framework_shapes, to_canonical,
                              to_framework, without_head)

from ._moved import install as _install_moved_modules

_install_moved_modules()  # common.verify, common.ir, ... (the flat layout) forward to their new homes

__all__ = [
    "FRAMEWORKS", "GroupnetsError", "LoadReport", "NetworkSpec", "ParamInfo", "SpecError",
    "UnknownModelError", "WeightsFileError", "WeightsMismatchError", "canonical_params", "check_weights",
    "count_parameters", "framework_shapes", "get_spec", "list_models", "load_weights", "random_input",
    "random_weights", "save_weights", "shuffle_permutation", "to_canonical", "to_framework", "without_head",
]

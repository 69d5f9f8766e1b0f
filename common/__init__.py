"""groupnets' framework-free spec: architectures, canonical weights, porting table, equivalence checks.

Imports only the standard library and NumPy (safetensors lazily), never a deep-learning framework.
"""

from .errors import (GroupnetsError, SpecError, UnknownModelError, WeightsFileError,
                     WeightsMismatchError)
from .ir import NetworkSpec
from .params import ParamInfo, canonical_params, count_parameters
from .porting import (FRAMEWORKS, LoadReport, check_weights, framework_shapes, to_canonical, to_framework,
                      without_head)
from .random_weights import random_input, random_weights
from .registry import get_spec, list_models
from .shuffle import shuffle_permutation
from .weights_io import load_weights, save_weights

__all__ = [
    "FRAMEWORKS", "GroupnetsError", "LoadReport", "NetworkSpec", "ParamInfo", "SpecError",
    "UnknownModelError", "WeightsFileError", "WeightsMismatchError", "canonical_params", "check_weights",
    "count_parameters", "framework_shapes", "get_spec", "list_models", "load_weights", "random_input",
    "random_weights", "save_weights", "shuffle_permutation", "to_canonical", "to_framework", "without_head",
]

"""Model names → specs. The only place a variant name is bound to its config."""

from __future__ import annotations

import difflib
from collections.abc import Callable

from ..errors import SpecError, UnknownModelError
from . import megvii, resnext, sa_resnet, shufflenet_v1, shufflenet_v2
from .ir import NetworkSpec

_BUILDERS: dict[str, Callable[[int], NetworkSpec]] = {}
for _module in (shufflenet_v1, shufflenet_v2, resnext, sa_resnet, megvii):
    for _name, _config in _module.VARIANTS.items():
        _BUILDERS[_name] = (lambda n, c, m: lambda num_classes: m.build(n, c, num_classes))(_name, _config, _module)


def list_models(pattern: str | None = None) -> list[str]:
    """Every registered model name, sorted; ``pattern`` keeps names containing it."""
    return sorted(name for name in _BUILDERS if pattern is None or pattern in name)


def get_spec(name: str | NetworkSpec, num_classes: int | None = None) -> NetworkSpec:
    """The frozen :class:`~common.spec.ir.NetworkSpec` for ``name`` with a ``num_classes``-way ``fc``
    (default: 1000 for a name; a spec keeps its own).

    A ``NetworkSpec`` passes through (its ``fc`` is re-sized if ``num_classes`` differs), so custom
    specs (e.g. ``resnext.build("tiny", ResNeXtConfig((1, 1, 1, 1), groups=4))``) work everywhere a
    name does. Unknown names raise :class:`UnknownModelError` listing close matches.
    """
    if num_classes is None:
        num_classes = name.num_classes if isinstance(name, NetworkSpec) else 1000
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise SpecError(f"num_classes must be a positive integer, got {num_classes!r}")
    if isinstance(name, NetworkSpec):
        if name.num_classes == num_classes:
            return name
        from dataclasses import replace
        return replace(name, fc=replace(name.fc, out_features=num_classes))
    builder = _BUILDERS.get(name)
    if builder is None:
        close = difflib.get_close_matches(str(name), list(_BUILDERS), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known models: {', '.join(list_models())}"
        raise UnknownModelError(f"unknown model {name!r}{hint}")
    return builder(num_classes)

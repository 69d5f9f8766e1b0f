"""``groupnets inspect FILE``: what a weight file holds, read from its content — format and container,
the registered model(s) its keys and shapes match, classes, dtypes, size, NaN/Inf tensors, metadata."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..weights.fingerprint import Fit, fingerprint
from .convert import KINDS, detect_format, nonfinite_keys, read_weights_without_model
from .sniff import sniff


@dataclass
class FileReport:
    path: str
    format: str
    content: str  # what the first bytes say
    container: str | None
    metadata: dict[str, str]
    tensors: int
    values: int  # every number stored
    parameters: int  # the trainable ones: BatchNorm running statistics and counters left out
    dtypes: dict[str, int]
    nonfinite: list[str]
    matches: list[Fit] = field(default_factory=list)
    closest: Fit | None = None  # the nearest registered model when none matches

    def as_dict(self) -> dict:
        def fit(f: Fit | None) -> dict | None:
            return None if f is None else {"model": f.model, "num_classes": f.num_classes, "missing": list(f.missing),
                                           "unexpected": list(f.unexpected), "wrong_shape": list(f.wrong_shape)}
        return {"path": self.path, "format": self.format, "content": self.content, "container": self.container,
                "metadata": self.metadata, "tensors": self.tensors, "values": self.values,
                "parameters": self.parameters, "dtypes": self.dtypes,
                "nonfinite": self.nonfinite, "matches": [fit(f) for f in self.matches], "closest": fit(self.closest)}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def format_text(self) -> str:
        lines = [f"{self.path}: {self.content} (format {self.format!r})"]
        if self.container:
            lines.append(f"  container: {self.container}")
        if self.matches and self.metadata.get("layout") == "megvii":
            lines += [f"  holds: Megvii's checkpoint of {f.model} ({f.num_classes} classes)" for f in self.matches]
        elif self.matches:
            lines += [f"  holds: {f.describe()}" for f in self.matches]
        elif self.closest is not None:
            c = self.closest
            lines.append(f"  holds no registered model's weights; closest: {c.model} ({len(c.missing)} missing, "
                         f"{len(c.unexpected)} unexpected, {len(c.wrong_shape)} mis-shaped tensors)")
        lines.append(f"  {self.tensors} tensors, {self.parameters:,} parameters ({self.values:,} values); dtypes: "
                     + ", ".join(f"{k} × {v}" for k, v in sorted(self.dtypes.items())))
        lines.append("  NaN/Inf: " + (", ".join(self.nonfinite[:8]) + (" ..." if len(self.nonfinite) > 8 else "")
                                      if self.nonfinite else "none"))
        for key, value in sorted(self.metadata.items()):
            lines.append(f"  metadata {key}: {value}")
        return "\n".join(lines)


def inspect_file(path: str | Path, fmt: str | None = None, *, state_dict_key: str | None = None) -> FileReport:
    """Read ``path`` (any supported format, whatever its name) and describe it; nothing is written."""
    source = Path(path)
    fmt = detect_format(source, fmt, reading=True)
    kind = sniff(source)
    weights, metadata = read_weights_without_model(source, fmt, state_dict_key=state_dict_key)
    fits = fingerprint(weights)
    matches = [f for f in fits if f.exact]
    values = sum(int(np.size(v)) for v in weights.values())
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    parameters = sum(int(np.size(v)) for k, v in weights.items() if not k.endswith(buffers))
    return FileReport(str(source), fmt, KINDS[kind][1] if kind else "unrecognised content",
                      metadata.pop("container", None), metadata, len(weights), values, parameters,
                      dict(Counter(str(np.asarray(v).dtype) for v in weights.values())), nonfinite_keys(weights),
                      matches, None if matches or not fits else fits[0])

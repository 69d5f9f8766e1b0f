"""Exceptions users can catch. All derive from ``ValueError`` so bad input is one ``except`` away."""

from __future__ import annotations

from collections.abc import Sequence


class GroupnetsError(ValueError):
    """Base class of every error groupnets raises on bad input."""


class SpecError(GroupnetsError):
    """An architecture that cannot be built (e.g. channels not divisible by groups)."""


class UnknownModelError(GroupnetsError, KeyError):
    """A model name that is not registered; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class WeightsMismatchError(GroupnetsError):
    """Weights that do not fit a model. Lists *every* problem at once; nothing was loaded."""

    def __init__(
        self,
        model: str,
        missing: Sequence[str] = (),
        unexpected: Sequence[str] = (),
        wrong_shape: Sequence[tuple[str, tuple[int, ...], tuple[int, ...]]] = (),
        wrong_dtype: Sequence[tuple[str, str, str]] = (),
        source: str | None = None,
    ) -> None:
        self.model = model
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.wrong_shape = list(wrong_shape)
        self.wrong_dtype = list(wrong_dtype)
        self.source = source
        super().__init__(self._message())

    def _message(self) -> str:
        where = f" from {self.source}" if self.source else ""
        lines = [f"weights{where} do not fit model {self.model!r}; nothing was loaded:"]
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}): {_short_list(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}): {_short_list(self.unexpected)}")
        if self.wrong_shape:
            items = [f"{k}: expected {tuple(e)}, got {tuple(g)}" for k, e, g in self.wrong_shape]
            lines.append(f"  wrong shapes ({len(items)}): {_short_list(items)}")
        if self.wrong_dtype:
            items = [f"{k}: expected {e}, got {g}" for k, e, g in self.wrong_dtype]
            lines.append(f"  wrong dtypes ({len(items)}): {_short_list(items)}")
        return "\n".join(lines)


class WeightsFileError(GroupnetsError):
    """A weights file that cannot be read or written (missing, corrupt, wrong kind, unsafe)."""


def first_line(error: BaseException, limit: int = 240) -> str:
    """``error``'s message on one line, at most ``limit`` characters: a library's multi-line traceback text
    quoted inside a groupnets error stays readable."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short_list(items: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")

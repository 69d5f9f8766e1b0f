"""The argument checks every backend applies at its entry points, written once so the three raise the
same errors with the same messages: the input batch, integer class labels and SGD settings."""

from __future__ import annotations

import numpy as np

from ..errors import GroupnetsError
from ..spec.ir import Linear


#: PyTorch's message when a normalisation would see one value per channel (BatchNorm in training mode;
#: GroupNorm always, eval mode included), which every backend and the oracle raise alike.
ONE_VALUE_PER_CHANNEL = "Expected more than 1 value per channel when training"


def check_values_per_channel(count: int | None, shape: tuple, what: str) -> None:
    """PyTorch's refusal of a normalisation over ``count`` <= 1 values per channel (``None``: not known
    yet, e.g. a symbolic batch): ``ValueError`` naming ``shape`` and ``what`` is normalised."""
    if count is not None and count <= 1:
        raise ValueError(f"{ONE_VALUE_PER_CHANNEL}, got input of shape {tuple(shape)} ({what})")


def check_labels(labels: object, batch: int, classes: int) -> np.ndarray:
    """``labels`` as an int64 ``(batch,)`` array of class indices in ``[0, classes)``, else GroupnetsError."""
    array = np.asarray(labels)
    if array.dtype.kind not in "iu":
        raise GroupnetsError(f"labels must be integer class indices, got dtype {array.dtype}")
    if array.shape != (batch,):
        raise GroupnetsError(f"labels must have shape ({batch},) for a batch of {batch}, got {array.shape}")
    if array.size and (array.min() < 0 or array.max() >= classes):
        raise GroupnetsError(f"labels must lie in [0, {classes}), got values in [{array.min()}, {array.max()}]")
    return array.astype(np.int64)


def check_step_hyperparameters(lr: float, momentum: float, weight_decay: float, steps: int = 1) -> None:
    """SGD settings must be >= 0 (``not value >= 0`` also rejects NaN); ``steps`` a whole number >= 1, and
    more than one step needs ``lr > 0`` (without a step the batch would only update BatchNorm again)."""
    for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
        if not value >= 0:
            raise GroupnetsError(f"{name} must be >= 0, got {value}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise GroupnetsError(f"steps must be a whole number >= 1, got {steps!r}")
    if steps > 1 and not lr > 0:
        raise GroupnetsError(f"steps={steps} needs lr > 0")


def check_input(x: object, node: object, channels_last: bool, backend: str) -> np.ndarray:
    """``x`` as an array that fits ``node``, else :class:`GroupnetsError` saying what was expected.

    A node that knows its input channels (every network, conv, BN, block) takes a 4-D batch with them on
    the channel axis — a ``Linear`` a 2-D ``(N, in_features)`` batch; a layout mix-up gets a hint.
    Weightless ops (ReLU, pools, shuffle) take any channel count. ``backend`` names the package in the
    message (``"torch_impl"``).
    """
    array = np.asarray(x)
    if array.ndim == 0:
        raise GroupnetsError("x must have a batch dimension")
    channels = getattr(node, "input_channels", None)
    if channels is None:
        return array
    name = getattr(node, "name", None) or type(node).__name__
    if isinstance(node, Linear):
        if array.ndim != 2 or array.shape[1] != channels:
            raise GroupnetsError(f"{name} expects input (N, {channels}), got shape {array.shape}")
        return array
    layout, axis, other = ("NHWC", -1, 1) if channels_last else ("NCHW", 1, -1)
    if array.ndim != 4 or array.shape[axis] != channels:
        expected = f"(N, H, W, {channels})" if channels_last else f"(N, {channels}, H, W)"
        hint = ""
        if array.ndim == 4 and array.shape[other] == channels:
            hint = (" — this looks like NCHW; transpose(0, 2, 3, 1)" if channels_last
                    else " — this looks like NHWC; transpose(0, 3, 1, 2)")
        raise GroupnetsError(f"{name} expects {layout} input {expected}, got shape {array.shape}; "
                             f"{backend} is {'channels_last' if channels_last else 'channels_first'}{hint}")
    return array

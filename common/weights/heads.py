"""The classifier head read from weights: every reader and command that sizes ``fc`` from a file asks here."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

#: The canonical key of the classifier's weight: ``(num_classes, features)`` (torchvision's ``fc``).
HEAD_KEY = "fc.weight"


def infer_num_classes(weights: Mapping[str, object], *, key: str = HEAD_KEY, axis: int = 0) -> int | None:
    """The number of classes the head in ``weights`` has, or None if there is no 2-D head.

    ``weights`` may hold arrays or anything with a shape (e.g. lazy HDF5 datasets); ``key`` / ``axis``
    name the head in another layout (a Keras ``Dense`` kernel is ``(features, num_classes)``: ``axis=1``).
    """
    head = weights.get(key)
    if head is None or np.ndim(head) != 2:
        return None
    return int(np.shape(head)[axis])

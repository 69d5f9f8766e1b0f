"""Eval-mode BatchNorm folding, framework-free: which convs a BatchNorm directly follows, and the fold.

Inference runtimes (ONNX Runtime, TensorRT, ``torch.jit.optimize_for_inference``) fold an eval-mode
BatchNorm into the convolution before it: ``y = (conv(x) - mean) / sqrt(var + eps) * gamma + beta`` is
``conv'(x)`` with ``W' = W * s`` and ``b' = (b - mean) * s + beta`` per output channel, ``s = gamma /
sqrt(var + eps)``. That removes one full pass over every activation. The stored parameters never change:
a backend folds into a *copy* (or at trace time) for inference only; training keeps the BatchNorm.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from . import ir


def conv_bn_pairs(node: object) -> Iterator[tuple[str, str]]:
    """``(conv path, batchnorm path)`` for every BatchNorm that directly follows a conv.

    Every IR container registers its children in execution order (``Sequential``; a ``Bottleneck``'s
    ``conv1, bn1, conv2, bn2, conv3, bn3``; a network's stem), so a ``Conv2d`` leaf immediately followed
    by a ``BatchNorm2d`` leaf *of the same parent* in :func:`common.spec.ir.iter_leaves` order feeds it
    directly. Leaves of different parents (the end of one block, the start of the next) never pair.
    """
    leaves = list(ir.iter_leaves(node))
    for (conv_path, conv), (bn_path, bn) in zip(leaves, leaves[1:]):
        if not (isinstance(conv, ir.Conv2d) and isinstance(bn, ir.BatchNorm2d)):
            continue
        if _parent(conv_path) != _parent(bn_path):
            continue
        if bn.num_features != conv.out_channels:
            raise ValueError(f"{bn_path}: BatchNorm over {bn.num_features} channels follows {conv_path} "
                             f"with {conv.out_channels} outputs")
        yield conv_path, bn_path


def _parent(path: str) -> str:
    return path.rsplit(".", 1)[0] if "." in path else ""


def fold_batch_norm(weight: np.ndarray, bias: np.ndarray | None, gamma: np.ndarray, beta: np.ndarray,
                    mean: np.ndarray, var: np.ndarray, eps: float,
                    out_axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The folded ``(weight, bias)`` of a conv followed by an eval-mode BatchNorm.

    Computed in float64 and cast back to ``weight``'s dtype, so the fold adds one rounding per weight,
    not several. ``out_axis`` is the kernel's output-channel axis (0 for PyTorch OIHW, -1 for HWIO).
    """
    dtype = np.asarray(weight).dtype
    scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + float(eps))
    shape = [1] * np.ndim(weight)
    shape[out_axis] = -1
    folded_weight = np.asarray(weight, np.float64) * scale.reshape(shape)
    conv_bias = np.zeros_like(scale) if bias is None else np.asarray(bias, np.float64)
    folded_bias = (conv_bias - np.asarray(mean, np.float64)) * scale + np.asarray(beta, np.float64)
    return folded_weight.astype(dtype), folded_bias.astype(dtype)


__all__ = ["conv_bn_pairs", "fold_batch_norm"]

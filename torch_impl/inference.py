"""The fast eval-mode path: BatchNorm folded into the convs, channels-last memory, optionally frozen
TorchScript — what ONNX Runtime does to the same graph, done in PyTorch.

``optimize_for_inference(model)`` returns a *new* module for inference only; the model it came from (its
parameters, ``state_dict``, porting) is untouched and keeps training as before. Which variant is
recommended comes from ``benchmarks/inference.py`` (docs/performance.md table), not from guesses.
"""

from __future__ import annotations

import copy
from typing import Literal

import numpy as np
import torch
from torch import nn

from common.runtime.micro_batch import MAX_BUFFER_BYTES, call_in_slices, check_max_buffer_bytes, micro_batch_size
from common.spec import ir
from common.spec.fusion import conv_bn_pairs, fold_batch_norm
from common.spec.ir import NetworkSpec
from common.spec.summary import peak_activation

from .bridge import _device, model_dtype
from .weights import _unwrap

Mode = Literal["auto", "eager", "script", "compile", "aot"]
MODES = ("auto", "eager", "script", "compile", "aot")

#: The largest buffer of a call, in multiples of its largest activation: the ops' own temporaries and the
#: buffers live at once. Measured (batch 32 at 224, minor faults per call): ShuffleNet V1 g8 eager faulted
#: with 8 rows a call (9.2 MB largest activation) and not with 4; SA-ResNet-50 with 8 rows (24.5 MB), not
#: with 4 (docs/performance.md, fourth round).
OP_BUFFER_FACTOR = 4


def _inductor_options(dtype: torch.dtype) -> dict[str, bool]:
    """Inductor's settings for both compiled modes. ``freezing``: weights become constants and convs are
    prepacked — not for float64, which oneDNN's prepacking refuses. ``cpp_wrapper``: the code that calls the
    kernels is C++ rather than Python, which cut the fixed cost per call (batch 1, both compiled in one
    process, timed interleaved: ShuffleNet V2 x1.0 224x224 5.15 -> 4.55 ms, V1 g3 5.15 -> 4.47 ms; V2 at
    32x32 3.16 -> 2.25 ms; outputs bit-identical) for about 4 s more compile time."""
    return {"freezing": dtype != torch.float64, "cpp_wrapper": True}


def _aot_compiled(net: nn.Module, x: torch.Tensor, dtype: torch.dtype):
    """``net`` exported for exactly ``x``'s shape, dtype and memory format and compiled ahead of time by
    AOTInductor (``torch.export`` + ``aoti_compile_and_package``): a C++ runner, no Python per call."""
    import tempfile  # noqa: PLC0415

    from torch._inductor import aoti_compile_and_package, aoti_load_package  # noqa: PLC0415
    with torch.no_grad():
        program = torch.export.export(net, (x,))
    with tempfile.TemporaryDirectory(prefix="groupnets-aot-") as scratch:
        package = aoti_compile_and_package(program, package_path=f"{scratch}/model.pt2",
                                           inductor_configs=_inductor_options(dtype))
        return aoti_load_package(package)  # the loaded runner keeps what it needs; the file can go


def recommended_mode(spec: NetworkSpec) -> str:
    """``"script"`` unless the network has grouped (not depthwise) 1x1 convs — ShuffleNet V1 — whose
    oneDNN kernels in the frozen graph ran slower than eager PyTorch's: V1 g3 at 224, batch 32, 325 vs
    180 ms; batch 1, 8.7 vs 7.1 ms. V2 and ResNeXt gain from the script (docs/performance.md)."""
    grouped_pointwise = any(isinstance(op, ir.Conv2d) and op.kernel_size == 1 and op.groups > 1
                            and not op.is_depthwise for _, op in ir.iter_leaves(spec))
    return "eager" if grouped_pointwise else "script"


def fuse_batch_norm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every BatchNorm that directly follows a conv folded into that
    conv (now with a bias) and replaced by ``nn.Identity``; the original is not modified."""
    source = _unwrap(model)
    fused = copy.deepcopy(source).eval()
    for conv_path, bn_path in conv_bn_pairs(source.spec):
        conv, bn = fused.get_submodule(conv_path), fused.get_submodule(bn_path)
        weight, bias = fold_batch_norm(
            _array(conv.weight), None if conv.bias is None else _array(conv.bias), _array(bn.weight),
            _array(bn.bias), _array(bn.running_mean), _array(bn.running_var), bn.eps)
        folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                           padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                           dtype=conv.weight.dtype, device=conv.weight.device)
        with torch.no_grad():
            folded.weight.copy_(torch.from_numpy(weight))
            folded.bias.copy_(torch.from_numpy(bias))
        _replace(fused, conv_path, folded.eval())
        _replace(fused, bn_path, nn.Identity())
    for parameter in fused.parameters():
        parameter.requires_grad_(False)
    return fused


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def _replace(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


class InferenceModel(nn.Module):
    """An inference-only network: input in NCHW (any memory format), logits out, always eval mode.

    Keeps ``spec`` and the dtype, so ``forward_numpy`` and ``common.check.verify`` drive it like any model.
    ``forward_taps`` exists for the eager variant only (frozen / compiled graphs give logits only).
    A batch whose largest activation would pass ``max_buffer_bytes`` runs as micro-batches
    (:meth:`micro_batch`).
    """

    def __init__(self, net: nn.Module, spec: NetworkSpec, dtype: torch.dtype, channels_last: bool,
                 mode: Mode, max_buffer_bytes: int | None = MAX_BUFFER_BYTES) -> None:
        super().__init__()
        self.net = net
        self.spec = spec
        self.channels_last = channels_last
        self.mode = mode
        self.max_buffer_bytes = check_max_buffer_bytes(max_buffer_bytes, "torch_impl.optimize_for_inference")
        self._groupnets_dtype = dtype
        self._aot: dict[tuple, object] = {}  # mode="aot": (shape, dtype, strides) -> compiled runner
        self._micro: dict[tuple, int] = {}  # (input shape, dtype) -> rows per call

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def micro_batch(self, x: torch.Tensor) -> int:
        """Rows per call for a batch shaped like ``x``, its largest buffer kept within ``max_buffer_bytes``
        (:mod:`common.runtime.micro_batch`: past it each call maps fresh pages and faults them in).

        PyTorch and Inductor's code allocate op by op, so the largest buffer is taken as
        :data:`OP_BUFFER_FACTOR` times a row's largest activation
        (:func:`common.spec.summary.peak_activation`) times the rows."""
        key = (tuple(x.shape), x.dtype)
        if key not in self._micro:
            batch, _, h, w = x.shape
            row = OP_BUFFER_FACTOR * peak_activation(self.spec, (int(h), int(w))) * x.element_size()
            self._micro[key] = micro_batch_size(int(batch), int(batch) * row, self.max_buffer_bytes)
        return self._micro[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.micro_batch(x) if x.dim() == 4 else len(x)  # anything else: the network's own error
        return call_in_slices(self._forward_whole, x, rows, torch.cat)

    def _forward_whole(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "compile":
            # Inductor reads ``freezing`` when it compiles, i.e. on the first call per input shape, so the
            # setting has to be live then; torch.compile(options={"freezing": True}) measured no freezing.
            from torch._inductor import config as inductor_config  # noqa: PLC0415
            with inductor_config.patch(**_inductor_options(self._groupnets_dtype)):
                return self.net(self._prepare(x))
        if self.mode == "aot":
            x = self._prepare(x)
            key = (tuple(x.shape), x.dtype, x.stride(), x.device)
            if key not in self._aot:
                self._aot[key] = _aot_compiled(self.net, x, self._groupnets_dtype)
            return self._aot[key](x)
        return self.net(self._prepare(x))

    def forward_taps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.mode != "eager":
            raise ValueError(f"stage taps are not available from a {self.mode!r} model (a frozen or compiled "
                             "graph has logits only); use optimize_for_inference(model, mode='eager') for taps")
        return self.net.forward_taps(self._prepare(x))

    def train(self, mode: bool = True) -> "InferenceModel":
        if mode:
            raise RuntimeError("an optimize_for_inference model is for inference only; train the model it "
                               "was made from")
        return super().train(False)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, channels_last={self.channels_last}, max_buffer_bytes={self.max_buffer_bytes}"


def optimize_for_inference(model: nn.Module, mode: Mode = "auto", channels_last: bool = True,
                           example_size: tuple[int, int] = (224, 224),
                           max_buffer_bytes: int | None = MAX_BUFFER_BYTES) -> InferenceModel:
    """A fast inference copy of a network: BatchNorm folded (:func:`fuse_batch_norm`), channels-last
    memory format, and for ``mode="script"`` traced + ``torch.jit.freeze`` + ``optimize_for_inference``
    (constant weights, oneDNN prepacked convs, fused ReLUs, no Python per op — what makes batch 1 fast);
    for ``mode="compile"``, ``torch.compile`` (Inductor, ``freezing``), compiled on the first call per shape;
    for ``mode="aot"``, the same Inductor code compiled ahead of time per input shape (``torch.export`` +
    AOTInductor, on the first call per shape, 30 s for ShuffleNet V2 x1.0): a C++ runner with no Python
    or graph guards per call — the lowest fixed cost per call (V2 x1.0 batch 1 224x224: 4.69 ms compiled,
    3.77 ms AOT; at 32x32 1.86 -> 1.45 ms, 2026-12-05).

    The traced graph takes any batch size and spatial size (nothing in the networks branches on them);
    ``example_size`` is only the tracing input's H, W. ``mode="auto"`` takes :func:`recommended_mode`.
    A batch whose largest activation would pass ``max_buffer_bytes`` runs as micro-batches that fit
    (:meth:`InferenceModel.micro_batch`); ``None`` runs every batch whole. The source model is not modified.
    """
    check_max_buffer_bytes(max_buffer_bytes, "torch_impl.optimize_for_inference")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    source = _unwrap(model)
    spec = getattr(source, "spec", None)
    if not isinstance(spec, NetworkSpec):
        raise TypeError(f"optimize_for_inference needs a whole network, got {type(source).__name__}")
    if mode == "auto":
        mode = recommended_mode(spec)
    dtype = model_dtype(source)
    net = fuse_batch_norm(source)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if mode == "compile":
        # Inductor with freezing: weights become constants, conv weights are prepacked, elementwise ops are
        # fused into generated C++ kernels. Fastest measured at batch 1 (V2 x1.0 6.4 -> 4.9 ms; ResNeXt-50
        # 45 ms vs ORT's 43); the cost is the first call per input shape (5-15 s; a C++ compiler is needed).
        net = torch.compile(net)  # with freezing on at compile time (InferenceModel.forward)
    if mode == "script":
        example = torch.zeros(2, spec.in_channels, *example_size, dtype=dtype, device=_device(source))
        if channels_last:
            example = example.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            traced = torch.jit.trace(net, (example,), check_trace=False)
            net = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
    return InferenceModel(net, spec, dtype, channels_last, mode, max_buffer_bytes).eval()


__all__ = ["InferenceModel", "fuse_batch_norm", "optimize_for_inference", "recommended_mode"]

"""Linear layers whose matrix products run through oneDNN on the CPU: a speed-up of the fast model forms only.

y = x W^T + b, the same equation as `nn.Linear`; only the library that multiplies changes. At the shapes the models
use (50-500 rows: the hypotheses of one LSTM step, a batch of questions) PyTorch's default CPU products (MKL) ran well
below oneDNN's on this project's AMD CPU (`python -m vqacap.bench models` with VQACAP_ONEDNN=0 and =1 compares whole
training steps; README, Performance). Weights are not packed into oneDNN's blocked layout: packing cost more than it
gained over the 17 steps of a caption.

Used only where it applies: float32 tensors on the CPU, autocast off, PyTorch built with oneDNN (mkldnn) and
VQACAP_ONEDNN not set to 0. Everywhere else (GPU, bf16, other builds) `linear` is `F.linear`. Values equal F.linear's
up to float rounding (the order of the additions differs).

Not for: weight gradients, which stay `torch.mm` (MKL was faster there: 85-115 GFLOP/s against oneDNN's 50-115 on the
models' shapes), or anything but the products of linear layers.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_OPS = getattr(torch.ops, "mkldnn", None)
AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(_OPS, "_linear_pointwise")


def enabled() -> bool:
    """Whether oneDNN products may be used at all (VQACAP_ONEDNN=0 turns them off, e.g. to compare)."""
    return AVAILABLE and os.environ.get("VQACAP_ONEDNN", "1") != "0"


def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `linear` multiplies x and weight through oneDNN.

    The weight must be dense in either orientation: oneDNN's path for other strides (a column block split off a
    stacked weight) took 24 s for a product MKL does in 20 ms.
    """
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and (weight.is_contiguous() or weight.t().is_contiguous())
        and x.numel() > 0
        and not torch.is_autocast_enabled("cpu")
        and enabled()
    )


def _product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., in), weight (out, in), bias (out,) -> (..., out)."""
    if not applies(x, weight):
        return F.linear(x, weight, bias)
    tracked = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    return _Linear.apply(x, weight, bias) if tracked else _product(x, weight, bias)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _product(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _product(grad, weight.t(), None)  # g W, the same kind of product as the forward
        if ctx.needs_input_grad[1]:
            grad_w = grad.reshape(-1, grad.size(-1)).t() @ x.reshape(-1, x.size(-1))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.reshape(-1, grad.size(-1)).sum(0)
        return grad_x, grad_w, grad_b


class OneDNNProducts(TorchFunctionMode):
    """Within this context every `F.linear` (so every `nn.Linear`, weight-normed or not) multiplies through `linear`.

    Lets a fast model form run its paper form's layers through oneDNN without another copy of the layers.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.linear:
            return linear(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


def _register_flops() -> None:
    """FlopCounterMode counts aten's products only; count oneDNN's as the same 2 rows x in x out FLOPs."""
    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(torch.ops.mkldnn._linear_pointwise)
    def _flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
        rows = 1
        for size in x_shape[:-1]:
            rows *= size
        return 2 * rows * x_shape[-1] * w_shape[0]


if AVAILABLE:
    _register_flops()

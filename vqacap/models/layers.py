"""Non-linear layers the VQA models and their attentions share.

Dims: any leading dims (...), then the layer's input or output size.

- `GatedTanh`: the gated tanh of Anderson et al. 2018 Sec. 3.3 (Teney et al. 2018), the paper's VQA layer.
- `wn_linear`, `wn_relu`: the weight-normalised linear (+ ReLU) layers of hengyuan-hu/bottom-up-attention-vqa.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class GatedTanh(nn.Module):
    """f(x) = tanh(W x + b) * sigmoid(W' x + b'), the non-linear layer of Anderson et al. 2018 Sec. 3.3.

    W and W' are stacked in one matrix, so a layer is one matrix product.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, 2 * out_dim)  # [W; W'], [b; b']

    def glorot_init(self) -> None:
        """Glorot uniform for W and W' each: bound sqrt(6 / (in + out)) from this layer's own fan-in and fan-out (the
        stacked matrix's 2 * out rows would give the smaller sqrt(6 / (in + 2 out))), and zero biases."""
        for half in self.linear.weight.data.chunk(2):  # W, W' (out, in) views of the stacked matrix
            nn.init.xavier_uniform_(half)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.linear(x))

    @staticmethod
    def activate(pre: torch.Tensor) -> torch.Tensor:
        """pre = [W x + b; W' x + b'] (..., 2 * out) -> (..., out)."""
        y, gate = pre.chunk(2, dim=-1)
        return torch.tanh(y) * torch.sigmoid(gate)


def wn_linear(in_dim: int, out_dim: int, bias: bool = True) -> nn.Linear:
    """Linear layer with weight normalisation over the whole matrix (dim=None), as the reference implementation."""
    return weight_norm(nn.Linear(in_dim, out_dim, bias=bias), dim=None)


def wn_relu(in_dim: int, out_dim: int) -> nn.Sequential:
    """The reference implementation's non-linear layer: weight-normalised linear + ReLU."""
    return nn.Sequential(wn_linear(in_dim, out_dim), nn.ReLU())

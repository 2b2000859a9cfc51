"""Top-down attention over bottom-up regions: every region attention of the project, side by side.

Dims: B batch, G queries per image (hypotheses of a caption, 1 for VQA), K regions, D region feature dim, H query
(hidden) dim, A attention dim.

All three score each region i against a query, normalise the scores over the image's real regions and let the caller
form v_hat = sum_i alpha_i v_i (`attend`):

- `AdditiveAttention` (the captioner, Anderson et al. 2018 Eq. (3)-(4)): a_i = w_a^T tanh(W_va v_i + W_ha h).
- `ConcatAttention` (the paper's VQA model, Sec. 3.3): a_i = w_a^T f_a([v_i; q]), f_a a gated tanh.
- `ProductAttention` (hengyuan-hu/bottom-up-attention-vqa): a_i = w_a^T dropout(f_v(v_i) * f_q(q)), weight-normed.

Padded regions (mask False) get exactly zero weight, whatever their features hold.
"""

from __future__ import annotations

import torch
from torch import nn

from vqacap.models.layers import GatedTanh, wn_linear, wn_relu


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None, dim: int = -1) -> torch.Tensor:
    """Softmax over `dim` where masked-out positions get exactly zero weight.

    scores: (..., K); mask: broadcastable to scores, True for valid regions (every row needs at least one).
    """
    if mask is None:
        return torch.softmax(scores, dim=dim)
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=dim) * mask


def mean_region(regions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """v_bar, the mean of the real regions: regions (B, K, D), mask (B, K) -> (B, 1, D)."""
    weights = mask.unsqueeze(-1).to(regions.dtype)  # (B, K, 1)
    return (regions * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp(min=1)


def attend(weights: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Attended feature v_hat = sum_i a_i v_i: weights (B, K) or (B, G, K), regions (B, K, D) -> (B, D) or (B, G, D)."""
    if weights.dim() == 2:
        return torch.bmm(weights.unsqueeze(1), regions).squeeze(1)
    return torch.bmm(weights, regions)


class AdditiveAttention(nn.Module):
    """a_t = softmax(w_a^T tanh(W_va v_i + W_ha h1_t)), Eq. (3)-(4), Anderson et al. 2018.

    The image side W_va v_i does not depend on the step: `project_regions` computes it once per image.
    """

    def __init__(self, feature_dim: int, query_dim: int, attention_dim: int) -> None:
        super().__init__()
        self.region_proj = nn.Linear(feature_dim, attention_dim, bias=False)  # W_va
        self.query_proj = nn.Linear(query_dim, attention_dim)  # W_ha
        self.score = nn.Linear(attention_dim, 1, bias=False)  # w_a

    def project_regions(self, regions: torch.Tensor) -> torch.Tensor:
        return self.region_proj(regions)  # (B, K, A)

    def forward(
        self, projected_regions: torch.Tensor, query: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """projected_regions (B, K, A), query (B, H) or (B, G, H), mask (B, K) -> weights (B, K) or (B, G, K).

        G queries per image (beam hypotheses) share the image's regions by broadcasting: regions are never copied.
        """
        grouped = query.dim() == 3
        q = self.query_proj(query if grouped else query.unsqueeze(1))  # (B, G, A)
        hidden = torch.tanh(projected_regions.unsqueeze(1) + q.unsqueeze(2))  # (B, G, K, A)
        scores = self.score(hidden).squeeze(-1)  # (B, G, K)
        weights = masked_softmax(scores, None if mask is None else mask.unsqueeze(1))
        return weights if grouped else weights.squeeze(1)


class ConcatAttention(nn.Module):
    """a_i = w_a^T f_a([v_i; q]), f_a a gated tanh; softmax over the real regions (Anderson et al. 2018 Sec. 3.3)."""

    def __init__(self, feature_dim: int, query_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.f_a = GatedTanh(feature_dim + query_dim, hidden_dim)
        self.w_a = nn.Linear(hidden_dim, 1, bias=False)  # a bias would cancel in the softmax

    def forward(self, regions: torch.Tensor, query: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """regions (B, K, D), query (B, H), mask (B, K) -> weights (B, K)."""
        joint = torch.cat([regions, query.unsqueeze(1).expand(-1, regions.size(1), -1)], -1)  # (B, K, D + H)
        scores = self.w_a(self.f_a(joint)).squeeze(-1)  # (B, K)
        return masked_softmax(scores, mask)


class ProductAttention(nn.Module):
    """a_i = w_a^T dropout(f_v(v_i) * f_q(q)), weight-normalised (the reference implementation's attention)."""

    def __init__(self, feature_dim: int, query_dim: int, hidden_dim: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.f_v = wn_relu(feature_dim, hidden_dim)
        self.f_q = wn_relu(query_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.w_a = wn_linear(hidden_dim, 1, bias=False)  # a bias would cancel in the softmax

    def forward(self, regions: torch.Tensor, query: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """regions (B, K, D), query (B, H), mask (B, K) -> weights (B, K)."""
        joint = self.f_v(regions) * self.f_q(query).unsqueeze(1)  # (B, K, H)
        scores = self.w_a(self.dropout(joint)).squeeze(-1)  # (B, K)
        return masked_softmax(scores, mask)

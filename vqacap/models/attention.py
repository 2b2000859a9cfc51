"""Top-down attention over bottom-up regions, shared by the captioner and the VQA model.

Dims: B batch, K regions, D region feature dim, H query (hidden) dim, A attention dim.
"""

from __future__ import annotations

import torch
from torch import nn

from vqacap.models.linear import Linear


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None, dim: int = -1) -> torch.Tensor:
    """Softmax over `dim` where masked-out positions get exactly zero weight.

    scores: (..., K); mask: broadcastable to scores, True for valid regions (every row needs at least one).
    """
    if mask is None:
        return torch.softmax(scores, dim=dim)
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=dim) * mask


class AdditiveAttention(nn.Module):
    """a = softmax(w_a^T tanh(W_va v_i + W_ha h)), Eq. (3)-(4), Anderson et al. 2018.

    The image side W_va v_i is computed once per image by `project_regions` and reused at every decoding step.
    """

    def __init__(self, feature_dim: int, query_dim: int, attention_dim: int) -> None:
        super().__init__()
        self.region_proj = Linear(feature_dim, attention_dim, bias=False)  # W_va
        self.query_proj = Linear(query_dim, attention_dim)  # W_ha
        self.score = Linear(attention_dim, 1, bias=False)  # w_a

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


def attend(weights: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Attended feature v_hat = sum_i a_i v_i: weights (B, K) or (B, G, K), regions (B, K, D) -> (B, D) or (B, G, D)."""
    if weights.dim() == 2:
        return torch.bmm(weights.unsqueeze(1), regions).squeeze(1)
    return torch.bmm(weights, regions)

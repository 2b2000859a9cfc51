"""Top-down captioning model of Anderson et al., CVPR 2018, Sec. 3.2: an attention LSTM and a language LSTM.

Dims: B images, G hypotheses per image (captions in training, samples or beams in decoding), K regions, D region
feature dim, E word embedding dim, H hidden dim, A attention dim, T tokens, V vocabulary.

Per step t, with v_i the regions of the image and Pi_t the one-hot previous word:

    Eq. (2)  x1_t = [h2_{t-1}; v_bar; W_e Pi_t],   h1_t = LSTM(x1_t, h1_{t-1})          the attention LSTM
    Eq. (3)  a_{i,t} = w_a^T tanh(W_va v_i + W_ha h1_t)
    Eq. (4)  alpha_t = softmax(a_t)                                                    over the image's real regions
    Eq. (5)  v_hat_t = sum_i alpha_{i,t} v_i
    Eq. (6)  x2_t = [v_hat_t; h1_t],   h2_t = LSTM(x2_t, h2_{t-1})                      the language LSTM
    Eq. (7)  p(y_t | y_1:t-1) = softmax(W_p h2_t + b_p)

The model implements the decoding protocol of `vqacap.models.decoding` (`start`, `step`, teacher-forced `forward`).
`vqacap.models.fast.FastUpDownCaptioner` is the same model with the same parameters, computed faster on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from vqacap.folders import PretrainedMixin
from vqacap.models.attention import AdditiveAttention, attend, mean_region
from vqacap.models.decoding import dropout_rows, teacher_forcing
from vqacap.tokens import PAD_ID


@dataclass
class UpDownContext:
    """Per-image tensors computed once and shared by every step and every hypothesis of the image."""

    regions: torch.Tensor  # (B, K, D) v_i
    mask: torch.Tensor  # (B, K) bool, True for real regions
    mean: torch.Tensor  # (B, 1, D) v_bar, the mean of the real regions
    projected: torch.Tensor  # (B, K, A) W_va v_i


class UpDownState(NamedTuple):
    h1: torch.Tensor  # (B, G, H) attention LSTM
    c1: torch.Tensor
    h2: torch.Tensor  # (B, G, H) language LSTM
    c2: torch.Tensor


def check_feature_dim(regions: torch.Tensor, feature_dim: int) -> None:
    if regions.size(-1) != feature_dim:
        raise ValueError(
            f"region features have dimension {regions.size(-1)} but the model expects feature_dim={feature_dim}"
        )


def lstm_cell(
    cell: nn.LSTMCell, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """nn.LSTMCell over (B, G, ...) tensors: x (B, G, in), h and c (B, G, H) -> h, c (B, G, H)."""
    b, g = x.shape[:2]
    h, c = cell(x.reshape(b * g, -1), (h.reshape(b * g, -1), c.reshape(b * g, -1)))
    return h.view(b, g, -1), c.view(b, g, -1)


class UpDownCaptioner(PretrainedMixin, nn.Module):
    folder_task = "captioning"  # save_pretrained / from_pretrained: vqacap.folders

    def __init__(
        self,
        vocab_size: int,
        feature_dim: int,
        embed_dim: int = 1000,
        hidden_dim: int = 1000,
        attention_dim: int = 512,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.feature_dim = feature_dim
        self.hidden_dim = hidden_dim
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)  # W_e
        self.attention_lstm = nn.LSTMCell(hidden_dim + feature_dim + embed_dim, hidden_dim)  # Eq. (2)
        self.attention = AdditiveAttention(feature_dim, hidden_dim, attention_dim)  # Eq. (3)-(4)
        self.language_lstm = nn.LSTMCell(feature_dim + hidden_dim, hidden_dim)  # Eq. (6)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_dim, vocab_size)  # Eq. (7): W_p, b_p

    def start(self, regions: torch.Tensor, mask: torch.Tensor) -> tuple[UpDownContext, UpDownState]:
        """regions (B, K, D), mask (B, K) -> the image context and the zero state (G = 1)."""
        check_feature_dim(regions, self.feature_dim)
        mean = mean_region(regions, mask)  # (B, 1, D)
        context = UpDownContext(regions, mask, mean, self.attention.project_regions(regions))
        zeros = regions.new_zeros(regions.size(0), 1, self.hidden_dim)  # (B, 1, H)
        return context, UpDownState(zeros, zeros, zeros, zeros)

    def step(
        self, context: UpDownContext, state: UpDownState, tokens: torch.Tensor, eval_rows: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, UpDownState]:
        """tokens (B, G), the previous words -> logits (B, G, V), attention alpha_t (B, G, K), the new state.

        eval_rows: the last `eval_rows` hypotheses skip dropout, as in eval mode (see `vqacap.models.decoding`).
        """
        b, g = tokens.shape
        # Eq. (2): the attention LSTM reads the language LSTM's previous output, the mean region and the word.
        x1 = torch.cat([state.h2, context.mean.expand(b, g, -1), self.embed(tokens)], -1)  # (B, G, H + D + E)
        h1, c1 = lstm_cell(self.attention_lstm, x1, state.h1, state.c1)  # (B, G, H)
        # Eq. (3)-(4): attention weights over the real regions, with h1_t as the query.
        alpha = self.attention(context.projected, h1, context.mask)  # (B, G, K)
        # Eq. (5): the attended feature.
        v_hat = attend(alpha, context.regions)  # (B, G, D)
        # Eq. (6): the language LSTM.
        x2 = torch.cat([v_hat, h1], -1)  # (B, G, D + H)
        h2, c2 = lstm_cell(self.language_lstm, x2, state.h2, state.c2)  # (B, G, H)
        # Eq. (7): word scores; softmax is the loss's or the decoder's.
        logits = self.output(dropout_rows(self.dropout, h2, eval_rows))  # (B, G, V)
        return logits, alpha, UpDownState(h1, c1, h2, c2)

    def forward(
        self, regions: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: tokens (B, G, T) or (B, T) = <bos> w_1 .. w_n <eos> <pad>...

        Returns logits (B, G, T-1, V) predicting tokens[..., 1:] and the attention weights (B, G, T-1, K), without
        the G axis for (B, T) tokens.
        """
        return teacher_forcing(self, regions, mask, tokens)

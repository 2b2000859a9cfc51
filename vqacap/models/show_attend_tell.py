"""Soft-attention captioner in the style of Show, Attend and Tell (Xu et al., ICML 2015): one LSTM over the regions.

The attention baseline the top-down model improves on: a single LSTM attends with its previous state, where
`UpDownCaptioner` adds an attention LSTM whose fresh output is the query. Here the "annotation vectors" a_i are the
bottom-up regions v_i.

Dims: B images, G hypotheses per image, K regions, D region feature dim, E word embedding dim, H hidden dim,
A attention dim, T tokens, V vocabulary.

Per step t, with Pi_t the one-hot previous word (Xu et al. 2015, Sec. 3.1.2 and 4.2.1):

    h_0, c_0 = tanh(W_init,h v_bar), tanh(W_init,c v_bar)        v_bar the mean of the real regions
    e_{i,t} = w_a^T tanh(W_va v_i + W_ha h_{t-1})                 Eq. (4): attention from the previous state
    alpha_t = softmax(e_t)                                        Eq. (5), over the real regions
    z_t = beta_t sum_i alpha_{i,t} v_i,  beta_t = sigmoid(w_b^T h_{t-1} + b_b)     Eq. (6) and the gate of Sec. 4.2.1
    h_t, c_t = LSTM([W_e Pi_t; z_t], (h_{t-1}, c_{t-1}))          Eq. (1)-(3)
    p(y_t) = softmax(L_o (W_e Pi_t + L_h h_t + L_z z_t))          Eq. (7), the deep output layer

It implements the decoding protocol of `vqacap.models.decoding`, so it trains, decodes and evaluates with
`CaptioningModule` unchanged (conf/model/show_attend_tell.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from vqacap.folders import PretrainedMixin
from vqacap.models.attention import AdditiveAttention, attend, mean_region
from vqacap.models.captioner import check_feature_dim, lstm_cell
from vqacap.models.decoding import dropout_rows, teacher_forcing
from vqacap.tokens import PAD_ID


@dataclass
class SoftAttentionContext:
    regions: torch.Tensor  # (B, K, D) v_i
    mask: torch.Tensor  # (B, K) bool, True for real regions
    projected: torch.Tensor  # (B, K, A) W_va v_i, once per image


class SoftAttentionState(NamedTuple):
    h: torch.Tensor  # (B, G, H)
    c: torch.Tensor  # (B, G, H)


class ShowAttendTell(PretrainedMixin, nn.Module):
    folder_task = "captioning"  # save_pretrained / from_pretrained: vqacap.folders

    def __init__(
        self,
        vocab_size: int,
        feature_dim: int,
        embed_dim: int = 512,
        hidden_dim: int = 1000,
        attention_dim: int = 512,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)  # W_e
        self.init_h = nn.Linear(feature_dim, hidden_dim)  # W_init,h
        self.init_c = nn.Linear(feature_dim, hidden_dim)  # W_init,c
        self.attention = AdditiveAttention(feature_dim, hidden_dim, attention_dim)  # Eq. (4)-(5)
        self.gate = nn.Linear(hidden_dim, 1)  # beta_t
        self.lstm = nn.LSTMCell(embed_dim + feature_dim, hidden_dim)  # Eq. (1)-(3)
        self.out_hidden = nn.Linear(hidden_dim, embed_dim, bias=False)  # L_h
        self.out_context = nn.Linear(feature_dim, embed_dim, bias=False)  # L_z
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(embed_dim, vocab_size)  # L_o

    def start(
        self, regions: torch.Tensor, mask: torch.Tensor
    ) -> tuple[SoftAttentionContext, SoftAttentionState]:
        """regions (B, K, D), mask (B, K) -> the image context and the initial state (G = 1)."""
        check_feature_dim(regions, self.feature_dim)
        mean = mean_region(regions, mask)  # (B, 1, D)
        state = SoftAttentionState(
            torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))
        )  # (B, 1, H) each
        return SoftAttentionContext(regions, mask, self.attention.project_regions(regions)), state

    def step(
        self,
        context: SoftAttentionContext,
        state: SoftAttentionState,
        tokens: torch.Tensor,
        eval_rows: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor, SoftAttentionState]:
        """tokens (B, G), the previous words -> logits (B, G, V), attention alpha_t (B, G, K), the new state."""
        word = self.embed(tokens)  # (B, G, E)
        alpha = self.attention(context.projected, state.h, context.mask)  # (B, G, K), from h_{t-1}
        z = torch.sigmoid(self.gate(state.h)) * attend(alpha, context.regions)  # (B, G, D)
        h, c = lstm_cell(self.lstm, torch.cat([word, z], -1), state.h, state.c)  # (B, G, H)
        deep = word + self.out_hidden(h) + self.out_context(z)  # (B, G, E)
        logits = self.output(dropout_rows(self.dropout, deep, eval_rows))  # (B, G, V)
        return logits, alpha, SoftAttentionState(h, c)

    def forward(
        self, regions: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing, as `UpDownCaptioner.forward`: logits (B, G, T-1, V), attention (B, G, T-1, K)."""
        return teacher_forcing(self, regions, mask, tokens)

"""Top-down captioning model of Anderson et al., CVPR 2018, Sec. 3.2: an attention LSTM and a language LSTM.

Dims: B images, G hypotheses per image (1 in training and greedy decoding, the beam size in beam search), K regions,
D region feature dim, E word embedding dim, H hidden dim, A attention dim, T tokens, V vocabulary.

The LSTMs are written out as gate matmuls so that everything that does not depend on the recurrent state is computed
outside the time loop: the mean-region input of the attention LSTM once per image, its word input for all teacher-forced
steps in one matmul, the region side of the attention (W_va v_i) once per image, and the output projection for all steps
in one matmul. The language LSTM's input projection of the attended feature is moved inside the attention sum:
W v_hat + b = sum_i a_i (W v_i + b) because the weights sum to one, so W v_i + b is computed once per image (K rows)
instead of once per caption and step (G x T rows). Training batches hold G captions per image for the same reason.
The equations are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vqacap.models.attention import AdditiveAttention, attend


@dataclass
class ImageContext:
    """Per-image tensors computed once and shared by every step and every hypothesis of that image."""

    language_regions: torch.Tensor  # (B, K, 4H)  language LSTM input projection of each region, W v_i + b
    projected: torch.Tensor  # (B, K, A)  W_va v_i
    mask: torch.Tensor  # (B, K) bool
    mean_gates: torch.Tensor  # (B, 1, 4H) contribution of the mean region feature v_bar to the attention LSTM gates


@dataclass
class State:
    h1: torch.Tensor  # (B, G, H) attention LSTM
    c1: torch.Tensor
    h2: torch.Tensor  # (B, G, H) language LSTM
    c2: torch.Tensor

    def select(self, index: torch.Tensor) -> State:
        """Reorder hypotheses: index (B, G') of hypotheses to keep, per image."""
        idx = index.unsqueeze(-1).expand(-1, -1, self.h1.size(-1))
        return State(*(t.gather(1, idx) for t in (self.h1, self.c1, self.h2, self.c2)))

    def expand(self, g: int) -> State:
        return State(*(t.expand(-1, g, -1).contiguous() for t in (self.h1, self.c1, self.h2, self.c2)))


def _lstm(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard LSTM update from pre-activation gates (..., 4H) ordered input, forget, cell, output."""
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class UpDownCaptioner(nn.Module):
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
        h4 = 4 * hidden_dim
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)  # W_e
        # Attention LSTM, Eq. (2): input x1_t = [h2_{t-1}; v_bar; W_e Pi_t], recurrent h1_{t-1}.
        self.attention_lstm_mean = nn.Linear(feature_dim, h4)  # v_bar part (+ bias)
        self.attention_lstm_word = nn.Linear(embed_dim, h4, bias=False)  # W_e Pi_t part
        self.attention_lstm_recurrent = nn.Linear(2 * hidden_dim, h4, bias=False)  # [h2_{t-1}; h1_{t-1}] part
        self.attention = AdditiveAttention(feature_dim, hidden_dim, attention_dim)  # Eq. (3)-(4)
        # Language LSTM, Eq. (6): input x2_t = [v_hat_t; h1_t], recurrent h2_{t-1}.
        self.language_lstm_attended = nn.Linear(feature_dim, h4)  # v_hat_t part (+ bias)
        self.language_lstm_recurrent = nn.Linear(2 * hidden_dim, h4, bias=False)  # [h1_t; h2_{t-1}] part
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_dim, vocab_size)  # Eq. (7): p(y_t) = softmax(W_p h2_t + b_p)

    # -- pieces shared by training and decoding ----------------------------------------------------------------------
    def encode(self, regions: torch.Tensor, mask: torch.Tensor) -> ImageContext:
        """regions (B, K, D), mask (B, K) -> per-image context."""
        if regions.size(-1) != self.feature_dim:
            raise ValueError(
                f"region features have dimension {regions.size(-1)} but the model expects feature_dim={self.feature_dim}"
            )
        weights = mask.unsqueeze(-1).to(regions.dtype)
        mean = (regions * weights).sum(1) / weights.sum(1).clamp(min=1)  # (B, D) v_bar over valid regions only
        return ImageContext(
            language_regions=self.language_lstm_attended(regions),
            projected=self.attention.project_regions(regions),
            mask=mask,
            mean_gates=self.attention_lstm_mean(mean).unsqueeze(1),
        )

    def init_state(self, batch: int, device, dtype=torch.float32) -> State:
        zeros = torch.zeros(batch, 1, self.hidden_dim, device=device, dtype=dtype)
        return State(zeros, zeros, zeros, zeros)

    def step(
        self, ctx: ImageContext, state: State, word_gates: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, State]:
        """One time step for G hypotheses per image.

        word_gates (B, G, 4H) = attention_lstm_word(W_e Pi_t). Returns the language LSTM output h2_t (B, G, H) before
        dropout, the attention weights (B, G, K) and the new state.
        """
        # Eq. (2): h1_t = LSTM(x1_t, h1_{t-1})
        gates1 = ctx.mean_gates + word_gates + self.attention_lstm_recurrent(torch.cat([state.h2, state.h1], -1))
        h1, c1 = _lstm(gates1, state.c1)
        # Eq. (3)-(5): a_t = softmax(w_a^T tanh(W_va v_i + W_ha h1_t)), v_hat_t = sum_i a_{i,t} v_i
        alpha = self.attention(ctx.projected, h1, ctx.mask)  # (B, G, K)
        # Eq. (6): h2_t = LSTM([v_hat_t; h1_t], h2_{t-1}); W v_hat_t + b = sum_i a_i (W v_i + b)
        attended_gates = attend(alpha, ctx.language_regions)  # (B, G, 4H)
        gates2 = attended_gates + self.language_lstm_recurrent(torch.cat([h1, state.h2], -1))
        h2, c2 = _lstm(gates2, state.c2)
        return h2, alpha, State(h1, c1, h2, c2)

    def word_gates(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, G) or (B, T) -> their word input to the attention LSTM gates (..., 4H)."""
        return self.attention_lstm_word(self.embed(tokens))

    def logits(self, h2: torch.Tensor) -> torch.Tensor:
        return self.output(self.dropout(h2))

    # -- teacher forcing ----------------------------------------------------------------------------------------------
    def forward(
        self, regions: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced pass over G captions per image. tokens (B, G, T) = <bos> w_1 .. w_n <eos> <pad>...

        Returns logits (B, G, T-1, V) predicting tokens[..., 1:] and attention weights (B, G, T-1, K).
        (B, T) tokens (one caption per image) give (B, T-1, V) and (B, T-1, K).
        """
        single = tokens.dim() == 2
        if single:
            tokens = tokens.unsqueeze(1)
        ctx = self.encode(regions, mask)
        b, g, steps = tokens.size(0), tokens.size(1), tokens.size(2) - 1
        word_gates = self.word_gates(tokens[..., :-1])  # (B, G, T-1, 4H) all steps in one matmul
        state = self.init_state(b, regions.device, regions.dtype).expand(g)
        outputs, attention = [], []
        for t in range(steps):
            h2, alpha, state = self.step(ctx, state, word_gates[:, :, t])
            outputs.append(h2)
            attention.append(alpha)
        logits = self.logits(torch.stack(outputs, 2))  # (B, G, T-1, V) in one matmul
        attention = torch.stack(attention, 2)  # (B, G, T-1, K)
        return (logits.squeeze(1), attention.squeeze(1)) if single else (logits, attention)

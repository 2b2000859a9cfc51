"""Top-down attention VQA over bottom-up regions (Anderson et al. 2018, Sec. 3.3; Teney et al. 2018).

Dims: B batch, K regions, D region feature dim (+6 with box geometry), T question tokens, E word embedding (300),
H hidden, A candidate answers.

Both variants read the question with a GRU, attend over the regions with the question as context, fuse question and
attended feature by an element-wise product and score every candidate answer:

    q = GRU(embed(question))                       final state of the real tokens
    a_i = w_a^T f_att(v_i, q);   alpha = softmax(a) over the valid regions;   v_hat = sum_i alpha_i v_i
    h = f_q(q) * f_v(v_hat)
    s = W_o dropout(f_o(h))                        logits; sigmoid(s) is p(y), applied by the loss

- `updown` (the paper): every non-linear layer f is a gated tanh, y = tanh(W x + b) * sigmoid(W' x + b'), and the
  attention reads the concatenation [v_i; q].
- `reference` (hengyuan-hu/bottom-up-attention-vqa, 63.5 on VQA v2 val): every f is a weight-normalised linear layer
  with ReLU, the attention reads f(v_i) * f(q) with dropout 0.2, and the classifier is H -> 2H -> A with dropout 0.5.

Not for: the loss (binary cross-entropy against soft scores), the answer vocabulary or the tokenizer; those live in the
LightningModule and `vqacap.data`. Box geometry, when used, is concatenated to the features by the caller
(`Regions.spatial()`), and `spatial=True` makes room for its 6 dims.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm
from torch.nn.utils.rnn import pack_padded_sequence

from vqacap.data.vocab import PAD_ID
from vqacap.models.attention import attend, masked_softmax
from vqacap.models.linear import Linear, linear

VARIANTS = ("updown", "reference")
SPATIAL_DIM = 6  # Regions.spatial(): x1/w, y1/h, x2/w, y2/h, box w/w, box h/h


@dataclass
class VQAOutput:
    logits: torch.Tensor  # (B, A) answer scores before the sigmoid
    attention: torch.Tensor  # (B, K) attention weights, exactly 0 on padded regions


class GatedTanh(nn.Module):
    """f(x) = tanh(W x + b) * sigmoid(W' x + b'), the non-linear layer of Anderson et al. 2018 Sec. 3.3.

    W and W' are stacked in one matrix, so a layer is one matrix product.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = Linear(in_dim, 2 * out_dim)  # [W; W'], [b; b']

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.linear(x))

    @staticmethod
    def activate(pre: torch.Tensor) -> torch.Tensor:
        """pre = [W x + b; W' x + b'] (..., 2 * out) -> (..., out)."""
        y, gate = pre.chunk(2, dim=-1)
        return torch.tanh(y) * torch.sigmoid(gate)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Checkpoints written before W and W' were stacked hold them as `linear` and `gate`.
        for name in ("weight", "bias"):
            gate = state_dict.pop(f"{prefix}gate.{name}", None)
            if gate is not None:
                state_dict[f"{prefix}linear.{name}"] = torch.cat([state_dict[f"{prefix}linear.{name}"], gate])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def gru_cell(
    input_gates: torch.Tensor, h: torch.Tensor, weight_hh: torch.Tensor, bias_hh: torch.Tensor
) -> torch.Tensor:
    """nn.GRU's update from input_gates = W_i x + b_i (B, 3H) and h (B, H), gates ordered reset, update, new."""
    r_x, z_x, n_x = input_gates.chunk(3, dim=-1)
    r_h, z_h, n_h = linear(h, weight_hh, bias_hh).chunk(3, dim=-1)
    r, z = torch.sigmoid(r_x + r_h), torch.sigmoid(z_x + z_h)
    n = torch.tanh(n_x + r * n_h)
    return n + z * (h - n)  # (1 - z) n + z h, in ATen's order of operations


def wn_linear(in_dim: int, out_dim: int, bias: bool = True) -> nn.Linear:
    """Linear layer with weight normalisation over the whole matrix (dim=None), as the reference implementation."""
    return weight_norm(Linear(in_dim, out_dim, bias=bias), dim=None)


def wn_relu(in_dim: int, out_dim: int) -> nn.Sequential:
    """The reference implementation's non-linear layer: weight-normalised linear + ReLU."""
    return nn.Sequential(wn_linear(in_dim, out_dim), nn.ReLU())


class ConcatAttention(nn.Module):
    """a_i = w_a^T f_a([v_i; q]), f_a a gated tanh (Anderson et al. 2018 Sec. 3.3)."""

    def __init__(self, feature_dim: int, query_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.f_a = GatedTanh(feature_dim + query_dim, hidden_dim)
        self.w_a = Linear(hidden_dim, 1, bias=False)  # a bias would cancel in the softmax

    def forward(self, regions: torch.Tensor, query: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """regions (B, K, D), query (B, H), mask (B, K) -> weights (B, K)."""
        # f_a([v_i; q]) computed as W_v v_i + (W_q q + b): the same product without building the (B, K, D + H)
        # concatenation, and the question half once per question instead of once per region.
        w_v, w_q = self.f_a.linear.weight.split([self.feature_dim, query.size(-1)], dim=1)
        pre = linear(regions, w_v) + linear(query, w_q, self.f_a.linear.bias).unsqueeze(1)  # (B, K, 2A)
        scores = self.w_a(self.f_a.activate(pre)).squeeze(-1)  # (B, K)
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


class UpDownVQA(nn.Module):
    """Answer scores for a question about an image given as bottom-up regions.

    vocab_size: question words, id 0 = <pad>. word_embeddings: optional (vocab_size, embedding_dim) initialisation
    (GloVe). feature_dim: region feature size D, without box geometry; `spatial=True` adds its 6 dims. dropout: before
    the answer layer; None takes the variant's value (0 for updown, 0.5 for reference).
    """

    def __init__(
        self,
        vocab_size: int,
        num_answers: int,
        feature_dim: int = 2048,
        variant: str = "updown",
        hidden_size: int = 1024,
        embedding_dim: int = 300,
        spatial: bool = False,
        dropout: float | None = None,
        word_embeddings: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        self.region_dim = feature_dim + (SPATIAL_DIM if spatial else 0)
        hid = hidden_size

        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD_ID)
        if word_embeddings is not None:
            if tuple(word_embeddings.shape) != (vocab_size, embedding_dim):
                raise ValueError(
                    f"word_embeddings have shape {tuple(word_embeddings.shape)}, expected ({vocab_size}, {embedding_dim})"
                )
            with torch.no_grad():
                self.embedding.weight.copy_(word_embeddings)
                self.embedding.weight[PAD_ID].zero_()
        self.question_encoder = nn.GRU(embedding_dim, hid, batch_first=True)

        if variant == "updown":
            layer, out_hidden, out_linear = GatedTanh, hid, Linear
            self.attention: nn.Module = ConcatAttention(self.region_dim, hid, hid)
            dropout = 0.0 if dropout is None else dropout
        else:
            layer, out_hidden, out_linear = wn_relu, 2 * hid, wn_linear
            self.attention = ProductAttention(self.region_dim, hid, hid)
            dropout = 0.5 if dropout is None else dropout
        self.f_q = layer(hid, hid)
        self.f_v = layer(self.region_dim, hid)
        self.f_o = layer(hid, out_hidden)
        self.dropout = nn.Dropout(dropout)
        self.w_o = out_linear(out_hidden, num_answers)
        if variant == "updown":
            self._glorot_init()

    def _glorot_init(self) -> None:
        """Glorot (Xavier) uniform weights and zero biases for the linear maps after the question encoder.

        Glorot & Bengio (2010) derived this scale for tanh units. With PyTorch's default (weight variance 1/(3 fan_in),
        about 3x smaller in std for these sizes) the signal shrinks through each gated tanh and through the product
        h = f_q(q) * f_v(v_hat), so the logits start nearly independent of the image: on Shapes the model then stays at
        the accuracy of a blind model for more than 1000 steps, and learns to read the regions within 600 with this init.
        """
        for part in (self.attention, self.f_q, self.f_v, self.f_o, self.w_o):
            for layer in part.modules():
                if isinstance(layer, nn.Linear):
                    nn.init.xavier_uniform_(layer.weight)
                    if layer.bias is not None:
                        nn.init.zeros_(layer.bias)

    def encode_question(self, question: torch.Tensor) -> torch.Tensor:
        """question (B, T) ids, 0 = <pad> after the words -> q (B, H), the GRU state after the last real word.

        The GRU (`question_encoder`'s weights) is written out over the packed words: the input side of all words is one
        product, split into steps, and step t updates the questions with more than t words. (nn.GRU on a packed
        sequence slices that product per step, and the backward of each slice is a zero-filled tensor of full size.)
        """
        gru = self.question_encoder
        lengths, order = (question != PAD_ID).sum(dim=1).clamp(min=1).sort(descending=True)  # (B,)
        words = pack_padded_sequence(self.embedding(question[order]), lengths.cpu(), batch_first=True)
        steps = linear(words.data, gru.weight_ih_l0, gru.bias_ih_l0).split(
            words.batch_sizes.tolist()
        )  # (n_t, 3H)
        h = words.data.new_zeros(len(order), gru.hidden_size)  # (B, H), longest question first
        ended = []  # final states of the questions that have ended, longest first
        for input_gates in steps:
            n = input_gates.size(0)  # questions still reading
            if n < h.size(0):
                ended.insert(0, h[n:])
                h = h[:n]
            h = gru_cell(input_gates, h, gru.weight_hh_l0, gru.bias_hh_l0)
        return torch.cat([h, *ended]).index_select(0, order.argsort())  # (B, H) in the batch's order

    def forward(
        self, regions: torch.Tensor, region_mask: torch.Tensor | None, question: torch.Tensor
    ) -> VQAOutput:
        """regions (B, K, region_dim), region_mask (B, K) True for real regions, question (B, T) -> VQAOutput."""
        q = self.encode_question(question)  # (B, H)
        alpha = self.attention(regions, q, region_mask)  # (B, K), a_i and softmax over the valid regions
        v_hat = attend(alpha, regions)  # (B, D)
        h = self.f_q(q) * self.f_v(v_hat)  # (B, H), h = f_q(q) * f_v(v_hat)
        logits = self.w_o(self.dropout(self.f_o(h)))  # (B, A), s = W_o f_o(h)
        return VQAOutput(logits=logits, attention=alpha)

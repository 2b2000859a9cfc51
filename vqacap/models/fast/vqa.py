"""Faster CPU forms of the VQA models: the same parameters, state dict and outputs as `vqacap.models.vqa`.

Each overrides only what it speeds up:

- linear layers multiply through oneDNN (`OneDNNProducts`);
- the question GRU is written out over the packed words: the input side of all words is one product, and step t
  updates only the questions with more than t words (nn.GRU on a packed sequence slices that product per step, and
  the backward of each slice is a zero-filled tensor of full size);
- `UpDownVQA`'s attention computes f_a([v_i; q]) as W_v v_i + (W_q q + b): the same product without the (B, K, D + H)
  concatenation, with the question half once per question instead of once per region.

tests/models/test_fast_equivalence.py proves each equal to its paper form.
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pack_padded_sequence

from vqacap.models.attention import ConcatAttention, masked_softmax
from vqacap.models.fast.linear import OneDNNProducts, linear
from vqacap.models.vqa import ReferenceVQA, TopDownVQA, UpDownVQA, VQAOutput
from vqacap.tokens import PAD_ID


def gru_cell(
    input_gates: torch.Tensor, h: torch.Tensor, weight_hh: torch.Tensor, bias_hh: torch.Tensor
) -> torch.Tensor:
    """nn.GRU's update from input_gates = W_i x + b_i (B, 3H) and h (B, H), gates ordered reset, update, new."""
    r_x, z_x, n_x = input_gates.chunk(3, dim=-1)
    r_h, z_h, n_h = linear(h, weight_hh, bias_hh).chunk(3, dim=-1)
    r, z = torch.sigmoid(r_x + r_h), torch.sigmoid(z_x + z_h)
    n = torch.tanh(n_x + r * n_h)
    return n + z * (h - n)  # (1 - z) n + z h, in ATen's order of operations


def encode_question(model: TopDownVQA, question: torch.Tensor) -> torch.Tensor:
    """`TopDownVQA.encode_question` with the GRU written out over the packed words. question (B, T) -> (B, H).

    Only the last state is written out; mean pooling goes through the paper form."""
    if model.question_pooling != "last":
        return TopDownVQA.encode_question(model, question)
    gru = model.question_encoder
    lengths, order = (question != PAD_ID).sum(dim=1).clamp(min=1).sort(descending=True)  # (B,)
    words = pack_padded_sequence(model.embedding(question[order]), lengths.cpu(), batch_first=True)
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


class FastConcatAttention(ConcatAttention):
    def forward(self, regions: torch.Tensor, query: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """regions (B, K, D), query (B, H), mask (B, K) -> weights (B, K)."""
        w_v, w_q = self.f_a.linear.weight.split([self.feature_dim, query.size(-1)], dim=1)
        pre = linear(regions, w_v) + linear(query, w_q, self.f_a.linear.bias).unsqueeze(1)  # (B, K, 2H)
        scores = self.w_a(self.f_a.activate(pre)).squeeze(-1)  # (B, K)
        return masked_softmax(scores, mask)


class FastUpDownVQA(UpDownVQA):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.attention.__class__ = FastConcatAttention  # same parameters, the forward above

    encode_question = encode_question

    def answer(self, regions: torch.Tensor, region_mask: torch.Tensor | None, q: torch.Tensor) -> VQAOutput:
        with OneDNNProducts():
            return super().answer(regions, region_mask, q)


class FastReferenceVQA(ReferenceVQA):
    encode_question = encode_question

    def answer(self, regions: torch.Tensor, region_mask: torch.Tensor | None, q: torch.Tensor) -> VQAOutput:
        with OneDNNProducts():
            return super().answer(regions, region_mask, q)

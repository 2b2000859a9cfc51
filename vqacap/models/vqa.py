"""Top-down attention VQA over bottom-up regions (Anderson et al. 2018, Sec. 3.3; Teney et al. 2018).

Dims: B batch, K regions, D region feature dim (+6 with box geometry), T question tokens, E word embedding (300),
H hidden, A candidate answers.

Both models read the question with a GRU, attend over the regions with the question as context, fuse question and
attended feature by an element-wise product and score every candidate answer:

    q = GRU(embed(question))                       final state of the real tokens (question_pooling="last", the
                                                   paper) or the mean of the states over the real tokens ("mean")
    a_i = w_a^T f_att(v_i, q);   alpha = softmax(a) over the valid regions;   v_hat = sum_i alpha_i v_i
    h = f_q(q) * f_v(v_hat)
    s = W_o dropout(f_o(h))                        logits; sigmoid(s) is p(y), applied by the loss

- `UpDownVQA` (the paper): every non-linear layer f is a gated tanh, y = tanh(W x + b) * sigmoid(W' x + b'), and the
  attention reads the concatenation [v_i; q].
- `ReferenceVQA` (hengyuan-hu/bottom-up-attention-vqa, 63.5 on VQA v2 val): every f is a weight-normalised linear
  layer with ReLU, the attention reads f(v_i) * f(q) with dropout 0.2, and the classifier is H -> 2H -> A with dropout
  0.5.

Not for: the loss (binary cross-entropy against soft scores), the answer vocabulary or the tokenizer; those live in the
LightningModule and `vqacap.data`. Box geometry, when used, is concatenated to the features by the caller
(`Regions.spatial()`), who gives its width in `feature_dim`, as for the captioners. The faster CPU forms are in `vqacap.models.fast`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from vqacap.folders import PretrainedMixin
from vqacap.models.attention import ConcatAttention, ProductAttention, attend
from vqacap.models.layers import GatedTanh, wn_linear, wn_relu
from vqacap.tokens import PAD_ID

QUESTION_POOLINGS = ("last", "mean")


def check_question_pooling(pooling: str) -> str:
    if pooling not in QUESTION_POOLINGS:
        raise ValueError(f"question_pooling={pooling!r}: expected one of {', '.join(QUESTION_POOLINGS)}")
    return pooling


def word_embedding(
    vocab_size: int, embedding_dim: int, word_embeddings: torch.Tensor | None = None
) -> nn.Embedding:
    """The question's word embedding, initialised from `word_embeddings` (V, E) when given (GloVe), PAD row zero."""
    embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD_ID)
    if word_embeddings is not None:
        if tuple(word_embeddings.shape) != (vocab_size, embedding_dim):
            raise ValueError(
                f"word_embeddings have shape {tuple(word_embeddings.shape)}, expected ({vocab_size}, {embedding_dim})"
            )
        with torch.no_grad():
            embedding.weight.copy_(word_embeddings)
            embedding.weight[PAD_ID].zero_()
    return embedding


def encode_question(
    embedding: nn.Embedding, gru: nn.GRU, question: torch.Tensor, pooling: str = "last"
) -> torch.Tensor:
    """question (B, T) ids, 0 = <pad> after the words -> q (B, H): the GRU state after the last real word ("last"),
    or the mean of the GRU states over the real words ("mean"; padding never enters the GRU nor the mean)."""
    lengths = (question != PAD_ID).sum(dim=1).clamp(min=1)  # (B,)
    words = pack_padded_sequence(embedding(question), lengths.cpu(), batch_first=True, enforce_sorted=False)
    states, h = gru(words)  # h (1, B, H), in the batch's order
    if pooling == "last":
        return h.squeeze(0)
    states, _ = pad_packed_sequence(states, batch_first=True)  # (B, T', H), zeros after each question's words
    return states.sum(1) / lengths.unsqueeze(1).to(states.dtype)


@dataclass
class VQAOutput:
    logits: torch.Tensor  # (B, A) answer scores before the sigmoid
    attention: torch.Tensor  # (B, K) attention weights, exactly 0 on padded regions


class TopDownVQA(PretrainedMixin, nn.Module):
    """What both models share: the question encoder, the options and the forward pass. Subclasses build the layers
    `attention`, `f_q`, `f_v`, `f_o` and `w_o` in `build_layers`, and name their classifier dropout.

    vocab_size: question words, id 0 = <pad>. word_embeddings: optional (vocab_size, embedding_dim) initialisation
    (GloVe). feature_dim: the width of the region vectors read (D, or D + 6 with box geometry). dropout: before
    W_o; None: the model's own, `default_dropout`.
    """

    folder_task = "VQA"  # save_pretrained / from_pretrained: vqacap.folders
    default_dropout: float
    attention: nn.Module
    f_q: nn.Module
    f_v: nn.Module
    f_o: nn.Module
    w_o: nn.Module

    def __init__(
        self,
        vocab_size: int,
        num_answers: int,
        feature_dim: int = 2048,
        hidden_size: int = 1024,
        embedding_dim: int = 300,
        dropout: float | None = None,
        word_embeddings: torch.Tensor | None = None,
        question_pooling: str = "last",
    ) -> None:
        super().__init__()
        self.question_pooling = check_question_pooling(question_pooling)
        self.region_dim = feature_dim
        self.embedding = word_embedding(vocab_size, embedding_dim, word_embeddings)
        self.question_encoder = nn.GRU(embedding_dim, hidden_size, batch_first=True)
        self.build_layers(hidden_size, num_answers)
        self.dropout = nn.Dropout(self.default_dropout if dropout is None else dropout)

    def build_layers(self, hid: int, num_answers: int) -> None:
        """Build `attention`, `f_q`, `f_v`, `f_o` and `w_o` for hidden size `hid` and `num_answers` answers."""
        raise NotImplementedError

    def encode_question(self, question: torch.Tensor) -> torch.Tensor:
        """question (B, T) ids, 0 = <pad> after the words -> q (B, H), pooled as `question_pooling` says."""
        return encode_question(self.embedding, self.question_encoder, question, self.question_pooling)

    def forward(
        self, regions: torch.Tensor, region_mask: torch.Tensor | None, question: torch.Tensor
    ) -> VQAOutput:
        """regions (B, K, region_dim), region_mask (B, K) True for real regions, question (B, T) -> VQAOutput."""
        return self.answer(regions, region_mask, self.encode_question(question))

    def answer(self, regions: torch.Tensor, region_mask: torch.Tensor | None, q: torch.Tensor) -> VQAOutput:
        """The question's encoding q (B, H) -> attention over the regions and answer scores."""
        alpha = self.attention(regions, q, region_mask)  # (B, K), a_i and softmax over the valid regions
        v_hat = attend(alpha, regions)  # (B, D)
        h = self.f_q(q) * self.f_v(v_hat)  # (B, H), h = f_q(q) * f_v(v_hat)
        logits = self.w_o(self.dropout(self.f_o(h)))  # (B, A), s = W_o f_o(h)
        return VQAOutput(logits=logits, attention=alpha)


class UpDownVQA(TopDownVQA):
    """The paper's model: gated tanh layers, attention on [v_i; q], classifier H -> H -> A (dropout 0 by default)."""

    default_dropout = 0.0

    def build_layers(self, hid: int, num_answers: int) -> None:
        self.attention = ConcatAttention(self.region_dim, hid, hid)
        self.f_q = GatedTanh(hid, hid)
        self.f_v = GatedTanh(self.region_dim, hid)
        self.f_o = GatedTanh(hid, hid)
        self.w_o = nn.Linear(hid, num_answers)
        self._glorot_init()

    def _glorot_init(self) -> None:
        """Glorot (Xavier) uniform weights and zero biases for the linear maps after the question encoder.

        Glorot & Bengio (2010) derived this scale for tanh units. With PyTorch's default (weight variance 1/(3 fan_in),
        about 3x smaller in std for these sizes) the signal shrinks through each gated tanh and through the product
        h = f_q(q) * f_v(v_hat), so the logits start nearly independent of the image: on Shapes the model then stays at
        the accuracy of a blind model for more than 1000 steps, and learns to read the regions within 600 with this init.
        """
        parts = (self.attention, self.f_q, self.f_v, self.f_o, self.w_o)
        gated = [m for part in parts for m in part.modules() if isinstance(m, GatedTanh)]
        for layer in gated:  # per gated-tanh layer: W and W' each from its own fan-in and fan-out
            layer.glorot_init()
        stacked = {id(layer.linear) for layer in gated}
        for part in parts:
            for layer in part.modules():
                if isinstance(layer, nn.Linear) and id(layer) not in stacked:
                    nn.init.xavier_uniform_(layer.weight)
                    if layer.bias is not None:
                        nn.init.zeros_(layer.bias)


class ReferenceVQA(TopDownVQA):
    """hengyuan-hu/bottom-up-attention-vqa: weight-normed FC + ReLU layers, product attention, classifier
    H -> 2H -> A with dropout 0.5."""

    default_dropout = 0.5

    def build_layers(self, hid: int, num_answers: int) -> None:
        self.attention = ProductAttention(self.region_dim, hid, hid)
        self.f_q = wn_relu(hid, hid)
        self.f_v = wn_relu(self.region_dim, hid)
        self.f_o = wn_relu(hid, 2 * hid)
        self.w_o = wn_linear(2 * hid, num_answers)

"""Generative VQA: the answer decoded word by word by a top-down decoder over the regions, conditioned on the question.

Dims: B questions, G answers per question (hypotheses in decoding, human answers in training), K regions, D region
feature dim (+6 with box geometry), T question tokens, E word embedding dim, H hidden dim, A attention dim, L answer
tokens, V answer words.

`UpDownVQA` scores a fixed list of candidate answers; this model treats the answer as a short caption of the regions
that answers the question, so it can give answers that no training question had ("red triangle" from "red circle" and
"blue triangle"). The question is read as the classifier reads it, q = GRU(embed(question)) pooled as
`question_pooling` says; the decoder is the captioner's (Anderson et al. 2018 Sec. 3.2, vqacap.models.captioner) with q
in the attention LSTM's input and in the attention's query:

    x1_t = [h2_{t-1}; v_bar; q; W_e Pi_t],   h1_t = LSTM(x1_t, h1_{t-1})       Eq. (2) with q: the attention LSTM
    a_{i,t} = w_a^T tanh(W_va v_i + W_ha [h1_t; q])                            Eq. (3), the question in the query
    alpha_t = softmax(a_t),   v_hat_t = sum_i alpha_{i,t} v_i                  Eq. (4)-(5), over the real regions
    x2_t = [v_hat_t; h1_t],   h2_t = LSTM(x2_t, h2_{t-1})                      Eq. (6): the language LSTM
    p(y_t | y_1:t-1, Q, I) = softmax(W_p dropout(h2_t) + b_p)                  Eq. (7)

The decoding code (`vqacap.models.decoding`: greedy, beam) takes a captioner of the regions alone; `given(question)`
is that captioner for a batch of questions, so every decoder works unchanged. Not here: the answer vocabulary, the
loss over the human answers and the scoring (vqacap.lightning.vqa_generative).
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
from vqacap.models.vqa import check_question_pooling, encode_question, word_embedding
from vqacap.tokens import PAD_ID


@dataclass
class AnswerContext:
    """Per-question tensors computed once and shared by every step and every hypothesis."""

    regions: torch.Tensor  # (B, K, D) v_i
    mask: torch.Tensor  # (B, K) bool, True for real regions
    mean: torch.Tensor  # (B, 1, D) v_bar
    projected: torch.Tensor  # (B, K, A) W_va v_i
    question: torch.Tensor  # (B, 1, H) q


class AnswerState(NamedTuple):
    h1: torch.Tensor  # (B, G, H) attention LSTM
    c1: torch.Tensor
    h2: torch.Tensor  # (B, G, H) language LSTM
    c2: torch.Tensor


class GenerativeVQA(PretrainedMixin, nn.Module):
    """vocab_size: question words (id 0 = <pad>); answer_vocab_size: answer words, specials first
    (vqacap.tokens). feature_dim: the width of the region vectors
    read (D, or D + 6 with box geometry)."""

    folder_task = "VQA"  # save_pretrained / from_pretrained: vqacap.folders

    def __init__(
        self,
        vocab_size: int,
        answer_vocab_size: int,
        feature_dim: int = 2048,
        hidden_size: int = 512,
        embedding_dim: int = 300,
        answer_embedding_dim: int = 300,
        attention_dim: int = 512,
        dropout: float = 0.5,
        question_pooling: str = "last",
        word_embeddings: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.hidden_size = hidden_size
        self.question_pooling = check_question_pooling(question_pooling)
        d, h = self.feature_dim, hidden_size
        # The question encoder, as the classifier's (vqacap.models.vqa.TopDownVQA).
        self.embedding = word_embedding(vocab_size, embedding_dim, word_embeddings)
        self.question_encoder = nn.GRU(embedding_dim, h, batch_first=True)
        # The answer decoder.
        self.answer_embed = nn.Embedding(answer_vocab_size, answer_embedding_dim, padding_idx=PAD_ID)  # W_e
        self.attention_lstm = nn.LSTMCell(h + d + h + answer_embedding_dim, h)  # Eq. (2) with q
        self.attention = AdditiveAttention(d, 2 * h, attention_dim)  # Eq. (3)-(4), query [h1_t; q]
        self.language_lstm = nn.LSTMCell(d + h, h)  # Eq. (6)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(h, answer_vocab_size)  # Eq. (7): W_p, b_p

    def encode_question(self, question: torch.Tensor) -> torch.Tensor:
        """question (B, T) ids -> q (B, H)."""
        return encode_question(self.embedding, self.question_encoder, question, self.question_pooling)

    def start(
        self, regions: torch.Tensor, mask: torch.Tensor, q: torch.Tensor
    ) -> tuple[AnswerContext, AnswerState]:
        """regions (B, K, D), mask (B, K), q (B, H) -> the question's context and the zero state (G = 1)."""
        check_feature_dim(regions, self.feature_dim)
        context = AnswerContext(
            regions, mask, mean_region(regions, mask), self.attention.project_regions(regions), q.unsqueeze(1)
        )
        zeros = regions.new_zeros(regions.size(0), 1, self.hidden_size)  # (B, 1, H)
        return context, AnswerState(zeros, zeros, zeros, zeros)

    def step(
        self, context: AnswerContext, state: AnswerState, tokens: torch.Tensor, eval_rows: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, AnswerState]:
        """tokens (B, G), the previous answer words -> logits (B, G, V), attention alpha_t (B, G, K), the new state."""
        b, g = tokens.shape
        q = context.question.expand(b, g, -1)  # (B, G, H)
        # Eq. (2), with the question: the attention LSTM reads h2_{t-1}, the mean region, q and the previous word.
        x1 = torch.cat([state.h2, context.mean.expand(b, g, -1), q, self.answer_embed(tokens)], -1)
        h1, c1 = lstm_cell(self.attention_lstm, x1, state.h1, state.c1)  # (B, G, H)
        # Eq. (3)-(5): attention over the real regions, queried by [h1_t; q].
        alpha = self.attention(context.projected, torch.cat([h1, q], -1), context.mask)  # (B, G, K)
        v_hat = attend(alpha, context.regions)  # (B, G, D)
        # Eq. (6)-(7): the language LSTM and the word scores.
        h2, c2 = lstm_cell(self.language_lstm, torch.cat([v_hat, h1], -1), state.h2, state.c2)  # (B, G, H)
        logits = self.output(dropout_rows(self.dropout, h2, eval_rows))  # (B, G, V)
        return logits, alpha, AnswerState(h1, c1, h2, c2)

    def given(self, question: torch.Tensor) -> AnswerCaptioner:
        """The captioner of `vqacap.models.decoding` that answers these questions (B, T) about their regions."""
        return AnswerCaptioner(self, self.encode_question(question))

    def forward(
        self, regions: torch.Tensor, mask: torch.Tensor, question: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: tokens (B, G, L) or (B, L) = <bos> w_1 .. w_n <eos> <pad>... -> logits (B, G, L-1, V)
        predicting tokens[..., 1:] and attention (B, G, L-1, K), without the G axis for (B, L) tokens."""
        return self.given(question)(regions, mask, tokens)


class AnswerCaptioner:
    """`GenerativeVQA` with its questions bound: the `Captioner` protocol of vqacap.models.decoding, so greedy
    decoding, sampling and beam search answer questions as they caption images."""

    def __init__(self, model: GenerativeVQA, q: torch.Tensor) -> None:
        self.model, self.q = model, q  # q (B, H)

    def start(self, regions: torch.Tensor, mask: torch.Tensor) -> tuple[AnswerContext, AnswerState]:
        return self.model.start(regions, mask, self.q)

    def step(
        self, context: AnswerContext, state: AnswerState, tokens: torch.Tensor, eval_rows: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, AnswerState]:
        return self.model.step(context, state, tokens, eval_rows)

    def __call__(
        self, regions: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return teacher_forcing(self, regions, mask, tokens)

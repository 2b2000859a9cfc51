"""LightningModule for generative VQA (vqacap.models.vqa_generative): answers decoded word by word, scored as a
classifier's answers are.

Everything but the loss and the answering is `VQAModule`'s: the results files, the official accuracy per answer and
question type, grounding, attention maps.

- Answer words: the training answers (`answers`, official normalisation) split on spaces; a decoded answer is its
  words joined by single spaces, so a candidate answer decodes to exactly its string.
- Loss: the ten human answers weighted by their soft scores. A question's candidate answers a with official accuracy
  s_a > 0 (the soft target the classifier learns) are teacher-forced in one pass, and
      loss = - sum_a (s_a / sum_b s_b) log p(a | Q, I),   log p(a | Q, I) = sum_t log p(w_t | w_<t, Q, I)
  averaged over the questions: the expected negative log-likelihood of an answer drawn in proportion to its accuracy,
  so "2" given by 7 humans and "3" by 3 are both learnt, in that ratio. Questions with no candidate answer add nothing.
- Scoring: the decoded string, with its raw human answers, through the official accuracy (`answer_accuracy`), so an
  answer no training question had scores as `evaluate vqa` scores it. Validation decodes greedily (`val_beam_size`),
  testing with `decoding` (a beam by default).
- Attention: the mean over the answer's words of the attention at each word (maps and grounding).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from vqacap.data.vocab import BOS_ID, EOS_ID, PAD_ID, Vocabulary
from vqacap.data.vqa import VQABatch
from vqacap.lightning.common import region_inputs
from vqacap.lightning.vqa import VQAModule
from vqacap.models.decoding import Decoded, DecodingOptions, beam_search, decode


def answer_vocabulary(answers: list[str]) -> Vocabulary:
    """The words of the candidate answers, in order of first use, split on spaces (as `process_answer` joins them)."""
    words = list(dict.fromkeys(w for a in answers for w in a.split()))
    return Vocabulary(words, max_length=max((len(a.split()) for a in answers), default=1))


def answer_tokens(vocab: Vocabulary, answers: list[str]) -> torch.Tensor:
    """(A, L + 2) <bos> words <eos> <pad>... of every candidate answer, L its longest."""
    out = torch.full((len(answers), vocab.max_length + 2), PAD_ID, dtype=torch.long)
    for n, answer in enumerate(answers):
        ids = [BOS_ID, *(vocab.index[w] for w in answer.split()), EOS_ID]
        out[n, : len(ids)] = torch.tensor(ids)
    return out


def answer_attention(decoded: Decoded) -> torch.Tensor:
    """The attention (B, K) behind the best answers (G = 1): the mean over their words; the first step's for an
    answer without words."""
    tokens = decoded.tokens[:, 0]  # (B, T)
    words = (tokens != EOS_ID) & (tokens != PAD_ID)
    words[:, 0] |= ~words.any(1)
    weights = words.unsqueeze(-1).to(decoded.attention.dtype)  # (B, T, 1)
    return (decoded.attention[:, 0] * weights).sum(1) / weights.sum(1)


class GenerativeVQAModule(VQAModule):
    """`decoding` (DecodingOptions fields) answers the test split; `val_beam_size` the validation split."""

    def __init__(self, *args, decoding: dict | None = None, val_beam_size: int = 1, **kwargs) -> None:
        """VQAModule's arguments, and how to decode the answers."""
        super().__init__(*args, **kwargs)
        decoding = {"max_length": self.answer_vocab.max_length, **(decoding or {})}
        self.decoding = DecodingOptions(**decoding)
        self.val_decoding = dataclasses.replace(self.decoding, beam_size=val_beam_size)
        self.register_buffer(
            "answer_tokens", answer_tokens(self.answer_vocab, self.answers), persistent=False
        )

    def answer_output(self) -> dict:
        """A decoder over the words of `self.answers`."""
        self.answer_vocab = answer_vocabulary(self.answers)
        return {"answer_vocab_size": len(self.answer_vocab)}

    def forward(self, batch: VQABatch, opts: DecodingOptions | None = None) -> Decoded:
        """The best answer of each question (G = 1), decoded with `opts` (default: `decoding`)."""
        regions = batch.regions
        answerer = self.net.given(batch.questions)
        return decode(answerer, region_inputs(regions, self.use_spatial), regions.mask, opts or self.decoding)

    def _answer_loss(self, batch: VQABatch) -> torch.Tensor:
        targets = batch.targets  # (B, A) soft scores
        # One row per (question, candidate answer with a non-zero score): about 2 per question on Shapes, where a
        # (B, G) grid padded to the most answered question would teacher-force about 4.
        rows, answers = targets.nonzero(as_tuple=True)  # (N,), (N,)
        if rows.numel() == 0:  # no question of the batch has a candidate answer
            return self.net.output.bias.sum() * 0.0
        weights = targets[rows, answers] / targets.sum(1)[rows]  # s_a / sum_b s_b
        tokens = self.answer_tokens[answers]  # (N, L)
        tokens = tokens[:, : int((tokens != PAD_ID).sum(-1).max())]
        regions = batch.regions
        logits, _ = self.net(
            region_inputs(regions, self.use_spatial)[rows], regions.mask[rows], batch.questions[rows], tokens
        )  # (N, L-1, V)
        target = tokens[:, 1:]
        nll = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=PAD_ID, reduction="none")
        answer_nll = nll.view_as(target).sum(-1)  # (N,), - log p(a | Q, I)
        return (weights * answer_nll).sum() / targets.size(0)

    def training_step(self, batch: VQABatch, batch_idx: int) -> torch.Tensor:
        loss = self._answer_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch.questions.size(0))
        return loss

    def _eval_step(self, batch: VQABatch, split: str) -> list[str]:
        decoded = self(batch, self.val_decoding if split == "val" else self.decoding)
        predictions = self.answer_vocab.decode_batch(decoded.tokens[:, 0])
        if batch.targets is not None:
            size = batch.questions.size(0)
            self.log(f"{split}/loss", self._answer_loss(batch), batch_size=size, sync_dist=True)
            self.accuracy[split].update(
                predictions,
                batch.human_answers,
                batch.question_ids,
                batch.answer_types,
                batch.question_types,
                batch.answer_seen,
            )
        self._update_grounding(batch, split, answer_attention(decoded))
        return predictions

    def _answers(self, batch: VQABatch, prediction: list[str]) -> list[dict]:
        return [{"question_id": q, "answer": a} for q, a in zip(batch.question_ids.tolist(), prediction)]

    def answer_with_attention(self, batch: VQABatch) -> tuple[list[str], torch.Tensor]:
        decoded = self(batch)
        return self.answer_vocab.decode_batch(decoded.tokens[:, 0]), answer_attention(decoded)

    @torch.no_grad()
    def predict_step(self, batch: VQABatch, batch_idx: int) -> list[dict]:
        """Per question `explain`'s record with "question_id" and "answer" (decoded with `decoding`), plus
        "top_answers": the `predict_top_k` answers of a beam that wide with their probabilities, and "labels" when
        the batch names its regions (vqacap.data.pixels)."""
        records = self.explain(batch)
        regions = batch.regions
        width = max(self.predict_top_k, self.decoding.beam_size)
        beams = beam_search(
            self.net.given(batch.questions),
            region_inputs(regions, self.use_spatial),
            regions.mask,
            dataclasses.replace(self.decoding, beam_size=width, length_penalty=0.0),
        ).hypotheses(slice(None, self.predict_top_k))
        for n, record in enumerate(records):
            texts = self.answer_vocab.decode_batch(beams.tokens[n])
            record["top_answers"] = [
                (text, float(score.exp()))
                for text, score in zip(texts, beams.scores[n])
                if score > float("-inf")
            ]
            if getattr(batch, "region_labels", None):
                record["labels"] = batch.region_labels[n]
        return records

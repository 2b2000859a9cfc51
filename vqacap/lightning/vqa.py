"""LightningModule for top-down attention VQA: soft-score BCE training, the official accuracy, results files.

The pure model lives in `vqacap.models.vqa`; this module owns the loss, optimisation, metrics and logging. Testing writes
`<results_dir>/vqa_<split>_results.json` in the official results format [{"question_id", "answer"}] for the data's
`test_split`, annotated or not (test-dev), and, for an annotated split, `vqa_<split>_scores.json` with the accuracy per
answer and question type. To answer any split from a checkpoint:

    python -m vqacap.train experiment=vqa_shapes train=false ckpt_path=<checkpoint> data.test_split=val
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from vqacap.data.vocab import PAD_ID
from vqacap.data.vqa import VQABatch
from vqacap.lightning.common import (
    TaskModule,
    log_grounding,
    region_dim,
    region_inputs,
    write_results,
)
from vqacap.metrics.grounding import GroundingAccuracy
from vqacap.metrics.vqa.seen import SeenAnswerAccuracy
from vqacap.models.vqa import VQAOutput


class VQAModule(TaskModule):
    """`test_split` (from the data's `model_kwargs`) names the results files of testing."""

    task = "VQA"

    def __init__(
        self,
        net: Callable,
        words: list[str],
        answers: list[str],
        answer_types: list[str],
        question_types: list[str],
        feature_dim: int,
        optimizer: Callable,
        scheduler: Callable | None = None,
        use_spatial: bool = False,
        word_embeddings: torch.Tensor | None = None,
        monitor: str = "val/accuracy",
        results_dir: str | None = None,
        test_split: str = "test",
    ) -> None:
        super().__init__()
        # The GloVe matrix initialises the weights, which the checkpoint holds anyway.
        self.save_hyperparameters(logger=False, ignore=["word_embeddings"])
        self.answers = list(answers)
        self.net = net(
            vocab_size=len(words),
            feature_dim=region_dim(feature_dim, use_spatial),
            word_embeddings=word_embeddings,
            **self.answer_output(),
        )
        self.use_spatial = use_spatial
        self.results_dir = results_dir
        self.test_split = test_split
        self.accuracy = torch.nn.ModuleDict(
            {split: SeenAnswerAccuracy(answer_types, question_types) for split in ("val", "test")}
        )
        self.grounding = torch.nn.ModuleDict({split: GroundingAccuracy() for split in ("val", "test")})
        self._results: list[dict] = []

    def answer_output(self) -> dict:
        """The model's answer-side arguments: here a classifier over `self.answers` (a subclass builds another kind)."""
        return {"num_answers": len(self.answers)}

    def forward(self, batch: VQABatch) -> VQAOutput:
        regions = batch.regions
        return self.net(region_inputs(regions, self.use_spatial), regions.mask, batch.questions)

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # Binary cross-entropy against the soft scores, summed over the A answers, averaged over the B questions.
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / logits.size(0)

    # -- training -------------------------------------------------------------------------------------------------
    def training_step(self, batch: VQABatch, batch_idx: int) -> torch.Tensor:
        logits = self(batch).logits  # (B, A)
        loss = self._loss(logits, batch.targets)
        # The soft score of the top answer is its official accuracy.
        accuracy = batch.targets.gather(1, logits.argmax(dim=1, keepdim=True)).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=logits.size(0))
        self.log("train/accuracy", 100 * accuracy, prog_bar=True, batch_size=logits.size(0))
        return loss

    # -- evaluation -----------------------------------------------------------------------------------------------
    def _eval_step(self, batch: VQABatch, split: str) -> torch.Tensor:
        output = self(batch)
        logits = output.logits  # (B, A)
        prediction = logits.argmax(dim=1)  # (B,)
        if batch.targets is not None:
            self.log(
                f"{split}/loss", self._loss(logits, batch.targets), batch_size=logits.size(0), sync_dist=True
            )
            self.accuracy[split].update(
                prediction,
                batch.gt_answers,
                batch.question_ids,
                batch.answer_types,
                batch.question_types,
                batch.answer_seen,
            )
        self._update_grounding(batch, split, output.attention)
        return prediction

    def validation_step(self, batch: VQABatch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: VQABatch, batch_idx: int) -> None:
        prediction = self._eval_step(batch, "test")
        self._results += self._answers(batch, prediction)

    predict_top_k = 5  # answers with their scores per question in `predict_step`'s records

    def predict_step(self, batch: VQABatch, batch_idx: int) -> list[dict]:
        """Per question {"question_id", "answer"} as the results files hold, plus `explain`'s record and "top_answers":
        the `predict_top_k` answers with their scores (sigmoid of the logits, as trained with binary cross-entropy),
        and "labels" (k names) when the batch names its regions (vqacap.data.pixels)."""
        scores = torch.sigmoid(self(batch).logits)  # (B, A)
        top = scores.topk(min(self.predict_top_k, scores.size(1)), dim=1)
        records = self._answers(batch, scores.argmax(dim=1))
        for n, (record, item) in enumerate(zip(records, self.explain(batch))):
            record.update(item)
            record["top_answers"] = [
                (self.answers[i], s) for i, s in zip(top.indices[n].tolist(), top.values[n].tolist())
            ]
            if getattr(batch, "region_labels", None):
                record["labels"] = batch.region_labels[n]
        return records

    def _answers(self, batch: VQABatch, prediction: torch.Tensor) -> list[dict]:
        return [
            {"question_id": q, "answer": self.answers[p]}
            for q, p in zip(batch.question_ids.tolist(), prediction.tolist())
        ]

    def _log_accuracy(self, split: str) -> dict | None:
        metric = self.accuracy[split]
        if not metric.update_called:  # an unannotated split
            return None
        scores = metric.compute()  # synchronised across ranks, so every rank logs the same values
        metric.reset()
        self.log(f"{split}/accuracy", scores["overall"].item(), prog_bar=True)
        for name, value in scores["perAnswerType"].items():
            self.log(f"{split}/accuracy_{name.replace('/', '_')}", value.item())
        if "held_out" in scores["perAnswerSeen"]:  # data that holds answers out of training (Shapes)
            for name, value in scores["perAnswerSeen"].items():
                self.log(f"{split}/accuracy_{name}_answers", value.item())
        return scores

    def on_validation_epoch_end(self) -> None:
        self._log_accuracy("val")
        log_grounding(self, "val")

    def on_test_epoch_end(self) -> None:
        scores = self._log_accuracy("test")
        log_grounding(self, "test")
        results, self._results = self._results, []
        if not self.results_dir:
            return
        folder = Path(self.results_dir)
        write_results(self, results, "question_id", folder / f"vqa_{self.test_split}_results.json")
        if scores is not None and self.trainer.is_global_zero:
            as_floats = json.dumps(scores, default=float, indent=1)
            (folder / f"vqa_{self.test_split}_scores.json").write_text(as_floats)

    # -- attention: grounding accuracy, attention maps -------------------------------------------------------------
    def _update_grounding(self, batch: VQABatch, split: str, attention: torch.Tensor) -> None:
        """Grounding of the questions about one object (Shapes `target_box`); a no-op for data without such boxes."""
        if batch.target_boxes is None:
            return
        self.grounding[split].update(
            attention.unsqueeze(1),  # (B, 1, K): one grounded item per question
            batch.regions.boxes,
            batch.target_boxes.unsqueeze(1),  # (B, 1, 4)
            batch.has_target.unsqueeze(1),  # (B, 1)
            batch.question_ids,
        )

    def answer_with_attention(self, batch: VQABatch) -> tuple[list[str], torch.Tensor]:
        """The answer to each question and the attention (B, K) behind it."""
        output = self(batch)
        return [self.answers[i] for i in output.logits.argmax(dim=1).tolist()], output.attention

    @torch.no_grad()
    def explain(self, batch: VQABatch) -> list[dict]:
        """What an attention map of each question shows: the question, the predicted and human answers, the attention.

        Returns, per question, {"id", "question_id", "image_id", "image_size" (w, h), "boxes" (k, 4), "question",
        "answer", "gt_answer" (the human answers' most frequent candidate; None if none is one), "attention" (k,)} on
        the CPU, k the image's real regions.
        """
        batch = batch.to(self.device)
        training = self.training
        self.eval()
        answers, attention = self.answer_with_attention(batch)
        self.train(training)
        words, regions, items = self.hparams.words, batch.regions, []
        for b, question_id in enumerate(batch.question_ids.tolist()):
            humans = [] if batch.gt_answers is None else [i for i in batch.gt_answers[b].tolist() if i >= 0]
            real = regions.mask[b]
            items.append({
                "id": question_id,
                "question_id": question_id,
                "image_id": int(batch.image_ids[b]),
                "image_size": tuple(int(x) for x in regions.image_size[b].tolist()),
                "boxes": regions.boxes[b, real].cpu(),
                "question": " ".join(words[i] for i in batch.questions[b].tolist() if i != PAD_ID),
                "answer": answers[b],
                "gt_answer": self.answers[max(set(humans), key=humans.count)] if humans else None,
                "attention": attention[b, real].cpu(),
            })  # fmt: skip
        return items

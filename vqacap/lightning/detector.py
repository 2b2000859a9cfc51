"""LightningModule for the bottom-up detector: the summed Faster R-CNN + attribute losses, vg_eval mAP, detections to show.

The pure model lives in `vqacap.models.detector`; the metric in `vqacap.metrics.detection`; checkpoint hooks and the
optimiser wiring are `TaskModule`'s (vqacap.lightning.common), as for the region tasks. vqacap.lightning.loading
rebuilds the model from a checkpoint of this module without unpickling anything (extraction and benchmarks use it).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from vqacap.checkpoints import plain
from vqacap.data.detection import DetectionBatch
from vqacap.lightning.common import TaskModule
from vqacap.metrics.detection import DetectionEvaluator, select_detections
from vqacap.models.detector import BottomUpDetector, DetectorOptions

# What a checkpoint saved before these options existed was trained and tested with.
LEGACY_OPTIONS = {"pooler": "roi_align", "box_loss_beta": 1 / 9, "bias_lr_mult": 1.0, "rpn_min_size": 0.0}
LOSSES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_attribute")


class DetectorModule(TaskModule):
    """The bottom-up detector's training (summed losses), evaluation (vg_eval AP) and optimisation (bias groups)."""

    task = "detector"

    def __init__(
        self,
        classes: list[str],
        attributes: list[str],
        optimizer: Callable,
        detector: dict | None = None,
        scheduler: Callable | None = None,
        scheduler_interval: str = "step",
        monitor: str = "val/mAP",
        results_dir: str | None = None,
    ) -> None:
        """detector: DetectorOptions fields; optimizer/scheduler: `_partial_` Hydra nodes called with the parameters
        (scheduler stepped every `scheduler_interval`: "step" for the paper's iteration schedule, or "epoch")."""
        super().__init__()
        options = DetectorOptions(**(plain(detector) or {}))
        self.save_hyperparameters(
            {"classes": list(classes), "attributes": list(attributes), "detector": _options_dict(options)},
            logger=False,
        )
        self.net = BottomUpDetector(list(classes), list(attributes), options)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scheduler_interval = scheduler_interval
        self.monitor = monitor
        self.results_dir = results_dir
        self.evaluators = torch.nn.ModuleDict({
            split: DetectionEvaluator(num_classes=len(classes), num_attributes=len(attributes))
            for split in ("val", "test")
        })  # fmt: skip

    # -- training -------------------------------------------------------------------------------------------------
    def training_step(self, batch: DetectionBatch, batch_idx: int) -> torch.Tensor:
        losses = self.net(batch.images, batch.targets)
        # RPN objectness + RPN box + classifier + box regression + 0.5 x attribute (loss_weight of each train.prototxt
        # loss layer; the attribute weight is applied in the model)
        loss = sum(losses.values())
        size = len(batch.images)
        for name in LOSSES:
            self.log(f"train/{name}", losses[name], batch_size=size)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        return loss

    # -- evaluation: vg_eval object and attribute AP ---------------------------------------------------------------
    def _eval_step(self, batch: DetectionBatch, split: str) -> None:
        gt_boxes = [t["boxes"] for t in batch.targets]
        # attribute AP is scored on the ground-truth boxes (test_net_with_gt_boxes), object AP on the proposals
        on_gt = self.net.regions(batch.images, boxes=gt_boxes)
        for r, g, t in zip(self.net.regions(batch.images), on_gt, batch.targets):
            boxes, scores, labels = select_detections(r.class_boxes, r.class_probs)
            self.evaluators[split].update(
                t["boxes"], t["labels"], boxes=boxes, scores=scores, labels=labels,
                gt_attributes=t["attributes"], attribute_scores=g.attribute_probs,
            )  # fmt: skip

    def validation_step(self, batch: DetectionBatch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: DetectionBatch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _log_scores(self, split: str) -> dict:
        evaluator = self.evaluators[split]
        scores = evaluator.compute()
        evaluator.reset()
        for name in ("mAP", "weighted_mAP", "attribute_mAP", "attribute_weighted_mAP"):
            if name in scores:
                self.log(f"{split}/{name}", float(scores[name]), prog_bar=name == "mAP", sync_dist=False)
        return scores

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_end(self) -> None:
        scores = self._log_scores("test")
        if self.results_dir and self.trainer.is_global_zero and "AP" in scores:
            table = {
                "classes": {c: {"AP": ap, "npos": n} for c, ap, n in zip(self.net.classes[1:], scores["AP"], scores["npos"])},
                "attributes": {
                    a: {"AP": ap, "npos": n}
                    for a, ap, n in zip(self.net.attributes[1:], scores.get("attribute_AP", []), scores.get("attribute_npos", []))
                },
            }  # fmt: skip
            path = Path(self.results_dir) / "test_ap.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(table, indent=1))

    # -- optimisation: the solver of train.prototxt, SGD with momentum by default (conf/model/optimizer) ------------------
    def optimizer_nodes(self) -> tuple[Callable, Callable | None]:
        return self.optimizer, self.scheduler

    def make_optimizer(self, optimizer: Callable) -> torch.optim.Optimizer:
        # No fused default: the detector's solver is kept as its config gives it.
        trained = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        weights = [p for n, p in trained if not n.endswith(".bias")]
        biases = [p for n, p in trained if n.endswith(".bias")]
        opt = optimizer(params=[{"params": weights}, {"params": biases}])
        # Every bias learns bias_lr_mult times faster (train.prototxt: `param { lr_mult: 2 }` on each bias), its
        # decay unchanged (no decay_mult there). A scheduler made next starts each group from its own rate.
        opt.param_groups[1]["lr"] *= self.net.options.bias_lr_mult
        return opt

    def make_scheduler(self, scheduler: Callable, optimizer: torch.optim.Optimizer):
        # A schedule over the whole run (OneCycleLR) is told its length, which depends on the data and the trainer.
        takes_total = "total_steps" in inspect.signature(scheduler).parameters
        extra = {"total_steps": int(self.trainer.estimated_stepping_batches)} if takes_total else {}
        max_lr = (getattr(scheduler, "keywords", None) or {}).get("max_lr")
        if isinstance(max_lr, (int, float)):  # OneCycleLR sets every group to max_lr: the biases' is larger
            extra["max_lr"] = [max_lr, max_lr * self.net.options.bias_lr_mult]
        return scheduler(optimizer=optimizer, **extra)


def _options_dict(options: DetectorOptions) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(options).items()}

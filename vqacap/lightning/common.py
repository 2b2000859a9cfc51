"""Pieces every LightningModule uses (captioning, VQA, the detector): their base class with its checkpoint hooks and
optimiser wiring, region inputs, gathering results across ranks."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.distributed as dist

from vqacap.checkpoints import check_fits, plain
from vqacap.data.store import SPATIAL_DIM, Regions


class TaskModule(pl.LightningModule):
    """Base of the captioning, VQA and detector modules.

    Checkpoints hold plain hyper-parameters (read without running code, see vqacap.checkpoints), and a checkpoint of
    another task, vocabulary or size is refused in one line naming the file. The optimiser and scheduler are
    `_partial_` Hydra nodes (`optimizer_nodes`) that `configure_optimizers` calls with the parameters and the optimiser;
    a module with its own parameter groups or schedule length overrides `make_optimizer` or `make_scheduler`.
    """

    task: str  # "captioning", "VQA" or "detector"; `vqacap.checkpoints.task_of` names a checkpoint's task
    scheduler_interval: str = "epoch"  # when the scheduler steps: "epoch" or "step"

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if "hyper_parameters" in checkpoint:
            checkpoint["hyper_parameters"] = plain(checkpoint["hyper_parameters"])

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_fits(self, checkpoint, self.trainer.ckpt_path)

    # -- optimisation --------------------------------------------------------------------------------------------------
    def optimizer_nodes(self) -> tuple[Callable, Callable | None]:
        """The optimiser and scheduler nodes (`_partial_`; the scheduler None for a constant rate)."""
        return self.hparams.optimizer, self.hparams.get("scheduler")

    def make_optimizer(self, optimizer: Callable) -> torch.optim.Optimizer:
        """`optimizer` over the trained parameters, with the fused CPU step when the config leaves it open."""
        params = [p for p in self.parameters() if p.requires_grad]
        trainer = getattr(self, "_trainer", None)
        mixed = trainer is not None and "mixed" in str(trainer.precision)
        return optimizer(params=params, **({} if mixed else fused_default(optimizer, params)))

    def make_scheduler(self, scheduler: Callable, optimizer: torch.optim.Optimizer):
        return scheduler(optimizer=optimizer)

    def configure_optimizers(self):
        optimizer, scheduler = self.optimizer_nodes()
        opt = self.make_optimizer(optimizer)
        if scheduler is None:
            return opt
        config = {"scheduler": self.make_scheduler(scheduler, opt), "interval": self.scheduler_interval}
        return {"optimizer": opt, "lr_scheduler": config}


def region_dim(feature_dim: int, use_spatial: bool) -> int:
    """The width of what `region_inputs` gives the model: D, or D + 6 with the box geometry. Every module builds its
    net with it, so the nets read region vectors of a given width and know nothing of box geometry."""
    return feature_dim + (SPATIAL_DIM if use_spatial else 0)


def region_inputs(regions: Regions, use_spatial: bool) -> torch.Tensor:
    """Region features (B, K, D), with the normalised box geometry appended (B, K, D + 6) when use_spatial."""
    if use_spatial:
        return torch.cat([regions.features, regions.spatial()], dim=-1)
    return regions.features


def fused_default(optimizer: Callable, params: list[torch.Tensor]) -> dict:
    """{"fused": True} for parameters on the CPU when the optimiser has a fused implementation and the config leaves
    the choice open.

    A fused step (torch.optim.Adam, AdamW, SGD, Adagrad) updates each parameter in one vectorised pass instead of one
    pass per arithmetic operation: the same update rule, several times faster on the CPU (README, Performance). On a
    GPU PyTorch's default (foreach) is kept: Lightning refuses gradient clipping with a fused optimiser under mixed
    precision, which the GPU recipes use, and the caller skips this under mixed precision on the CPU too. `fused` or `foreach` set in the config (or on the command line,
    `+model.optimizer.fused=false`) is kept as given.
    """
    func = getattr(optimizer, "func", optimizer)
    given = getattr(optimizer, "keywords", {}) or {}
    if "fused" in given or "foreach" in given or not params:
        return {}
    try:
        accepts = "fused" in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return {}
    supported = all(p.device.type == "cpu" and p.is_floating_point() for p in params)
    return {"fused": True} if accepts and supported else {}


def log_grounding(module, split: str) -> None:
    """Log `<split>/grounding` from the module's `grounding[split]` metric (GroundingAccuracy), then reset it."""
    accuracy = module.grounding[split].compute_and_reset()
    if accuracy is not None:  # data with scenes or target boxes, and something to ground
        module.log(f"{split}/grounding", accuracy)


def write_results(module: pl.LightningModule, results: list[dict], key: str, path: Path) -> None:
    """Gather every rank's result records and write them once (global rank 0) as a JSON list sorted by `key`, one
    record per `key`: the distributed sampler may repeat examples."""
    results = gather_objects(results)
    if module.trainer.is_global_zero:
        unique = {r[key]: r for r in results}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(sorted(unique.values(), key=lambda r: r[key])))


def gather_objects(items: list) -> list:
    """Concatenate per-rank Python lists on every rank (identity when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, items)
    return [x for part in out for x in part]

"""Pieces both LightningModules use: region inputs, optimiser wiring, gathering results across ranks."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from vqacap.data.store import Regions


def region_inputs(regions: Regions, use_spatial: bool) -> torch.Tensor:
    """Region features (B, K, D), with the normalised box geometry appended (B, K, D + 6) when use_spatial."""
    if use_spatial:
        return torch.cat([regions.features, regions.spatial()], dim=-1)
    return regions.features


def configure_optimizers(module, optimizer: Callable, scheduler: Callable | None, monitor: str | None = None):
    """Optimiser and scheduler are `_partial_` Hydra nodes; the module calls them with its parameters."""
    opt = optimizer(params=[p for p in module.parameters() if p.requires_grad])
    if scheduler is None:
        return opt
    config = {"scheduler": scheduler(optimizer=opt), "interval": "epoch"}
    if monitor:
        config["monitor"] = monitor
    return {"optimizer": opt, "lr_scheduler": config}


def gather_objects(items: list) -> list:
    """Concatenate per-rank Python lists on every rank (identity when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, items)
    return [x for part in out for x in part]

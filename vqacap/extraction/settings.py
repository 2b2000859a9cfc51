"""The trainer settings of an extraction (`vqacap extract --devices N --num-nodes M --accelerator --precision`), kept
apart from the rest of vqacap.extraction so that the command can add its options without importing Lightning."""

from __future__ import annotations

import argparse
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

PRECISIONS = ("32-true", "tf32", "bf16-mixed", "16-mixed")


def add_trainer_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("devices (Lightning's Trainer.predict; one process per device)")
    group.add_argument(
        "--devices", type=int, metavar="N", help="devices per node (default: the one of --device)"
    )
    group.add_argument("--num-nodes", type=int, default=1, metavar="M", help="nodes (SLURM or torchrun)")
    group.add_argument("--accelerator", help="cpu, gpu, ... (default: the kind of --device)")
    group.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="32-true",
        help="fp32, fp32 with TF32 matrix units, or bf16/fp16 autocast",
    )
    group.add_argument(
        "--workers", type=int, default=2, help="DataLoader processes decoding images, per device"
    )


def trainer_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "workers": args.workers,
        "accelerator": args.accelerator,
        "devices": args.devices,
        "num_nodes": args.num_nodes,
        "precision": args.precision,
    }


def accelerator_for(device: str, accelerator: str | None, devices: int | None) -> tuple[str, int | list[int]]:
    """(accelerator, devices) of `vqacap extract`'s --device (cpu, cuda, cuda:N) unless --accelerator/--devices say."""
    kind, _, index = str(device).partition(":")
    chosen = accelerator or ("gpu" if kind == "cuda" else kind)
    if devices is not None:
        return chosen, devices
    return chosen, [int(index)] if index and chosen == "gpu" else 1


def trainer_settings(
    accelerator: str, devices: int | str | list[int], num_nodes: int, precision: str
) -> dict[str, Any]:
    """Trainer arguments for a prediction-only run (no logger, checkpoints or distributed sampler)."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "tf32":  # fp32 tensors, TF32 matrix units (Ampere or newer); a no-op on the CPU
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        precision = "32-true"
    several = num_nodes > 1 or (devices if isinstance(devices, int) else len(devices)) > 1
    return {
        "accelerator": accelerator,
        "devices": devices,
        "num_nodes": num_nodes,
        "precision": precision,
        "strategy": "ddp" if several else "auto",
        "logger": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "use_distributed_sampler": False,  # the images are dealt by id (vqacap.extraction.data)
    }


@contextmanager
def quiet_lightning() -> Iterator[None]:
    """No accelerator banners or hints around a command's one-line report; the logger levels and warning filters are
    restored afterwards, so a process that goes on (a test session, a notebook) keeps its own."""
    names = ("pytorch_lightning", "lightning.pytorch", "lightning.fabric", "lightning_fabric")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    quiet = (
        ".*does not have many workers.*",
        ".*LeafSpec.*",
        ".*across ranks is zero.*",
        ".*infer the batch indices.*",
    )
    with warnings.catch_warnings():
        for message in quiet:
            warnings.filterwarnings("ignore", message=message)
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def is_global_zero() -> bool:
    """True in the one process of a run that reports (rank 0 of a distributed one)."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def all_gathered(value: Any) -> list[Any]:
    """`value` of every process of a distributed run, in rank order; [value] in a one-process run."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    found: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(found, value)
    return found

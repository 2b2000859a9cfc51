"""Finding and loading checkpoints of earlier runs (e.g. the cross-entropy model that self-critical training starts from)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch


def find_checkpoint(spec: str, log_dir: str | os.PathLike, task_name: str = "train") -> Path:
    """A checkpoint path, or `latest:<experiment>`: the best checkpoint of that experiment's newest finished run.

    Finished runs are those with a test_metrics.json, which records the checkpoint that was tested.
    """
    if not spec.startswith("latest:"):
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint not found")
        return path
    experiment = spec.split(":", 1)[1]
    runs = Path(log_dir) / task_name / "runs" / experiment
    for metrics in sorted(runs.glob("*/test_metrics.json"), reverse=True):
        ckpt = json.loads(metrics.read_text()).get("checkpoint")
        if ckpt and Path(ckpt).is_file():
            return Path(ckpt)
    raise FileNotFoundError(
        f"{runs}: no finished run of experiment {experiment!r} with a checkpoint (train it first: "
        f"make train ARGS=experiment={experiment})"
    )


def load_weights(module: torch.nn.Module, path: str | os.PathLike) -> None:
    """Load a Lightning checkpoint's weights into `module` (the optimiser state is not restored)."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    try:
        module.load_state_dict(state["state_dict"])
    except (KeyError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"{path}: checkpoint does not fit this model ({first})") from None

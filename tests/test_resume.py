"""Exact resume (vqacap/callbacks/checkpoint.py, the DataModule's order in vqacap/data/base.py, vqacap/train.py): a real
training subprocess (the captioner, the detector) killed mid-epoch and restarted as a requeued SLURM job resumes from its
last.ckpt and ends with the weights and metrics of an uninterrupted run; a checkpoint write that dies half-way
(vqacap/checkpoints.py) leaves the previous last.ckpt whole."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins import TorchCheckpointIO
from torch.utils.data import DataLoader

from tests.conftest import TINY_CAPTIONER, TINY_OVERRIDES, tiny_detector
from tests.detection_fixture import write_detection_dataset
from vqacap.callbacks.checkpoint import LastCheckpoint, rng_states, set_rng_states
from vqacap.checkpoints import AtomicCheckpointIO
from vqacap.data.base import ResumableSampler
from vqacap.train import _resume_path

REPO = Path(__file__).resolve().parent.parent
STEPS_PER_EPOCH = 15  # 60 training images, batches of 4
KILL_AT_STEP = 22  # in the second epoch, 2 steps after the mid-epoch last.ckpt of step 20
CAPTIONER = [
    *TINY_OVERRIDES, *TINY_CAPTIONER, "experiment=caption_shapes", "model.optimizer.lr=0.01",
    "callbacks.last_checkpoint.every_n_train_steps=5", "callbacks.attention_maps=null",
]  # fmt: skip
DETECTOR_STEPS_PER_EPOCH = 8  # 16 training images, batches of 2
DETECTOR_KILL_AT_STEP = 13  # in the second epoch, a step after the last.ckpt of step 12, half-way through it
DETECTOR = [
    "experiment=detector_shapes", "data=vg", "data.batch_size=2", "data.eval_batch_size=4", "data.num_workers=0",
    "data.persistent_workers=false", "logger=csv", "callbacks.last_checkpoint.every_n_train_steps=4",
    "callbacks.detection_images=null", *tiny_detector(pool_size=6, rpn_post_nms_top_n_test=20),
]  # fmt: skip


class StallAt(pl.Callback):
    """Runs inside the training subprocess: once `step` optimiser steps are done (their checkpoints written), writes
    `marker` and sleeps, so that the test kills the process at a known point in the middle of an epoch."""

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, marker

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            Path(self.marker).write_text(str(trainer.global_step))
            time.sleep(600)


def _train(
    data_root: Path, run_dir: Path, *overrides: str, env: dict | None = None, task: list[str] = CAPTIONER
) -> subprocess.Popen:
    args = [
        *task, f"paths.data_dir={data_root}", f"hydra.run.dir={run_dir}", "trainer.max_epochs=2",
        "trainer.deterministic=true", "+trainer.enable_progress_bar=false", *overrides,
    ]  # fmt: skip
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        "WANDB_MODE": "offline",
        **(env or {}),
    }
    log = (run_dir.parent / f"{run_dir.name}.log").open("w")
    command = [sys.executable, "-m", "vqacap.train", *args]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=log)


def _finish(process: subprocess.Popen, run_dir: Path) -> None:
    assert process.wait(timeout=300) == 0, (run_dir.parent / f"{run_dir.name}.log").read_text()[-3000:]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _kill_at(step: int, run_dir: Path, marker: Path, start: Callable[..., subprocess.Popen]) -> None:
    """Start a run with `start(*overrides)` that stalls once `step` optimiser steps are done, and SIGKILL it there."""
    killed = start(
        "+callbacks.stall._target_=tests.test_resume.StallAt", f"+callbacks.stall.step={step}",
        f"+callbacks.stall.marker={marker}",
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and killed.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), (run_dir.parent / f"{run_dir.name}.log").read_text()[-3000:]
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(timeout=60) == -signal.SIGKILL
    finally:
        killed.kill()


def _resume_and_compare(straight_dir: Path, killed_dir: Path, start: Callable[..., subprocess.Popen]) -> dict:
    """Restart the killed run as SLURM restarts a requeued job (same command and run folder, SLURM_RESTART_COUNT
    set) and check that it ends with the finished straight run's weights and test metrics; returns the metrics."""
    last = killed_dir / "checkpoints" / "last.ckpt"
    _finish(start(env={"SLURM_RESTART_COUNT": "1"}), killed_dir)
    assert (
        f"Restoring states from the checkpoint path at {last}"
        in (killed_dir.parent / f"{killed_dir.name}.log").read_text()
    )
    expected, resumed = _load(straight_dir / "checkpoints" / "last.ckpt"), _load(last)
    assert expected["global_step"] == resumed["global_step"]
    assert expected["state_dict"].keys() == resumed["state_dict"].keys()
    for name, weight in expected["state_dict"].items():
        assert torch.equal(weight, resumed["state_dict"][name]), name
    metrics = [
        json.loads((d / "test_metrics.json").read_text())["metrics"] for d in (straight_dir, killed_dir)
    ]
    assert metrics[0] == metrics[1]
    return metrics[0]


def test_a_run_killed_mid_epoch_and_resumed_ends_like_an_uninterrupted_run(make_cfg, tmp_path, data_root):
    datamodule = instantiate(make_cfg("experiment=caption_shapes").data, _recursive_=False)
    datamodule.prepare_data()  # generate the tiny Shapes once, before two processes would both do it
    straight_dir, killed_dir, marker = tmp_path / "straight", tmp_path / "killed", tmp_path / "stalled"
    straight = _train(data_root, straight_dir)
    _kill_at(KILL_AT_STEP, killed_dir, marker, partial(_train, data_root, killed_dir))

    saved = _load(killed_dir / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == 20 and saved["epoch"] == 1  # mid-epoch: 5 of the second epoch's 15 batches
    _finish(straight, straight_dir)
    metrics = _resume_and_compare(straight_dir, killed_dir, partial(_train, data_root, killed_dir))
    assert _load(straight_dir / "checkpoints" / "last.ckpt")["global_step"] == 2 * STEPS_PER_EPOCH
    assert metrics["test/CIDEr"] > 0


def test_a_detector_run_killed_mid_epoch_and_resumed_ends_like_an_uninterrupted_run(tmp_path, data_root):
    detection = write_detection_dataset(tmp_path / "detection", {"train": 16, "val": 4, "test": 4})
    straight_dir, killed_dir, marker = tmp_path / "straight", tmp_path / "killed", tmp_path / "stalled"
    task = [*DETECTOR, f"data.data_dir={detection}"]
    straight = _train(data_root, straight_dir, task=task)
    _kill_at(DETECTOR_KILL_AT_STEP, killed_dir, marker, partial(_train, data_root, killed_dir, task=task))

    saved = _load(killed_dir / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == 12 and saved["epoch"] == 1  # half of the second epoch's 8 batches
    _finish(straight, straight_dir)
    metrics = _resume_and_compare(straight_dir, killed_dir, partial(_train, data_root, killed_dir, task=task))
    assert _load(straight_dir / "checkpoints" / "last.ckpt")["global_step"] == 2 * DETECTOR_STEPS_PER_EPOCH
    assert 0.0 <= metrics["test/mAP"] <= 1.0


@pytest.mark.parametrize(
    ("ckpt_path", "restarts", "hpc", "expected"),
    [
        ("a.ckpt", "1", False, "a.ckpt"),
        (None, None, False, None),
        (None, "2", False, "last"),
        (None, "1", True, None),
    ],
)
def test_a_requeued_slurm_job_resumes_from_its_last_checkpoint(
    make_cfg, tmp_path, monkeypatch, ckpt_path, restarts, hpc, expected
):
    cfg = make_cfg(f"ckpt_path={ckpt_path}" if ckpt_path else "ckpt_path=null")
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    if restarts:
        monkeypatch.setenv("SLURM_RESTART_COUNT", restarts)
    if hpc:  # Lightning's own requeue checkpoint: Lightning resumes from it when ckpt_path is None
        (tmp_path / "run" / "hpc_ckpt_1.ckpt").touch()
    assert _resume_path(cfg) == expected


# -- atomic checkpoint files ----------------------------------------------------------------------------------------


class TinyRegression(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(torch.randn(16, 4), batch_size=4)


class Killed(Exception):
    pass


def half_written(checkpoint: dict, path) -> None:
    """What a process killed while writing leaves: the first half of the file."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    Path(path).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    raise Killed("killed while writing a checkpoint")


class DiesWhileWriting(AtomicCheckpointIO):
    """The `fail_at`-th checkpoint write stops half-way through the file."""

    def __init__(self, fail_at: int) -> None:
        self.fail_at, self.writes = fail_at, 0

    def write(self, checkpoint, path) -> None:
        self.writes += 1
        if self.writes < self.fail_at:
            return super().write(checkpoint, path)
        half_written(checkpoint, path)


class LightningDiesWhileWriting(TorchCheckpointIO):
    """Lightning's own writer, stopped half-way through its `fail_at`-th file in the same way."""

    def __init__(self, fail_at: int) -> None:
        self.fail_at, self.writes = fail_at, 0

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        self.writes += 1
        if self.writes < self.fail_at:
            return super().save_checkpoint(checkpoint, path, storage_options)
        half_written(checkpoint, path)


def _fit_until_a_write_dies(checkpoint: pl.Callback, plugin, tmp_path: Path) -> Path:
    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_epochs=1, callbacks=[checkpoint], plugins=[plugin],
        logger=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    with pytest.raises(Killed):
        trainer.fit(TinyRegression())
    return tmp_path / "last.ckpt"


def test_a_write_dying_half_way_leaves_the_previous_last_checkpoint_whole(tmp_path):
    checkpoint = LastCheckpoint(dirpath=tmp_path, every_n_train_steps=1)
    last = _fit_until_a_write_dies(checkpoint, DiesWhileWriting(fail_at=3), tmp_path)
    assert _load(last)["global_step"] == 2  # the third write (step 3) died; the second is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "last.ckpt.partial"]
    # The next save replaces the stale half file.
    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_epochs=1, callbacks=[LastCheckpoint(dirpath=tmp_path)],
        plugins=[AtomicCheckpointIO()], logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False,  # no ModelCheckpoint: LastCheckpoint writes the only file
    )  # fmt: skip
    trainer.fit(TinyRegression())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert _load(last)["global_step"] == 4


def test_lightnings_own_checkpoint_is_corrupted_by_the_same_failure(tmp_path):
    # The hazard the atomic write removes: Lightning writes onto the final name when its temporary file is elsewhere.
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_top_k=0, save_last=True, every_n_train_steps=1)
    last = _fit_until_a_write_dies(checkpoint, LightningDiesWhileWriting(fail_at=3), tmp_path)
    with pytest.raises(RuntimeError):
        _load(last)


# -- the pieces ---------------------------------------------------------------------------------------------------


def test_training_order_depends_on_seed_and_epoch_only():
    def order(seed: int, epoch: int) -> list[int]:
        sampler = ResumableSampler(range(20), num_replicas=1, rank=0, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(1, 0) == order(1, 0) and order(1, 0) != order(1, 1) and order(1, 0) != order(2, 0)
    assert sorted(order(1, 3)) == list(range(20))


def test_sampler_start_skips_the_consumed_samples_of_one_pass_only():
    sampler = ResumableSampler(range(10), num_replicas=2, rank=1, seed=0)  # this rank's shard: 5 samples
    sampler.set_epoch(4)
    full = list(sampler)
    sampler.start = 2
    assert list(sampler) == full[2:] and list(sampler) == full and len(sampler) == 5


def test_random_states_survive_a_weights_only_checkpoint():
    buffer = io.BytesIO()
    torch.save(rng_states(), buffer)
    draws = torch.rand(3), float(torch.randn(1))
    buffer.seek(0)
    set_rng_states(torch.load(buffer, weights_only=True))
    assert torch.equal(torch.rand(3), draws[0]) and float(torch.randn(1)) == draws[1]


def test_the_datamodule_continues_its_order_from_a_checkpoints_position(make_cfg):
    def datamodule():
        dm = instantiate(make_cfg("experiment=caption_shapes").data, _recursive_=False)
        dm.prepare_data()
        dm.trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
        return dm

    straight = datamodule()
    loader = straight.train_dataloader()
    loader.sampler.set_epoch(1)  # as Lightning does at the start of each epoch
    order = [batch.image_ids.tolist() for batch in loader]
    straight.trainer.training = True
    for batch in order[:3]:  # three training steps of epoch 1
        straight.on_before_batch_transfer(batch, 0)
    position = straight.state_dict()
    assert position == {"epoch": 1, "batches": 3}

    resumed = datamodule()
    resumed.load_state_dict(position)
    loader = resumed.train_dataloader()
    loader.sampler.set_epoch(1)
    assert [batch.image_ids.tolist() for batch in loader] == order[3:]
    loader.sampler.set_epoch(2)  # the skip belongs to the interrupted epoch only
    assert len(list(loader)) == len(order)

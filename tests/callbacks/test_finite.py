"""StopOnNonFinite (vqacap/callbacks/finite.py) in real training runs composed from the real configs: a diverging run
stops with one line naming the step, and leaves no checkpoint with non-finite weights."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers.configs import TINY_CAPTIONER
from vqacap.callbacks import NonFiniteError, StopOnNonFinite
from vqacap.train import run


def _checkpoints_are_finite(run_dir) -> list[str]:
    names = []
    for path in sorted(run_dir.rglob("*.ckpt")):
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()), path
        names.append(path.name)
    return names


def test_an_overflowing_learning_rate_stops_the_run_at_the_step_it_diverges(make_cfg, tmp_path):
    # Adam moves each weight by about lr per step: 1e10 leaves these tiny models finite (loss ~1e11, garbage but
    # finite), 1e38 (float32 tops out at 3.4e38) overflows within a few steps.
    cfg = make_cfg(
        "experiment=caption_shapes",
        "model.optimizer.lr=1e38",
        "callbacks.attention_maps=null",
        *TINY_CAPTIONER,
    )
    with pytest.raises(NonFiniteError, match=r"^training stopped at step [1-9]\d* \(epoch 0\): ") as err:
        run(cfg)
    assert "diverged: lower model.optimizer.lr" in str(err.value) and "\n" not in str(err.value)
    _checkpoints_are_finite(tmp_path / "run")
    assert not (tmp_path / "run" / "test_metrics.json").exists()


def test_nan_features_stop_the_run_at_the_first_step(make_cfg, tmp_path, data_root):
    datamodule = instantiate(make_cfg("experiment=caption_shapes").data, _recursive_=False)
    datamodule.prepare_data()  # the tiny Shapes data, generated once per session; corrupted in a copy
    data = tmp_path / "data"
    shutil.copytree(data_root, data)
    store = next(data.rglob("regions.h5"))
    with h5py.File(store, "a") as f:  # as a store written by another tool could be
        f["features"][:] = np.nan
    cfg = make_cfg(
        "experiment=caption_shapes",
        f"paths.data_dir={data}",
        "callbacks.attention_maps=null",
        *TINY_CAPTIONER,
    )
    with pytest.raises(NonFiniteError) as err:
        run(cfg)
    assert str(err.value) == (
        "training stopped at step 0 (epoch 0): the training loss is nan "
        "(diverged: lower model.optimizer.lr, or look for NaN/Inf in the region features)"
    )
    assert _checkpoints_are_finite(tmp_path / "run") == []


class SqrtAtZero(pl.LightningModule):
    """Loss sqrt(w * x) at x = 0: the loss is 0, finite, and its gradient 0 * inf = NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def training_step(self, batch, batch_idx):
        return torch.sqrt(self.w * batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=2)


def test_a_non_finite_gradient_stops_the_run_before_the_optimiser_step():
    module = SqrtAtZero()
    trainer = pl.Trainer(
        max_epochs=1, callbacks=[StopOnNonFinite()], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    with pytest.raises(NonFiniteError) as err:
        trainer.fit(module)
    assert str(err.value).startswith(
        "training stopped at step 0 (epoch 0): non-finite gradient of w (diverged: "
    )
    assert module.w.item() == 1.0  # the NaN step was never taken


def test_a_finite_divergence_stops_the_run_with_one_line(make_cfg, tmp_path):
    """Adam at lr=1e10 keeps the loss finite (about 1e11) and the run used to end with exit 0."""
    cfg = make_cfg(
        "experiment=caption_shapes",
        "model.optimizer.lr=1e10",
        "callbacks.attention_maps=null",
        "trainer.max_epochs=3",
        *TINY_CAPTIONER,
    )
    with pytest.raises(NonFiniteError, match=r"^training stopped at step [1-9]\d* \(epoch \d\): ") as err:
        run(cfg)
    message = str(err.value)
    assert "the training loss's running mean" in message and "over 1000 times its early value" in message
    assert "\n" not in message and not (tmp_path / "run" / "test_metrics.json").exists()


def test_the_divergence_rule_stops_growth_by_orders_of_magnitude_only():
    """The rule on loss histories: a falling cross-entropy, a noisy self-critical loss around zero, and a spike pass;
    a loss growing 10 times per step stops within a few steps of passing 1000 times its early value."""
    trainer = type("T", (), {"global_step": 0, "current_epoch": 0})()

    def steps_run(losses) -> int:
        callback = StopOnNonFinite()
        for n, loss in enumerate(losses):
            try:
                callback.on_before_backward(trainer, None, torch.tensor(loss))
            except NonFiniteError:
                return n
        return len(losses)

    falling = [9.0 * 0.99**n + 2 for n in range(500)]
    self_critical = [0.3 * ((-1) ** n) * (1 + n % 7) for n in range(500)]
    spike = [3.0] * 50 + [3e3] + [3.0] * 50
    assert steps_run(falling) == 500 and steps_run(self_critical) == 500 and steps_run(spike) == 101
    growing = [5.0] * 20 + [5.0 * 10**n for n in range(1, 12)]
    assert 20 + 3 <= steps_run(growing) <= 20 + 6

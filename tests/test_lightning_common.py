"""Optimiser wiring shared by the LightningModules: the fused default and where it is left out."""

from functools import partial

import torch
from torch import nn

from vqacap.lightning.common import TaskModule, fused_default
from vqacap.train import run


def _params():
    return list(nn.Linear(3, 2).parameters())


class Linear(TaskModule):
    def __init__(self, optimizer) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(3, 2)


def test_fused_adam_by_default_on_the_cpu():
    params = _params()
    assert fused_default(partial(torch.optim.Adam, lr=1e-3), params) == {"fused": True}
    opt = Linear(partial(torch.optim.Adam, lr=1e-3)).configure_optimizers()
    assert opt.defaults["fused"] is True


def test_the_configs_choice_is_kept_and_optimisers_without_fused_are_left_alone():
    params = _params()
    assert fused_default(partial(torch.optim.Adam, lr=1e-3, fused=False), params) == {}
    assert fused_default(partial(torch.optim.Adam, lr=1e-3, foreach=True), params) == {}
    assert fused_default(partial(torch.optim.Adamax, lr=2e-3), params) == {}


def test_fused_and_plain_adam_take_the_same_steps():
    torch.manual_seed(0)
    plain, fused = nn.Linear(5, 4), nn.Linear(5, 4)
    fused.load_state_dict(plain.state_dict())
    opts = [
        torch.optim.Adam(plain.parameters(), lr=1e-2),
        torch.optim.Adam(fused.parameters(), lr=1e-2, fused=True),
    ]
    for _ in range(3):
        x = torch.randn(8, 5)
        for model, opt in zip((plain, fused), opts):
            model(x).pow(2).sum().backward()
            opt.step()
            opt.zero_grad()
    for p, q in zip(plain.parameters(), fused.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


def test_mixed_precision_with_clipping_trains_without_fused(make_cfg):
    """Lightning refuses gradient clipping with a fused optimiser under mixed precision; such runs keep the default."""
    from tests.conftest import TINY_CAPTIONER

    cfg = make_cfg(
        "experiment=caption_shapes", "debug=fdr", *TINY_CAPTIONER, "trainer.precision=bf16-mixed",
        "trainer.gradient_clip_val=0.1",
    )  # fmt: skip
    metrics = run(cfg)
    assert metrics["test/CIDEr"] >= 0.0

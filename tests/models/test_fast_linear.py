"""oneDNN-backed linear layers: same values and gradients as nn.Linear, counted FLOPs, the fallbacks."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vqacap.models.fast import linear as linear_mod
from vqacap.models.fast.linear import OneDNNProducts, linear

needs_onednn = pytest.mark.skipif(not linear_mod.AVAILABLE, reason="PyTorch built without oneDNN")


def _inputs(*shape, in_dim=24, out_dim=40):
    torch.manual_seed(0)
    x = torch.randn(*shape, in_dim, requires_grad=True)
    weight = torch.randn(out_dim, in_dim, requires_grad=True)
    bias = torch.randn(out_dim, requires_grad=True)
    return x, weight, bias


@needs_onednn
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_values_and_gradients_equal_f_linear(shape, with_bias):
    x, weight, bias = _inputs(*shape)
    bias = bias if with_bias else None
    y = linear(x, weight, bias)
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, weight] + ([bias] if with_bias else []), grad)
    y_ref = F.linear(x, weight, bias)
    want = torch.autograd.grad(y_ref, [x, weight] + ([bias] if with_bias else []), grad)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_products_run_through_onednn_and_are_counted():
    x, weight, bias = _inputs(6, 5)
    seen = []

    class Ops(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Ops():
        linear(x, weight, bias).sum().backward()
    assert seen.count("mkldnn._linear_pointwise.default") == 2  # forward and the input gradient
    with FlopCounterMode(display=False) as counter:
        linear(x, weight, bias).sum().backward()
    assert counter.get_total_flops() == 3 * 2 * 30 * 24 * 40  # forward, input and weight gradients


@needs_onednn
def test_switched_off_by_the_environment_and_for_other_dtypes(monkeypatch):
    x, weight, bias = _inputs(4)
    assert linear_mod.applies(x, weight)
    assert not linear_mod.applies(x.double(), weight.double())
    stacked = torch.randn(40, 24 + 8)
    assert not linear_mod.applies(x, stacked.split([24, 8], dim=1)[0])  # strided columns: oneDNN's slow path
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not linear_mod.applies(x, weight)
    monkeypatch.setenv("VQACAP_ONEDNN", "0")
    assert not linear_mod.applies(x, weight)
    # The fallback is F.linear itself.
    torch.testing.assert_close(linear(x, weight, bias), F.linear(x, weight, bias), rtol=0, atol=0)


@needs_onednn
def test_paper_layers_multiply_through_onednn_within_the_context():
    """OneDNNProducts reroutes every F.linear, weight-normed layers included, to `linear`: same values and gradients."""
    torch.manual_seed(0)
    layers = nn.Sequential(
        nn.Linear(24, 40), nn.ReLU(), nn.utils.parametrizations.weight_norm(nn.Linear(40, 8))
    )
    x = torch.randn(3, 24)
    seen = []

    class Ops(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Ops(), OneDNNProducts():
        y = layers(x)
    assert seen.count("mkldnn._linear_pointwise.default") == 2
    want = layers(x)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    got = torch.autograd.grad(y.sum(), list(layers.parameters()))
    for g, w in zip(got, torch.autograd.grad(want.sum(), list(layers.parameters()))):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)

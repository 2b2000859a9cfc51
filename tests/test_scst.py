"""Self-critical training: options, baselines and the loss against hand-computed cases, the sampled tokens'
log-probabilities, a few REINFORCE steps that raise the reward, and both modes through the real Hydra recipe."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from vqacap.data.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from vqacap.lightning.captioning import CaptioningModule
from vqacap.lightning.self_critical import SelfCriticalOptions, baseline, self_critical_loss
from vqacap.metrics.captions import CiderDReward
from vqacap.models.captioner import UpDownCaptioner
from vqacap.models.decoding import DecodingOptions, sample

V, D = 10, 6


def test_options_are_validated_at_construction_and_default_per_mode():
    assert SelfCriticalOptions().baseline == "greedy"
    assert SelfCriticalOptions(mode="beam").baseline == "beam_mean"
    with pytest.raises(ValueError, match="model.scst.mode: expected one of"):
        SelfCriticalOptions(mode="beams")
    with pytest.raises(ValueError, match="model.scst.baseline: mode 'beam' takes one of"):
        SelfCriticalOptions(mode="beam", baseline="greedy")
    with pytest.raises(ValueError, match="model.scst.baseline: mode 'sample' takes one of"):
        SelfCriticalOptions(baseline="mean")
    with pytest.raises(ValueError, match="'leave_one_out' baseline needs at least 2"):
        SelfCriticalOptions(baseline="leave_one_out", num_samples=1)
    with pytest.raises(ValueError, match="model.scst.temperature"):
        SelfCriticalOptions(temperature=0.0)


def test_sampling_options_are_their_own_not_the_evaluations():
    opts = SelfCriticalOptions().decoding(max_length=12)
    assert (opts.max_length, opts.min_length, opts.block_trigrams, opts.suppress_unk) == (12, 0, False, False)
    beam = SelfCriticalOptions(mode="beam", num_samples=4, max_length=7).decoding(max_length=12)
    assert (beam.beam_size, beam.max_length, beam.length_penalty) == (4, 7, 0.0)


def test_baselines_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]])
    torch.testing.assert_close(
        baseline(rewards, "leave_one_out"), torch.tensor([[2.5, 2.0, 1.5], [3.0, 3.0, 0.0]])
    )
    torch.testing.assert_close(baseline(rewards, "beam_mean"), torch.tensor([[2.0] * 3, [2.0] * 3]))
    greedy = torch.tensor([1.5, 4.0])
    torch.testing.assert_close(baseline(rewards, "greedy", greedy), torch.tensor([[1.5] * 3, [4.0] * 3]))


def test_loss_and_its_gradient_by_hand():
    # One image, two captions: "w w <eos>" (3 tokens) and "w <eos> <pad>" (2 tokens); 5 emitted tokens in all.
    tokens = torch.tensor([[[4, 5, EOS_ID], [6, EOS_ID, PAD_ID]]])
    log_probs = torch.tensor([[[-1.0, -2.0, -0.5], [-3.0, -1.0, -7.0]]], requires_grad=True)
    rewards = torch.tensor([[2.0, 0.5]])
    baselines = torch.tensor([[1.0, 1.0]])  # advantages +1 and -0.5
    loss = self_critical_loss(log_probs, tokens, rewards, baselines)
    # -(1 * (-1 - 2 - 0.5) + (-0.5) * (-3 - 1)) / 5 = -(-3.5 + 2) / 5 = 0.3; the <pad>'s -7 adds nothing
    assert loss.item() == pytest.approx(0.3)
    loss.backward()
    # Descending the loss raises the log-probability of the caption better than its baseline, lowers the other's.
    expected = torch.tensor([[[-0.2, -0.2, -0.2], [0.1, 0.1, 0.0]]])
    torch.testing.assert_close(log_probs.grad, expected)


def _model(seed=0):
    torch.manual_seed(seed)
    return UpDownCaptioner(
        vocab_size=V, feature_dim=D, embed_dim=8, hidden_dim=16, attention_dim=8, dropout=0.0
    )


def test_sampled_log_probs_are_under_the_constrained_distribution_and_a_forced_eos_costs_nothing():
    model = _model().eval()
    regions, mask = torch.randn(3, 4, D), torch.ones(3, 4, dtype=torch.bool)
    opts = DecodingOptions(max_length=3, suppress_unk=True, min_length=1)
    torch.manual_seed(1)
    out = sample(model, regions, mask, opts, num_samples=6, greedy=False)
    out.log_probs.sum().backward()  # the graph is kept
    tokens = out.tokens  # (B, G, T)
    inputs = torch.cat([torch.full_like(tokens[..., :1], BOS_ID), tokens], -1)
    logits, _ = model(regions, mask, inputs)  # teacher forcing, independent of the decoding loop
    logits = logits.detach().clone()
    logits[..., [PAD_ID, BOS_ID, UNK_ID]] = float("-inf")
    logits[..., 0, EOS_ID] = float("-inf")  # min_length 1
    logits[..., 3, :] = float("-inf")  # out of room: only <eos>
    logits[..., 3, EOS_ID] = 0.0
    expected = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    expected = expected.masked_fill(tokens == PAD_ID, 0.0)
    torch.testing.assert_close(out.log_probs.detach(), expected, rtol=1e-5, atol=1e-5)
    forced = tokens[..., 3] == EOS_ID
    assert forced.any() and (out.log_probs[..., 3][forced] == 0).all()


@pytest.mark.parametrize("kind", ["greedy", "leave_one_out"])
def test_a_few_self_critical_steps_raise_the_reward(kind):
    """Sampling mode by hand on a fixed batch: the reward of the samples must rise, whatever the baseline."""
    references = {1: [[4, 5, 6]], 2: [[7, 8, 9]], 3: [[4, 8]]}
    reward = CiderDReward(references, vocab_size=V)
    model = _model(1).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    torch.manual_seed(2)
    regions, mask = torch.randn(3, 4, D), torch.ones(3, 4, dtype=torch.bool)
    image_ids = torch.tensor([1, 2, 3])
    opts = DecodingOptions(max_length=5)
    means = []
    for _ in range(40):
        out = sample(model, regions, mask, opts, num_samples=8, greedy=False)
        rewards = reward(image_ids.repeat_interleave(8), out.tokens.flatten(0, 1)).view(3, 8)
        greedy = None
        if kind == "greedy":
            model.eval()
            with torch.no_grad():
                greedy = reward(image_ids, sample(model, regions, mask, opts, greedy=True).tokens[:, 0])
            model.train()
        loss = self_critical_loss(out.log_probs, out.tokens, rewards, baseline(rewards, kind, greedy))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        means.append(rewards.mean().item())
    assert sum(means[-5:]) > 2 * sum(means[:5]), means  # about 0.76 -> 1.9 (greedy baseline)


@pytest.mark.parametrize("mode", ["sample", "beam"])
def test_both_modes_train_through_the_recipe(make_cfg, tmp_path, mode):
    from tests.conftest import TINY_CAPTIONER, logged
    from vqacap.train import run

    cfg = make_cfg(
        "experiment=caption_shapes_scst",
        "init_from=null",
        f"model.scst.mode={mode}",
        "model.scst.baseline=null",
        "model.scst.num_samples=3",
        "+trainer.limit_train_batches=2",
        "trainer.log_every_n_steps=1",
        "trainer.max_epochs=1",
        *TINY_CAPTIONER,
    )
    metrics = run(cfg)
    assert {"test/CIDEr", "test/bad_endings"} <= metrics.keys()
    rewards = logged(tmp_path / "run", "train/reward")
    baselines = logged(tmp_path / "run", "train/baseline")
    assert len(rewards) == 2 and all(r >= 0 for r in rewards)
    if mode == "beam":  # the baseline is the mean reward of the beams, so the logged means agree
        assert baselines == pytest.approx(rewards, rel=1e-5)


def test_the_module_trains_on_its_own_options_and_cuts_references_at_the_datas_max_length():
    words = ["<pad>", "<bos>", "<eos>", "<unk>", "a", "red", "big", "square", "left", "of", "circle"]
    references = {"train": {1: ["a red big square left of a circle"], 2: ["a circle"]}}
    module = CaptioningModule(
        net=partial(UpDownCaptioner, embed_dim=8, hidden_dim=16, attention_dim=8),
        words=words,
        feature_dim=D,
        optimizer=partial(torch.optim.Adam),
        decoding={"max_length": 4, "min_length": 3, "block_trigrams": True, "suppress_unk": True},
        scst={"mode": "sample", "num_samples": 2},
        references=references,
    )
    opts = module.scst_decoding
    assert (opts.max_length, opts.min_length, opts.block_trigrams, opts.suppress_unk) == (4, 0, False, False)
    # The reward's reference of image 1 is its first 4 words, as the data (max_length 4) encodes it.
    cut = CiderDReward({1: [[4, 5, 6, 7]], 2: [[4, 10]]})
    candidates = torch.tensor([[4, 5, 6, 7, EOS_ID], [4, 5, 6, 7, 8], [4, 10, EOS_ID, PAD_ID, PAD_ID]])
    image_ids = torch.tensor([1, 1, 2])
    torch.testing.assert_close(module.reward(image_ids, candidates), cut(image_ids, candidates))


def test_coco_recipes_decode_with_up_downs_repeat_rules(make_cfg):
    for experiment in ("caption_coco_xe", "caption_coco_scst"):
        decoding = make_cfg(f"experiment={experiment}", tiny=False).model.decoding
        assert decoding.prevent_repeats and decoding.single_use, experiment
    words = ["<pad>", "<bos>", "<eos>", "<unk>", "a", "red", "the", "circle"]
    module = CaptioningModule(
        net=partial(UpDownCaptioner, embed_dim=8, hidden_dim=16, attention_dim=8),
        words=words,
        feature_dim=D,
        optimizer=partial(torch.optim.Adam),
        decoding={"prevent_repeats": True, "single_use": True},
        scst={"mode": "beam", "num_samples": 2},
    )
    assert module.decoding.allowed_multiple == module.val_decoding.allowed_multiple == (4, 6)  # "a", "the"
    beam = module.scst_decoding  # SCSTLayer's beams follow the rules too (scst_net.prototxt)
    assert beam.prevent_repeats and beam.single_use and beam.allowed_multiple == (4, 6)
    sampled = SelfCriticalOptions(mode="sample").decoding(12, (4, 6))  # Rennie et al. sample freely
    assert not (sampled.prevent_repeats or sampled.single_use)

"""Self-critical training: options, baselines and the loss against hand-computed cases, the sampled tokens'
log-probabilities, a few REINFORCE steps that raise the reward, and both modes through the real Hydra recipe."""

from __future__ import annotations

import math
from collections import Counter
from functools import partial

import pytest
import torch

from vqacap.data.captions import CaptionBatch
from vqacap.data.store import Regions
from vqacap.data.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from vqacap.lightning.captioning import CaptioningModule
from vqacap.lightning.self_critical import SelfCriticalOptions, baseline, self_critical_loss
from vqacap.metrics.captions import CiderDReward
from vqacap.models.captioner import UpDownCaptioner
from vqacap.models.decoding import DecodingOptions, beam_search, sample

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
    with pytest.raises(ValueError, match="model.scst.document_frequencies"):
        SelfCriticalOptions(document_frequencies="val")
    with pytest.raises(ValueError, match="model.scst.beam_dropout: only mode 'beam'"):
        SelfCriticalOptions(beam_dropout=True)
    beam, s = SelfCriticalOptions(mode="beam"), SelfCriticalOptions(mode="sample")
    assert (beam.count_eos, beam.full_references, beam.document_frequencies) == (False, True, "all")
    assert (s.count_eos, s.full_references, s.document_frequencies) == (True, False, "train")


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
        f"model.scst.mode={mode}",  # the recipe's baseline (null) follows the mode
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


# -- The training step against a hand computation (SCSTLayer's formula in beam mode, Rennie et al.'s in sample mode) --
SPECIAL_WORDS = ["<pad>", "<bos>", "<eos>", "<unk>"]
STEP_WORDS = [*SPECIAL_WORDS, "a", "red", "circle", "square", "on", "the", "left", "of", "blue"]
STEP_REFERENCES = {
    "train": {
        1: ["a circle a square on the left of a blue square", "a red circle"],  # longer than max_length (4)
        2: ["a square a blue circle", "a blue square beside a green circle"],  # unknown words
    },
    "val": {3: ["a red circle", "red circle"]},
}


def _cider_d_by_hand(references: dict[int, list[list[str]]], image: int, caption: list[str]) -> float:
    """Up-Down-Captioner's layers/cider_scorer.py written out: tf-idf n-gram vectors (n = 1..4) with document
    frequencies over every image of `references` and log(number of images) as the reference length, clipped
    products, a Gaussian length penalty (sigma 6, lengths counted in bigrams), the mean over n, over the references,
    times 10."""

    def grams(words):
        return Counter(tuple(words[i : i + k]) for k in range(1, 5) for i in range(len(words) - k + 1))

    df = Counter(g for refs in references.values() for g in set().union(*(grams(r) for r in refs)))
    log_images = math.log(len(references))

    def vec(words):
        v = [{}, {}, {}, {}]
        for g, tf in grams(words).items():
            v[len(g) - 1][g] = tf * (log_images - math.log(max(1.0, df[g])))
        return v, [math.sqrt(sum(x * x for x in d.values())) for d in v], max(len(words) - 1, 0)

    hyp, hyp_norm, hyp_len = vec(caption)
    total = 0.0
    for ref_words in references[image]:
        ref, ref_norm, ref_len = vec(ref_words)
        penalty = math.exp(-((hyp_len - ref_len) ** 2) / (2 * 6.0**2))
        val = []
        for n in range(4):
            dot = sum(min(x, ref[n].get(g, 0.0)) * ref[n].get(g, 0.0) for g, x in hyp[n].items())
            val.append(dot / (hyp_norm[n] * ref_norm[n]) * penalty if hyp_norm[n] and ref_norm[n] else 0.0)
        total += sum(val) / 4
    return total / len(references[image]) * 10.0


class FixedMaskDropout(torch.nn.Module):
    """Dropout with one fixed mask over the hidden units: the sampling pass and a teacher-forced pass in train mode
    drop the same units, so a sampled caption's log-probabilities can be recomputed by hand."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        # Keeps every third unit (p = 2/3): with it the toy model's greedy caption changes.
        self.register_buffer("mask", (torch.arange(hidden) % 3 == 0).float() * 3.0)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * self.mask if self.training else h


def _step_module(scst: dict, dropout: float = 0.5):
    torch.manual_seed(0)
    module = CaptioningModule(
        net=partial(UpDownCaptioner, embed_dim=8, hidden_dim=16, attention_dim=8, dropout=dropout),
        words=STEP_WORDS,
        feature_dim=D,
        optimizer=partial(torch.optim.Adam),
        decoding={"max_length": 4, "beam_size": 3},
        scst=scst,
        references=STEP_REFERENCES,
    )
    with torch.no_grad():  # sharper distributions than the initialisation's: beams and samples that differ
        for p in module.net.parameters():
            p.mul_(3.0)
        # Short captions of "a", shapes and colours; no <unk>.
        module.net.output.bias[2:8] += torch.tensor([-2.0, -9.0, 3.0, 2.0, 2.0, 2.0])
    module.log = lambda *args, **kwargs: None  # no trainer here
    regions = Regions(
        features=torch.randn(2, 3, D),
        boxes=torch.zeros(2, 3, 4),
        mask=torch.tensor([[True, True, True], [True, True, False]]),
        image_size=torch.ones(2, 2),
    )
    return module.train(), CaptionBatch(image_ids=torch.tensor([1, 2]), regions=regions, tokens=None)


def _words_of(row: list[int], count_eos: bool) -> list[str]:
    out = []
    for i in row:
        if i in (EOS_ID, PAD_ID):
            return out + (["<eos>"] if count_eos and i == EOS_ID else [])
        out.append(STEP_WORDS[i])
    return out


def _loss_and_grads(module, loss: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    module.zero_grad()
    loss.backward()
    return loss.item(), [p.grad.clone() for p in module.net.parameters()]


def test_beam_mode_step_equals_scst_layers_formula_by_hand():
    """SCSTLayer: 3 beams per image decoded without dropout under Up-Down's repeat rules; reward CIDEr-D of the words
    up to the end token (not a word) against the full references, document frequencies over all images (train and
    val); weight = reward - mean reward of the image's beams; loss = sum of -weight * log p over the beams' words and
    end tokens, over their count, log p teacher-forced without dropout though the module is in train mode."""
    module, batch = _step_module({"mode": "beam", "num_samples": 3})
    got, got_grads = _loss_and_grads(module, module._self_critical_step(batch))
    assert module.net.training  # the step restores train mode

    net, x, mask = module.net, batch.regions.features, batch.regions.mask
    net.eval()
    opts = DecodingOptions(
        beam_size=3,
        max_length=4,
        prevent_repeats=True,
        single_use=True,
        allowed_multiple=tuple(STEP_WORDS.index(w) for w in ("a", "on", "the", "of")),
    )
    tokens = beam_search(net, x, mask, opts).tokens  # (2, 3, T)
    splits = STEP_REFERENCES.values()
    every_image = {i: [r.split() for r in refs] for split in splits for i, refs in split.items()}
    rewards = torch.tensor(
        [[_cider_d_by_hand(every_image, image, _words_of(row, False)) for row in tokens[b].tolist()]
         for b, image in enumerate((1, 2))]
    )  # fmt: skip
    assert (rewards.std(1) > 0.1).all()  # each image's beams score differently: the weights are not zero
    weights = rewards - rewards.mean(1, keepdim=True)  # (2, 3)
    inputs = torch.cat([torch.full_like(tokens[..., :1], BOS_ID), tokens], -1)
    logp = torch.log_softmax(net(x, mask, inputs)[0], -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    valid = (tokens != PAD_ID).float()
    expected, expected_grads = _loss_and_grads(
        module, -(weights.unsqueeze(-1) * logp * valid).sum() / valid.sum()
    )
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-7)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-7)


def test_sample_mode_step_equals_rennie_et_al_by_hand():
    """Rennie et al. 2017: 3 samples per image drawn with dropout; baseline the reward of the greedy caption decoded
    without dropout; reward CIDEr-D with <eos> a word, references cut to max_length (4) and document frequencies over
    the training images; loss = -sum (reward - baseline) log p(sampled token) over the emitted tokens, over their
    count, log p under the distribution drawn from (<pad>, <bos> excluded; the forced <eos> at max_length free)."""
    module, batch = _step_module({"mode": "sample", "num_samples": 3})
    module.net.dropout = FixedMaskDropout(16)
    calls = []
    reward = module.reward
    module.reward = lambda image_ids, tokens: calls.append(tokens.clone()) or reward(image_ids, tokens)
    torch.manual_seed(5)
    got, got_grads = _loss_and_grads(module, module._self_critical_step(batch))
    greedy_tokens, sampled = calls[0], calls[1].view(2, 3, -1)  # (2, T), (2, 3, T)

    net, x, mask = module.net, batch.regions.features, batch.regions.mask
    net.eval()
    with torch.no_grad():
        greedy = sample(net, x, mask, DecodingOptions(max_length=4), greedy=True).tokens[:, 0]
    net.train()
    with torch.no_grad():  # dropout would change the greedy caption
        dropped = sample(net, x, mask, DecodingOptions(max_length=4), greedy=True).tokens[:, 0]
    assert not torch.equal(dropped, greedy)
    assert torch.equal(greedy_tokens[:, : greedy.size(1)], greedy)  # the baseline is decoded without dropout
    train = {i: [r.split()[:4] + ["<eos>"] for r in refs] for i, refs in STEP_REFERENCES["train"].items()}

    def by_hand(image, row):
        return _cider_d_by_hand(train, image, _words_of(row, True))

    baselines = torch.tensor([by_hand(image, greedy[b].tolist()) for b, image in enumerate((1, 2))])
    rewards = torch.tensor([[by_hand(i, row) for row in sampled[b].tolist()] for b, i in enumerate((1, 2))])
    assert (rewards != baselines.unsqueeze(1)).any()
    net.train()  # the samples' log-probabilities are those of the pass with dropout
    inputs = torch.cat([torch.full_like(sampled[..., :1], BOS_ID), sampled], -1)
    logp = net(x, mask, inputs)[0].log_softmax(-1)  # (2, 3, T, V)
    allowed = logp.index_fill(-1, torch.tensor([PAD_ID, BOS_ID]), -math.inf)
    logp = allowed.gather(-1, sampled.unsqueeze(-1)).squeeze(-1) - allowed.logsumexp(-1)  # (2, 3, T)
    logp = logp[..., :4]  # the <eos> forced at max_length has log-probability 0
    emitted = (sampled != PAD_ID).float()
    advantage = (rewards - baselines.unsqueeze(1)).unsqueeze(-1)
    expected, expected_grads = _loss_and_grads(
        module, -(advantage * logp * emitted[..., :4]).sum() / emitted.sum()
    )
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-7)
    for g, e in zip(got_grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-7)

"""Decoding (greedy, sampling, beam search, the SCST sampling pass) against the `Captioner` protocol, run with every
captioner the project has: the top-down model and the Show-Attend-Tell-style baseline."""

import itertools
import math

import pytest
import torch

from tests.helpers.regions import padded_regions
from vqacap.data.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from vqacap.models.captioner import UpDownCaptioner
from vqacap.models.decoding import (
    ALLOWED_MULTIPLE,
    Captioner,
    DecodingOptions,
    allowed_multiple_ids,
    beam_search,
    decode,
    draw,
    expand_state,
    sample,
    sample_with_greedy,
    select_state,
)
from vqacap.models.show_attend_tell import ShowAttendTell

V, D = 30, 12
CAPTIONERS = [UpDownCaptioner, ShowAttendTell]


@pytest.fixture(params=CAPTIONERS, ids=lambda c: c.__name__)
def model(request) -> Captioner:
    torch.manual_seed(0)
    return request.param(
        vocab_size=V, feature_dim=D, embed_dim=8, hidden_dim=16, attention_dim=10, dropout=0.0
    ).eval()


def test_captioners_implement_the_protocol(model):
    regions, mask = padded_regions()
    context, state = model.start(regions, mask)
    assert all(t.shape[:2] == (3, 1) for t in state)
    state = expand_state(state, 4)
    logits, attention, state = model.step(context, state, torch.full((3, 4), 1))
    assert logits.shape == (3, 4, V) and attention.shape == (3, 4, 7)
    assert all(t.shape[:2] == (3, 4) for t in state)
    assert (attention[~mask.unsqueeze(1).expand_as(attention)] == 0).all()
    torch.testing.assert_close(attention.sum(-1), torch.ones(3, 4))


def test_select_state_reorders_hypotheses_per_image(model):
    regions, mask = padded_regions()
    _, state = model.start(regions, mask)
    state = tuple(torch.randn(3, 4, t.size(-1)) for t in state)
    index = torch.tensor([[3, 3, 0, 1], [0, 1, 2, 3], [2, 0, 0, 0]])
    for picked, t in zip(select_state(state, index), state):
        for b in range(3):
            assert torch.equal(picked[b], t[b, index[b]])


def test_teacher_forcing_matches_step_by_step_decoding(model):
    regions, mask = padded_regions()
    tokens = torch.randint(4, V, (3, 6))
    logits, attention = model(regions, mask, tokens)
    assert logits.shape == (3, 5, V) and attention.shape == (3, 5, 7)
    context, state = model.start(regions, mask)
    for t in range(5):
        step_logits, alpha, state = model.step(context, state, tokens[:, t : t + 1])
        torch.testing.assert_close(step_logits[:, 0], logits[:, t])
        torch.testing.assert_close(alpha[:, 0], attention[:, t])


def test_padding_content_does_not_change_the_output(model):
    regions, mask = padded_regions()
    tokens = torch.randint(4, V, (3, 2, 6))
    noisy = regions.clone()
    noisy[~mask] = 1e3
    torch.testing.assert_close(model(regions, mask, tokens)[0], model(noisy, mask, tokens)[0])


def test_beam_one_equals_greedy(model):
    regions, mask = padded_regions()
    opts = DecodingOptions(beam_size=1, max_length=8)
    greedy = sample(model, regions, mask, opts, greedy=True)
    beam = beam_search(model, regions, mask, opts)
    assert torch.equal(greedy.tokens, beam.tokens)
    emitted = (beam.tokens != PAD_ID).unsqueeze(-1)  # after <eos> the decoders may keep different attention
    torch.testing.assert_close(greedy.attention * emitted, beam.attention * emitted)
    torch.testing.assert_close(greedy.scores, beam.scores)


def test_beam_search_is_batched_consistently_and_sorted(model):
    regions, mask = padded_regions()
    opts = DecodingOptions(beam_size=4, max_length=8)
    together = beam_search(model, regions, mask, opts)
    assert together.tokens.shape[:2] == (3, 4)
    assert (together.scores[:, :-1] >= together.scores[:, 1:]).all()
    for i in range(3):  # each image decoded alone gives the same beams
        k = int(mask[i].sum())
        alone = beam_search(model, regions[i : i + 1, :k], mask[i : i + 1, :k], opts)
        t = alone.tokens.size(-1)
        assert torch.equal(alone.tokens[0], together.tokens[i, :, :t])
        torch.testing.assert_close(alone.scores[0], together.scores[i])


def test_beam_scores_are_the_summed_log_probabilities_of_the_tokens(model):
    """Re-scoring each beam by teacher forcing gives its score: the beams' bookkeeping follows the right states."""
    regions, mask = padded_regions()
    beams = beam_search(model, regions, mask, DecodingOptions(beam_size=3, max_length=6))
    bos = torch.full((*beams.tokens.shape[:2], 1), 1)
    logits, _ = model(regions, mask, torch.cat([bos, beams.tokens], -1))  # (B, G, T, V)
    logp = torch.log_softmax(logits, -1).gather(-1, beams.tokens.unsqueeze(-1)).squeeze(-1)
    logp = logp.masked_fill(beams.tokens == PAD_ID, 0.0)
    torch.testing.assert_close(logp.sum(-1), beams.scores, rtol=1e-4, atol=1e-4)


def test_decoded_sequences_end_with_eos_then_padding(model):
    regions, mask = padded_regions()
    out = decode(model, regions, mask, DecodingOptions(beam_size=3, max_length=5)).tokens[:, 0]
    assert out.size(1) <= 6
    for row in out.tolist():
        end = row.index(EOS_ID)  # max_length forces <eos> at the latest
        assert all(t == PAD_ID for t in row[end + 1 :])
        assert all(t not in (PAD_ID, EOS_ID) for t in row[:end])


def test_decoding_options_constrain_the_output(model):
    regions, mask = padded_regions()
    with torch.no_grad():
        model.output.bias[EOS_ID] = 50.0  # the model wants to stop at once
        model.output.bias[UNK_ID] = 40.0
    opts = DecodingOptions(beam_size=3, max_length=8, min_length=4, suppress_unk=True)
    out = decode(model, regions, mask, opts).tokens[:, 0]
    assert (out[:, :4] != EOS_ID).all() and (out != UNK_ID).all()
    with torch.no_grad():
        model.output.bias[EOS_ID] = -50.0
        model.output.bias[UNK_ID] = 0.0
        model.output.bias[5] = 30.0  # ... now it wants to repeat one word forever
    blocked = decode(model, regions, mask, DecodingOptions(beam_size=2, max_length=8, block_trigrams=True))
    for row in blocked.tokens[:, 0].tolist():
        words = [t for t in row if t not in (EOS_ID, PAD_ID)]
        trigrams = list(zip(words, words[1:], words[2:]))
        assert len(trigrams) == len(set(trigrams))


def test_sampling_keeps_gradients_and_respects_temperature(model):
    regions, mask = padded_regions()
    model.train()
    out = sample(model, regions, mask, DecodingOptions(max_length=6), num_samples=5, greedy=False)
    assert out.tokens.shape[:2] == (3, 5) and out.log_probs.requires_grad
    out.log_probs.sum().backward()
    assert model.embed.weight.grad is not None
    model.eval()
    torch.manual_seed(0)
    cold = sample(
        model, regions, mask, DecodingOptions(max_length=6, temperature=1e-4), num_samples=4, greedy=False
    )
    greedy = sample(model, regions, mask, DecodingOptions(max_length=6), greedy=True)
    assert torch.equal(cold.tokens, greedy.tokens.expand_as(cold.tokens))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_greedy_baseline_in_the_sampling_pass_equals_separate_passes(model, temperature):
    """sample_with_greedy: the samples of sample(greedy=False) from the same random state, and eval-mode greedy."""
    regions, mask = padded_regions()
    model.dropout.p = 0.3  # dropout on: the samples get it, the greedy row must not
    opts = DecodingOptions(max_length=6, temperature=temperature)
    model.train()
    torch.manual_seed(3)
    samples, greedy = sample_with_greedy(model, regions, mask, opts, num_samples=4)
    torch.manual_seed(3)
    alone = sample(model, regions, mask, opts, num_samples=4, greedy=False)
    model.eval()
    with torch.no_grad():
        greedy_alone = sample(model, regions, mask, opts, greedy=True)
    t = alone.tokens.size(-1)
    assert torch.equal(samples.tokens[..., :t], alone.tokens)
    assert (
        samples.tokens[..., t:] == PAD_ID
    ).all()  # the joint pass ran on while the greedy row was unfinished
    torch.testing.assert_close(samples.log_probs[..., :t], alone.log_probs, rtol=1e-5, atol=1e-5)
    tg = greedy_alone.tokens.size(-1)
    assert (
        torch.equal(greedy.tokens[..., :tg], greedy_alone.tokens)
        and (greedy.tokens[..., tg:] == PAD_ID).all()
    )
    torch.testing.assert_close(greedy.attention[..., :tg, :], greedy_alone.attention, rtol=1e-5, atol=1e-6)
    assert samples.log_probs.requires_grad and not greedy.log_probs.requires_grad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_decoding_on_a_gpu_stops_after_every_eos_without_changing_the_result(model):
    regions, mask = padded_regions()
    opts = DecodingOptions(beam_size=3, max_length=12)
    with torch.no_grad():
        cpu = decode(model, regions, mask, opts)
        gpu = decode(model.cuda(), regions.cuda(), mask.cuda(), opts)
    model.cpu()
    t = cpu.tokens.size(-1)
    assert torch.equal(gpu.tokens[..., :t].cpu(), cpu.tokens) and (gpu.tokens[..., t:] == PAD_ID).all()
    torch.testing.assert_close(gpu.scores.cpu(), cpu.scores, rtol=1e-4, atol=1e-4)


def test_decoding_stops_once_every_hypothesis_has_ended(model):
    regions, mask = padded_regions()
    with torch.no_grad():
        model.output.bias[EOS_ID] = 1e4  # <eos> first, everywhere
        out = decode(model, regions, mask, DecodingOptions(beam_size=1, max_length=12))
    assert out.tokens.shape[-1] == 1 and (out.tokens == EOS_ID).all()


def test_feature_dimension_mismatch_is_a_clear_error(model):
    with pytest.raises(ValueError, match="dimension 5 but the model expects feature_dim=12"):
        model(torch.randn(2, 3, 5), torch.ones(2, 3, dtype=torch.bool), torch.ones(2, 4, dtype=torch.long))


def test_sampling_draws_tokens_with_their_probabilities():
    torch.manual_seed(0)
    probs = torch.tensor([[0.5, 0.0, 0.2, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]])
    tokens = draw(probs.expand(20_000, 2, 5))  # (20000, 2)
    assert tokens.shape == (20_000, 2) and (tokens[:, 1] == 4).all()
    frequencies = torch.bincount(tokens[:, 0], minlength=5) / 20_000.0
    assert frequencies[1] == 0 and frequencies[4] == 0
    torch.testing.assert_close(frequencies, probs[0], atol=0.015, rtol=0)


# -- Up-Down's repeat rules (prevent_repeats, single_use) --------------------------------------------------------
A, RED, CIRCLE, SQUARE = 4, 5, 6, 7  # "a" may repeat (allowed_multiple); the others may not
BIGRAMS = {  # p(next | previous token) of a toy captioner whose best caption repeats words
    BOS_ID: {RED: 0.6, A: 0.3, CIRCLE: 0.1},
    RED: {RED: 0.8, CIRCLE: 0.1, A: 0.05, EOS_ID: 0.05},
    CIRCLE: {RED: 0.5, A: 0.3, EOS_ID: 0.1, SQUARE: 0.1},
    A: {A: 0.4, SQUARE: 0.3, RED: 0.2, EOS_ID: 0.1},
    SQUARE: {EOS_ID: 0.6, SQUARE: 0.3, A: 0.1},
}


class BigramCaptioner(torch.nn.Module):
    """A `Captioner` whose next-token distribution depends on the previous token only (BIGRAMS), images ignored."""

    def __init__(self) -> None:
        super().__init__()
        table = torch.full((8, 8), 1e-9)
        for previous, nexts in BIGRAMS.items():
            for token, p in nexts.items():
                table[previous, token] = p
        self.register_buffer("log_table", table.log())

    def start(self, regions, mask):
        return None, (torch.zeros(regions.size(0), 1, 1),)

    def step(self, context, state, tokens, eval_rows=0):
        logits = self.log_table[tokens]  # (B, G, V)
        return logits, torch.ones(*tokens.shape, 1), state


def _rules(prevent_repeats: bool, single_use: bool, **kwargs) -> DecodingOptions:
    """Captions of exactly 4 words: a bigram model's best caption repeats a word only when it must be long."""
    return DecodingOptions(
        max_length=4,
        min_length=4,
        prevent_repeats=prevent_repeats,
        single_use=single_use,
        allowed_multiple=(A,),
        **kwargs,
    )


def _follows_the_rules(words: list[int]) -> bool:
    no_immediate = all(a != b for a, b in zip(words, words[1:]))
    once = [w for w in words if w != A]
    return no_immediate and len(once) == len(set(once))


@pytest.mark.parametrize(
    "prevent_repeats, single_use, expected",
    [
        (False, False, [RED, RED, RED, RED, EOS_ID]),  # the unconstrained best caption repeats "red"
        (True, False, [RED, CIRCLE, RED, CIRCLE, EOS_ID]),  # no word twice in a row
        (False, True, [RED, CIRCLE, A, A, EOS_ID]),  # no second "red", "a" as often as it likes
        (True, True, [RED, CIRCLE, A, SQUARE, EOS_ID]),  # the paper's rule: both
    ],
)
def test_greedy_and_beam_follow_up_downs_repeat_rules(prevent_repeats, single_use, expected):
    regions, mask = torch.zeros(2, 1, 1), torch.ones(2, 1, dtype=torch.bool)
    opts = _rules(prevent_repeats, single_use, beam_size=1)
    greedy = sample(BigramCaptioner(), regions, mask, opts, greedy=True).tokens[:, 0]
    assert greedy.tolist() == [expected] * 2
    # A beam wider than every step finds the best caption that follows the rules, as exhaustive search does.
    beams = beam_search(BigramCaptioner(), regions, mask, _rules(prevent_repeats, single_use, beam_size=300))
    best = _exhaustive_best(prevent_repeats, single_use)
    assert beams.tokens[:, 0].tolist() == [best] * 2
    if prevent_repeats and single_use:
        assert _follows_the_rules(best[:-1])
    if not (prevent_repeats or single_use):
        assert best == [RED, RED, RED, RED, EOS_ID]


def _exhaustive_best(prevent_repeats: bool, single_use: bool) -> list[int]:
    """The most probable caption of 4 words (then <eos>) under BIGRAMS that the rules allow."""
    table = BigramCaptioner().log_table
    best, best_logp = None, -math.inf
    for k in [4]:
        for words in itertools.product((A, RED, CIRCLE, SQUARE), repeat=k):
            if prevent_repeats and any(a == b for a, b in zip(words, words[1:])):
                continue
            once = [w for w in words if w != A]
            if single_use and len(once) != len(set(once)):
                continue
            caption = [*words, EOS_ID]
            logp = sum(table[prev, w].item() for prev, w in zip([BOS_ID, *words], caption))
            if logp > best_logp:
                best, best_logp = caption, logp
    return best


def test_sampling_never_breaks_the_rules_and_renormalises_over_the_allowed_words():
    regions, mask = torch.zeros(1, 1, 1), torch.ones(1, 1, dtype=torch.bool)
    torch.manual_seed(0)
    free = sample(BigramCaptioner(), regions, mask, _rules(False, False), num_samples=200, greedy=False)
    ruled = sample(BigramCaptioner(), regions, mask, _rules(True, True), num_samples=200, greedy=False)
    words = lambda row: [t for t in row if t not in (EOS_ID, PAD_ID)]  # noqa: E731
    assert not all(_follows_the_rules(words(r)) for r in free.tokens[0].tolist())
    assert all(_follows_the_rules(words(r)) for r in ruled.tokens[0].tolist())
    # After "red", "red" is forbidden (and <eos>, before 4 words): "circle" has 0.1 of the 0.15 left ("a": 0.05).
    for row, logps in zip(ruled.tokens[0].tolist(), ruled.log_probs[0]):
        if row[:2] == [RED, CIRCLE]:
            assert logps[1].item() == pytest.approx(math.log(0.1 / 0.15), abs=1e-6)
            break
    else:
        raise AssertionError("no sample began 'red circle'")


def test_allowed_multiple_is_up_downs_list_of_19_words():
    assert len(ALLOWED_MULTIPLE) == 19 and len(set(ALLOWED_MULTIPLE)) == 19
    assert {"a", "an", "the", "of", "on", "in", "with", "and", "is", "to", ",", "by"} <= set(ALLOWED_MULTIPLE)
    words = ["<pad>", "<bos>", "<eos>", "<unk>", "red", "the", "a", "circle", "of"]
    assert sorted(allowed_multiple_ids(words)) == [5, 6, 8]

"""Each fast model form equals its paper form: outputs, gradients, padded regions, every decoding mode, checkpoints.

The fast forms (vqacap.models.fast) regroup the products; only float rounding may differ.
"""

import pytest
import torch

from tests.helpers.regions import padded_regions
from vqacap.models import fast
from vqacap.models.captioner import UpDownCaptioner
from vqacap.models.decoding import DecodingOptions, beam_search, sample, sample_with_greedy
from vqacap.models.fast.captioner import StepWeights
from vqacap.models.vqa import ReferenceVQA, UpDownVQA

V, D, E, H, A = 30, 12, 8, 16, 10
CLOSE = {"rtol": 1e-5, "atol": 1e-5}


def _pair(paper_cls, fast_cls, **kwargs):
    """A paper-form model and its fast form with the paper form's weights (loaded through the state dict)."""
    torch.manual_seed(0)
    paper = paper_cls(**kwargs)
    quick = fast_cls(**kwargs)
    quick.load_state_dict(paper.state_dict())
    return paper, quick


@pytest.fixture
def captioners():
    return _pair(UpDownCaptioner, fast.FastUpDownCaptioner, vocab_size=V, feature_dim=D, embed_dim=E,
                 hidden_dim=H, attention_dim=A, dropout=0.3)  # fmt: skip


def _regions(b=3):
    regions, mask = padded_regions(b)
    regions[~mask] = 1e3  # padded slots hold garbage: neither form may read it
    return regions, mask


def _gradients(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _assert_same_gradients(paper, quick, paper_loss, fast_loss):
    want, got = _gradients(paper, paper_loss), _gradients(quick, fast_loss)
    assert got.keys() == want.keys() == dict(paper.named_parameters()).keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], **CLOSE, msg=name)


def test_same_parameters_and_state_dict(captioners):
    paper, quick = captioners
    assert [(n, p.shape) for n, p in paper.named_parameters()] == [
        (n, p.shape) for n, p in quick.named_parameters()
    ]
    for key, value in paper.state_dict().items():
        assert torch.equal(quick.state_dict()[key], value)


@pytest.mark.parametrize("captions", [1, 2])
def test_teacher_forcing_outputs_and_gradients(captioners, captions):
    paper, quick = captioners
    paper.dropout.p = quick.dropout.p = 0.0  # the forms draw dropout masks in different shapes
    regions, mask = _regions()
    tokens = torch.randint(4, V, (3, captions, 6) if captions > 1 else (3, 6))
    tokens[0, ..., -2:] = 0  # a caption that ended: <pad> after it
    (logits, attention), (fast_logits, fast_attention) = (
        paper(regions, mask, tokens),
        quick(regions, mask, tokens),
    )
    torch.testing.assert_close(fast_logits, logits, **CLOSE)
    torch.testing.assert_close(fast_attention, attention, **CLOSE)
    assert (fast_attention[~mask.view(3, *[1] * (attention.dim() - 2), 7).expand_as(attention)] == 0).all()
    _assert_same_gradients(paper, quick, logits.logsumexp(-1).sum(), fast_logits.logsumexp(-1).sum())


class TableDropout(torch.nn.Module):
    """Dropout with its masks passed in: mask[b, g, t] for the t-th position of a (B, G, T, H) input, or for the
    t-th call on a (B, G, H) input (a step). The paper form draws one mask per step and the fast form one for all
    steps, so the same generator state gives them different masks; a table gives both the same ones."""

    def __init__(self, masks: torch.Tensor) -> None:
        super().__init__()
        self.masks, self.calls = masks, 0  # (B, G, T, H), already divided by the keep probability

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return h
        if h.dim() == 4:
            return h * self.masks[:, :, : h.size(2)]
        self.calls += 1
        return h * self.masks[:, :, self.calls - 1]


@pytest.mark.parametrize("captions", [1, 2])
def test_teacher_forcing_outputs_and_gradients_with_dropout_on(captioners, captions):
    """caption_shapes trains with the fast form and dropout 0.2: a fast form that drops the dropout, or drops other
    units than the paper form's h2, fails here."""
    paper, quick = captioners
    torch.manual_seed(2)
    masks = (torch.rand(3, captions, 5, H) > 0.3).float() / 0.7  # p = 0.3, the fixture's
    paper.dropout, quick.dropout = TableDropout(masks), TableDropout(masks)
    paper.train(), quick.train()
    regions, mask = _regions()
    tokens = torch.randint(4, V, (3, captions, 6) if captions > 1 else (3, 6))
    (logits, _), (fast_logits, _) = paper(regions, mask, tokens), quick(regions, mask, tokens)
    assert paper.dropout.calls == 5  # one mask per step
    torch.testing.assert_close(fast_logits, logits, **CLOSE)
    paper.eval()
    assert not torch.allclose(paper(regions, mask, tokens)[0], logits)  # the masks change the output
    _assert_same_gradients(paper, quick, logits.logsumexp(-1).sum(), fast_logits.logsumexp(-1).sum())


@pytest.mark.parametrize("beam_size", [1, 3])
@pytest.mark.parametrize("trigrams", [False, True])
def test_beam_search_and_greedy_decode_the_same(captioners, beam_size, trigrams):
    paper, quick = (m.eval() for m in captioners)
    regions, mask = _regions()
    opts = DecodingOptions(beam_size=beam_size, max_length=8, block_trigrams=trigrams)
    decoder = beam_search if beam_size > 1 else (lambda m, r, k, o: sample(m, r, k, o, greedy=True))
    want, got = decoder(paper, regions, mask, opts), decoder(quick, regions, mask, opts)
    assert torch.equal(got.tokens, want.tokens)
    torch.testing.assert_close(got.attention, want.attention, **CLOSE)
    torch.testing.assert_close(got.scores, want.scores, **CLOSE)


def test_sampling_with_dropout_draws_the_same_and_backpropagates_the_same(captioners):
    """Training-mode sampling (dropout on, as in self-critical training): same samples from the same seed."""
    paper, quick = (m.train() for m in captioners)
    regions, mask = _regions()
    opts = DecodingOptions(max_length=6, temperature=0.8)
    torch.manual_seed(4)
    want = sample(paper, regions, mask, opts, num_samples=4, greedy=False)
    torch.manual_seed(4)
    got = sample(quick, regions, mask, opts, num_samples=4, greedy=False)
    assert torch.equal(got.tokens, want.tokens)
    torch.testing.assert_close(got.log_probs, want.log_probs, **CLOSE)
    _assert_same_gradients(paper, quick, want.log_probs.sum(), got.log_probs.sum())


def test_self_critical_pass_with_greedy_baseline_is_the_same(captioners):
    paper, quick = (m.train() for m in captioners)
    regions, mask = _regions()
    opts = DecodingOptions(max_length=6)
    torch.manual_seed(5)
    want_samples, want_greedy = sample_with_greedy(paper, regions, mask, opts, num_samples=3)
    torch.manual_seed(5)
    got_samples, got_greedy = sample_with_greedy(quick, regions, mask, opts, num_samples=3)
    assert torch.equal(got_samples.tokens, want_samples.tokens) and torch.equal(
        got_greedy.tokens, want_greedy.tokens
    )
    torch.testing.assert_close(got_greedy.attention, want_greedy.attention, **CLOSE)
    _assert_same_gradients(paper, quick, want_samples.log_probs.sum(), got_samples.log_probs.sum())


def test_a_checkpoint_of_either_form_loads_into_the_other(captioners, tmp_path):
    paper, quick = (m.eval() for m in captioners)
    with torch.no_grad():
        for p in quick.parameters():
            p.add_(0.01 * torch.randn_like(p))  # "trained" as the fast form
    torch.save(quick.state_dict(), tmp_path / "fast.pt")
    paper.load_state_dict(torch.load(tmp_path / "fast.pt", weights_only=True))
    regions, mask = _regions()
    tokens = torch.randint(4, V, (3, 6))
    torch.testing.assert_close(paper(regions, mask, tokens)[0], quick(regions, mask, tokens)[0], **CLOSE)
    fresh = fast.FastUpDownCaptioner(V, D, embed_dim=E, hidden_dim=H, attention_dim=A).eval()
    fresh.load_state_dict(paper.state_dict())  # ... and back
    torch.testing.assert_close(fresh(regions, mask, tokens)[0], paper(regions, mask, tokens)[0], **CLOSE)


def test_output_rows_padded_for_the_pass_are_cut_off():
    """A vocabulary that is not a multiple of the alignment: the padded rows never show in logits or gradients."""
    paper, quick = _pair(UpDownCaptioner, fast.FastUpDownCaptioner, vocab_size=37, feature_dim=D, embed_dim=E,
                         hidden_dim=H, attention_dim=A, dropout=0.0)  # fmt: skip
    regions, mask = _regions()
    tokens = torch.randint(4, 37, (3, 2, 5))
    logits, fast_logits = paper(regions, mask, tokens)[0], quick(regions, mask, tokens)[0]
    assert fast_logits.shape[-1] == 37
    _assert_same_gradients(paper, quick, logits.square().sum(), fast_logits.square().sum())


def test_step_weights_gather_linear_and_embedding_gradients():
    """One product over all steps gives autograd's per-step sum, for linear and embedding weights, also under bf16."""
    torch.manual_seed(3)
    embed, cell = torch.nn.Embedding(V, 8, padding_idx=0), torch.nn.Linear(8 + 8, 8)
    ids = torch.randint(0, V, (4, 5))
    ids[0, 2] = 0  # <pad> rows get no gradient

    def loss(gathered: bool):
        layers = StepWeights()
        if gathered:
            layers.add_embedding("embed", embed)
            layers.add_linear("cell", cell.weight, cell.bias, align=16)
        h = torch.zeros(4, 8)
        for t in range(5):
            x = layers.embedding("embed", ids[:, t]) if gathered else embed(ids[:, t])
            x = torch.cat([x, h], -1)
            h = torch.tanh(layers.linear("cell", x) if gathered else cell(x))
        return h.square().sum()

    def grads(gathered: bool):
        embed.zero_grad(), cell.zero_grad()
        loss(gathered).backward()
        return [p.grad.clone() for p in (embed.weight, cell.weight, cell.bias)]

    for got, want in zip(grads(True), grads(False)):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    with torch.no_grad():  # no graph, no gathering
        torch.testing.assert_close(loss(True), loss(False))
    with torch.autocast(
        "cpu", dtype=torch.bfloat16
    ):  # low-precision steps, gradients in the parameters' dtype
        low = grads(True)
    assert all(g.dtype == torch.float32 for g in low)
    torch.testing.assert_close(low[1], grads(False)[1], atol=0.05, rtol=0.05)


# -- VQA ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "paper_cls, fast_cls", [(UpDownVQA, fast.FastUpDownVQA), (ReferenceVQA, fast.FastReferenceVQA)]
)
def test_vqa_fast_forms_equal_the_paper_forms(paper_cls, fast_cls):
    paper, quick = _pair(paper_cls, fast_cls, vocab_size=20, num_answers=7, feature_dim=D, hidden_size=H)
    paper.eval(), quick.eval()  # dropout draws differ in order between the forms
    regions, mask = _regions(b=4)
    question = torch.tensor(
        [[4, 5, 6, 7], [4, 5, 0, 0], [7, 0, 0, 0], [0, 0, 0, 0]]
    )  # full, short, one word, empty
    want, got = paper(regions, mask, question), quick(regions, mask, question)
    torch.testing.assert_close(got.logits, want.logits, **CLOSE)
    torch.testing.assert_close(got.attention, want.attention, **CLOSE)
    assert (got.attention[~mask] == 0).all()
    _assert_same_gradients(paper, quick, want.logits.square().sum(), got.logits.square().sum())

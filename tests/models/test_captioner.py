"""The captioners compute their papers' equations: one step of each, recomputed by hand from the weights."""

from functools import partial

import pytest
import torch

from tests.helpers.regions import padded_regions
from vqacap.data.captions import CaptionBatch
from vqacap.data.store import Regions
from vqacap.lightning.captioning import CaptioningModule, doubly_stochastic_penalty
from vqacap.models.attention import AdditiveAttention
from vqacap.models.captioner import UpDownCaptioner
from vqacap.models.decoding import expand_state
from vqacap.models.show_attend_tell import ShowAttendTell

V, D, E, H, A = 30, 12, 8, 16, 10


def _lstm(x, h, c, weight_ih, weight_hh, bias_ih, bias_hh):
    """An LSTM step from its definition (gates input, forget, cell, output)."""
    i, f, g, o = (x @ weight_ih.T + bias_ih + h @ weight_hh.T + bias_hh).chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _attention(att, regions, mask, query):
    """Eq. (3)-(5): additive scores, softmax over the real regions only, attended feature."""
    scores = torch.tanh(
        regions @ att.region_proj.weight.T + (query @ att.query_proj.weight.T + att.query_proj.bias)
    )
    scores = (scores @ att.score.weight.T).squeeze(-1)  # (K,)
    alpha = torch.zeros_like(scores)
    alpha[mask] = torch.softmax(scores[mask], 0)
    return alpha, alpha @ regions


def test_updown_step_is_equations_2_to_7():
    torch.manual_seed(0)
    model = UpDownCaptioner(V, D, embed_dim=E, hidden_dim=H, attention_dim=A, dropout=0.0)
    assert model.attention_lstm.input_size == H + D + E and model.language_lstm.input_size == D + H
    regions, mask = padded_regions()
    context, state = model.start(regions, mask)
    state = type(state)(*(torch.randn_like(t) for t in state))  # a state in the middle of a caption
    words = torch.tensor([[5], [6], [7]])
    logits, alpha, (h1, c1, h2, c2) = model.step(context, state, words)
    a1, a2 = model.attention_lstm, model.language_lstm
    for b in range(3):
        real = regions[b, mask[b]]
        v_bar = real.mean(0)
        x1 = torch.cat([state[2][b, 0], v_bar, model.embed.weight[words[b, 0]]])  # Eq. (2)
        h1_b, c1_b = _lstm(
            x1, state[0][b, 0], state[1][b, 0], a1.weight_ih, a1.weight_hh, a1.bias_ih, a1.bias_hh
        )
        alpha_b, v_hat = _attention(model.attention, regions[b], mask[b], h1_b)  # Eq. (3)-(5)
        x2 = torch.cat([v_hat, h1_b])  # Eq. (6)
        h2_b, c2_b = _lstm(
            x2, state[2][b, 0], state[3][b, 0], a2.weight_ih, a2.weight_hh, a2.bias_ih, a2.bias_hh
        )
        logits_b = h2_b @ model.output.weight.T + model.output.bias  # Eq. (7)
        for got, want in (
            (h1, h1_b),
            (c1, c1_b),
            (alpha, alpha_b),
            (h2, h2_b),
            (c2, c2_b),
            (logits, logits_b),
        ):
            torch.testing.assert_close(got[b, 0], want, rtol=1e-5, atol=1e-6)


def test_show_attend_tell_step_is_its_equations():
    torch.manual_seed(0)
    model = ShowAttendTell(V, D, embed_dim=E, hidden_dim=H, attention_dim=A, dropout=0.0)
    regions, mask = padded_regions()
    context, start = model.start(regions, mask)
    state = expand_state(start, 1)
    words = torch.tensor([[5], [6], [7]])
    logits, alpha, (h, c) = model.step(context, state, words)
    lstm = model.lstm
    for b in range(3):
        v_bar = regions[b, mask[b]].mean(0)
        h0, c0 = torch.tanh(model.init_h(v_bar)), torch.tanh(model.init_c(v_bar))
        torch.testing.assert_close(start.h[b, 0], h0)
        alpha_b, attended = _attention(model.attention, regions[b], mask[b], h0)  # from h_{t-1}
        z = torch.sigmoid(model.gate.weight @ h0 + model.gate.bias) * attended
        word = model.embed.weight[words[b, 0]]
        h_b, c_b = _lstm(
            torch.cat([word, z]), h0, c0, lstm.weight_ih, lstm.weight_hh, lstm.bias_ih, lstm.bias_hh
        )
        deep = word + model.out_hidden.weight @ h_b + model.out_context.weight @ z
        logits_b = model.output.weight @ deep + model.output.bias
        for got, want in ((alpha, alpha_b), (h, h_b), (c, c_b), (logits, logits_b)):
            torch.testing.assert_close(got[b, 0], want, rtol=1e-5, atol=1e-6)


def test_grouped_attention_equals_per_hypothesis_attention():
    torch.manual_seed(2)
    attention = AdditiveAttention(D, H, A)
    regions, mask = padded_regions()
    queries = torch.randn(3, 4, H)
    grouped = attention(attention.project_regions(regions), queries, mask)
    for g in range(4):
        torch.testing.assert_close(
            grouped[:, g], attention(attention.project_regions(regions), queries[:, g], mask)
        )


def test_doubly_stochastic_penalty_by_hand():
    """Xu et al. 2015 Sec. 4.2.1: sum over the real regions of (1 - the attention summed over the caption's steps)^2."""
    attention = torch.tensor([[[0.5, 0.5], [0.9, 0.1], [0.3, 0.7]]])  # (B=1, T=3, K=2)
    emitted = torch.tensor([[True, True, False]])  # the third step is after <eos>
    both = torch.tensor([[True, True]])
    # Coverage over the two steps: 1.4 and 0.6 -> (1 - 1.4)^2 + (1 - 0.6)^2 = 0.32; region 2 padded: 0.16.
    first = torch.tensor([[True, False]])
    assert doubly_stochastic_penalty(attention, emitted, both).item() == pytest.approx(0.32)
    assert doubly_stochastic_penalty(attention, emitted, first).item() == pytest.approx(0.16)
    two = torch.stack([attention, attention.flip(-1)], 1)  # (B=1, G=2, T, K): summed over captions
    steps = emitted.unsqueeze(1).expand(1, 2, 3)
    assert doubly_stochastic_penalty(two, steps, both).item() == pytest.approx(0.64)


def test_show_attend_tell_trains_with_the_penalty_at_lambda_1(make_cfg):
    """The loss is Xu et al.'s per-caption objective (summed -log p + lambda * penalty) over the number of tokens."""
    assert make_cfg("experiment=caption_shapes_sat", tiny=False).model.attention_penalty == 1.0
    assert make_cfg("experiment=caption_shapes", tiny=False).model.attention_penalty == 0.0
    words = ["<pad>", "<bos>", "<eos>", "<unk>", "a", "red", "circle"]
    torch.manual_seed(0)
    module = CaptioningModule(
        net=partial(ShowAttendTell, embed_dim=E, hidden_dim=H, attention_dim=A, dropout=0.0),
        words=words,
        feature_dim=D,
        optimizer=partial(torch.optim.Adam),
        attention_penalty=1.0,
    )
    module.log = lambda *args, **kwargs: None  # no trainer here
    regions, mask = padded_regions()
    store = Regions(features=regions, boxes=torch.zeros(3, 7, 4), mask=mask, image_size=torch.ones(3, 2))
    tokens = torch.tensor([[[1, 4, 5, 6, 2]], [[1, 4, 6, 2, 0]], [[1, 5, 2, 0, 0]]])  # (B, G=1, T)
    loss = module.training_step(CaptionBatch(image_ids=torch.arange(3), regions=store, tokens=tokens), 0)
    logits, attention = module.net(regions, mask, tokens)  # (3, 1, 4, V), (3, 1, 4, K)
    target = tokens[..., 1:]
    nll, penalty, count = 0.0, 0.0, 0
    for b in range(3):
        n = int((target[b, 0] != 0).sum())
        nll -= torch.log_softmax(logits[b, 0, :n], -1).gather(-1, target[b, 0, :n, None]).sum().item()
        coverage = attention[b, 0, :n].sum(0)[mask[b]]
        penalty += ((1 - coverage) ** 2).sum().item()
        count += n
    assert loss.item() == pytest.approx((nll + 1.0 * penalty) / count, rel=1e-5)
    assert penalty > 0.1  # the penalty is not negligible here

"""UpDownVQA and ReferenceVQA: shapes, masked attention, gradients and question padding."""

from __future__ import annotations

import pytest
import torch

from vqacap.models.attention import ConcatAttention, masked_softmax
from vqacap.models.vqa import ReferenceVQA, UpDownVQA

B, K, D, T, V, A, H = 3, 5, 12, 6, 20, 7, 16


MODELS = {"updown": UpDownVQA, "reference": ReferenceVQA}


def _model(name: str, **kwargs) -> UpDownVQA | ReferenceVQA:
    torch.manual_seed(0)
    return MODELS[name](vocab_size=V, num_answers=A, feature_dim=D, hidden_size=H, **kwargs)


def _batch():
    torch.manual_seed(1)
    regions = torch.randn(B, K, D)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] + [False] * 4])
    question = torch.tensor([[4, 5, 6, 7, 8, 9], [4, 5, 6, 0, 0, 0], [7, 0, 0, 0, 0, 0]])
    return regions, mask, question


@pytest.mark.parametrize("name", ["updown", "reference"])
def test_output_shapes_and_attention_sums_to_one(name):
    regions, mask, question = _batch()
    out = _model(name).eval()(regions, mask, question)
    assert out.logits.shape == (B, A)
    assert out.attention.shape == (B, K)
    assert torch.allclose(out.attention.sum(dim=1), torch.ones(B))


@pytest.mark.parametrize("name", ["updown", "reference"])
def test_padded_regions_get_zero_attention(name):
    regions, mask, question = _batch()
    model = _model(name).eval()
    out = model(regions, mask, question)
    assert (out.attention[~mask] == 0).all()
    # Whatever the padded slots hold, the answer scores do not change.
    noisy = regions.masked_fill(~mask.unsqueeze(-1), 1e3)
    assert torch.allclose(model(noisy, mask, question).logits, out.logits, atol=1e-5)


@pytest.mark.parametrize("name", ["updown", "reference"])
def test_padded_question_tokens_do_not_change_the_output(name):
    regions, mask, question = _batch()
    model = _model(name).eval()
    longer = torch.cat([question, torch.zeros(B, 4, dtype=torch.long)], dim=1)
    assert torch.allclose(
        model(regions, mask, longer).logits, model(regions, mask, question).logits, atol=1e-6
    )
    # Each question alone gives the answer it gets in the batch.
    single = model(regions[2:], mask[2:], question[2:, :1]).logits
    assert torch.allclose(single, model(regions, mask, question).logits[2:], atol=1e-6)


@pytest.mark.parametrize("name", ["updown", "reference"])
def test_gradients_reach_every_parameter(name):
    regions, mask, question = _batch()
    model = _model(name).train()
    model(regions, mask, question).logits.sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_models_use_their_layers():
    updown, reference = _model("updown"), _model("reference")
    assert type(updown.f_q).__name__ == "GatedTanh"
    assert updown.w_o.in_features == H and updown.dropout.p == 0.0
    # Reference classifier: weight-normed H -> 2H -> A, dropout 0.5.
    assert reference.w_o.in_features == 2 * H and reference.dropout.p == 0.5
    assert hasattr(reference.w_o, "parametrizations") and hasattr(reference.f_q[0], "parametrizations")


def test_word_embeddings_and_spatial_features():
    glove = torch.randn(V, 300)
    torch.manual_seed(0)
    model = UpDownVQA(
        vocab_size=V, num_answers=A, feature_dim=D + 6, hidden_size=H, word_embeddings=glove
    ).eval()
    assert torch.equal(model.embedding.weight[1:], glove[1:])
    assert (model.embedding.weight[0] == 0).all()  # <pad>
    regions, mask, question = _batch()
    regions = torch.cat([regions, torch.rand(B, K, 6)], dim=-1)  # features + Regions.spatial()
    assert model(regions, mask, question).logits.shape == (B, A)
    with pytest.raises(ValueError, match="word_embeddings have shape"):
        _model("updown", word_embeddings=torch.randn(V, 50))


def test_concat_attention_equals_gated_tanh_of_the_concatenation():
    regions, mask, _ = _batch()
    attention = ConcatAttention(D, H, 8)
    query = torch.randn(B, H)
    concat = torch.cat([regions, query.unsqueeze(1).expand(-1, K, -1)], dim=-1)  # [v_i; q], (B, K, D + H)
    expected = masked_softmax(attention.w_a(attention.f_a(concat)).squeeze(-1), mask)
    assert torch.allclose(attention(regions, query, mask), expected, atol=1e-6)


def test_question_encoder_reads_only_the_real_words():
    model = _model("reference")
    _, _, question = _batch()
    got = model.encode_question(question)
    for b, row in enumerate(question.tolist()):
        words = torch.tensor([[t for t in row if t != 0]])
        _, h = model.question_encoder(model.embedding(words))
        torch.testing.assert_close(got[b], h[0, 0], rtol=1e-5, atol=1e-6)


def test_updown_starts_from_glorot_scale():
    model = _model("updown")
    # The gated tanh layers' stacked [W; W'] have 2 * out rows; each half's bound is from its own out rows.
    for layer, halves in ((model.f_v.linear, 2), (model.attention.f_a.linear, 2), (model.w_o, 1)):
        rows, fan_in = layer.weight.shape
        bound = (6 / (fan_in + rows // halves)) ** 0.5
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.9 * bound
        assert (layer.bias == 0).all()


def test_gated_tanh_layers_get_glorot_bounds_of_their_own_fan_in_and_fan_out():
    from vqacap.models.layers import GatedTanh

    torch.manual_seed(0)
    model = UpDownVQA(vocab_size=20, num_answers=10, feature_dim=300, hidden_size=100)
    bound, stacked_bound = (6 / (300 + 100)) ** 0.5, (6 / (300 + 200)) ** 0.5
    layer = model.f_v  # (300 -> 100): W and W' are (100, 300) halves of one (200, 300) matrix
    assert isinstance(layer, GatedTanh)
    for half in layer.linear.weight.detach().chunk(2):
        # 30,000 uniform draws reach within 1% of their bound, far above the stacked matrix's bound
        assert stacked_bound < 0.99 * bound < half.abs().max().item() <= bound
    assert (layer.linear.bias == 0).all()

"""UpDownVQA: shapes, masked attention, gradients and question padding, for both variants."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from vqacap.models.attention import masked_softmax
from vqacap.models.vqa import ConcatAttention, GatedTanh, UpDownVQA

B, K, D, T, V, A, H = 3, 5, 12, 6, 20, 7, 16


def _model(variant: str, **kwargs) -> UpDownVQA:
    torch.manual_seed(0)
    return UpDownVQA(vocab_size=V, num_answers=A, feature_dim=D, variant=variant, hidden_size=H, **kwargs)


def _batch():
    torch.manual_seed(1)
    regions = torch.randn(B, K, D)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] + [False] * 4])
    question = torch.tensor([[4, 5, 6, 7, 8, 9], [4, 5, 6, 0, 0, 0], [7, 0, 0, 0, 0, 0]])
    return regions, mask, question


@pytest.mark.parametrize("variant", ["updown", "reference"])
def test_output_shapes_and_attention_sums_to_one(variant):
    regions, mask, question = _batch()
    out = _model(variant).eval()(regions, mask, question)
    assert out.logits.shape == (B, A)
    assert out.attention.shape == (B, K)
    assert torch.allclose(out.attention.sum(dim=1), torch.ones(B))


@pytest.mark.parametrize("variant", ["updown", "reference"])
def test_padded_regions_get_zero_attention(variant):
    regions, mask, question = _batch()
    model = _model(variant).eval()
    out = model(regions, mask, question)
    assert (out.attention[~mask] == 0).all()
    # Whatever the padded slots hold, the answer scores do not change.
    noisy = regions.masked_fill(~mask.unsqueeze(-1), 1e3)
    assert torch.allclose(model(noisy, mask, question).logits, out.logits, atol=1e-5)


@pytest.mark.parametrize("variant", ["updown", "reference"])
def test_padded_question_tokens_do_not_change_the_output(variant):
    regions, mask, question = _batch()
    model = _model(variant).eval()
    longer = torch.cat([question, torch.zeros(B, 4, dtype=torch.long)], dim=1)
    assert torch.allclose(
        model(regions, mask, longer).logits, model(regions, mask, question).logits, atol=1e-6
    )
    # Each question alone gives the answer it gets in the batch.
    single = model(regions[2:], mask[2:], question[2:, :1]).logits
    assert torch.allclose(single, model(regions, mask, question).logits[2:], atol=1e-6)


@pytest.mark.parametrize("variant", ["updown", "reference"])
def test_gradients_reach_every_parameter(variant):
    regions, mask, question = _batch()
    model = _model(variant).train()
    model(regions, mask, question).logits.sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_variants_use_their_layers():
    updown, reference = _model("updown"), _model("reference")
    assert type(updown.f_q).__name__ == "GatedTanh"
    assert updown.w_o.in_features == H and updown.dropout.p == 0.0
    # Reference classifier: weight-normed H -> 2H -> A, dropout 0.5.
    assert reference.w_o.in_features == 2 * H and reference.dropout.p == 0.5
    assert hasattr(reference.w_o, "parametrizations") and hasattr(reference.f_q[0], "parametrizations")


def test_word_embeddings_and_spatial_features():
    glove = torch.randn(V, 300)
    model = _model("updown", word_embeddings=glove, spatial=True).eval()
    assert torch.equal(model.embedding.weight[1:], glove[1:])
    assert (model.embedding.weight[0] == 0).all()  # <pad>
    regions, mask, question = _batch()
    regions = torch.cat([regions, torch.rand(B, K, 6)], dim=-1)  # features + Regions.spatial()
    assert model(regions, mask, question).logits.shape == (B, A)
    with pytest.raises(ValueError, match="word_embeddings have shape"):
        _model("updown", word_embeddings=torch.randn(V, 50))
    with pytest.raises(ValueError, match="variant must be one of"):
        _model("transformer")


def test_concat_attention_equals_gated_tanh_of_the_concatenation():
    regions, mask, _ = _batch()
    attention = ConcatAttention(D, H, 8)
    query = torch.randn(B, H)
    concat = torch.cat([regions, query.unsqueeze(1).expand(-1, K, -1)], dim=-1)  # [v_i; q], (B, K, D + H)
    expected = masked_softmax(attention.w_a(attention.f_a(concat)).squeeze(-1), mask)
    assert torch.allclose(attention(regions, query, mask), expected, atol=1e-6)


def test_gated_tanh_loads_checkpoints_with_separate_gate_weights():
    torch.manual_seed(3)
    linear, gate = torch.nn.Linear(D, H), torch.nn.Linear(D, H)
    old = {
        "linear.weight": linear.weight,
        "linear.bias": linear.bias,
        "gate.weight": gate.weight,
        "gate.bias": gate.bias,
    }
    layer = GatedTanh(D, H)
    layer.load_state_dict({k: v.detach().clone() for k, v in old.items()})
    x = torch.randn(B, D)
    assert torch.allclose(layer(x), torch.tanh(linear(x)) * torch.sigmoid(gate(x)), atol=1e-6)


def test_question_encoder_equals_packed_gru():
    model = _model("reference")
    _, _, question = _batch()
    question = torch.cat([question, torch.tensor([[0, 0, 0, 0, 0, 0], [5, 6, 7, 8, 9, 4]])])  # empty, full
    lengths = (question != 0).sum(dim=1).clamp(min=1)
    packed = pack_padded_sequence(model.embedding(question), lengths, batch_first=True, enforce_sorted=False)
    _, expected = model.question_encoder(packed)
    got = model.encode_question(question)
    assert torch.allclose(got, expected.squeeze(0), atol=1e-6)
    # ... and so are the gradients.
    params = [model.embedding.weight, *model.question_encoder.parameters()]
    grads = torch.autograd.grad(got.square().sum(), params)
    expected_grads = torch.autograd.grad(expected.square().sum(), params)
    for g, e in zip(grads, expected_grads):
        assert torch.allclose(g, e, atol=1e-5)


def test_updown_starts_from_glorot_scale():
    model = _model("updown")
    for layer in (model.f_v.linear, model.attention.f_a.linear, model.w_o):
        fan_out, fan_in = layer.weight.shape
        bound = (6 / (fan_in + fan_out)) ** 0.5
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.9 * bound
        assert (layer.bias == 0).all()

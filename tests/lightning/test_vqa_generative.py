"""Generative VQA: answers decoded word by word by the shared decoders, trained on the soft-scored human answers and
scored as a classifier's answers; open-vocabulary answers on Shapes; the question encoder's pooling."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from tests.helpers.configs import NO_LOGGER
from tests.helpers.regions import padded_regions
from vqacap.data.answers import process_answer
from vqacap.data.store import Regions
from vqacap.data.vocab import BOS_ID, EOS_ID, PAD_ID
from vqacap.data.vqa import VQABatch
from vqacap.lightning.loading import load_module
from vqacap.lightning.vqa_generative import GenerativeVQAModule, answer_tokens, answer_vocabulary
from vqacap.metrics.vqa import evaluate_vqa
from vqacap.metrics.vqa.seen import SeenAnswerAccuracy
from vqacap.models.decoding import DecodingOptions, beam_search, decode, sample
from vqacap.models.fast import FastReferenceVQA, FastUpDownVQA
from vqacap.models.vqa import ReferenceVQA, UpDownVQA
from vqacap.models.vqa_generative import GenerativeVQA
from vqacap.shapes import HELD_OUT_ANSWERS, generate
from vqacap.train import run

TINY_GENERATIVE = [
    "model.net.hidden_size=32",
    "model.net.embedding_dim=16",
    "model.net.answer_embedding_dim=16",
    "model.net.attention_dim=16",
]
D = 16


def questions() -> torch.Tensor:
    """Three questions of 5, 3 and 1 words, padded with <pad> (0)."""
    return torch.tensor([[5, 6, 7, 8, 9], [4, 10, 6, 0, 0], [11, 0, 0, 0, 0]])


def generative(pooling: str = "last") -> GenerativeVQA:
    torch.manual_seed(0)
    return GenerativeVQA(
        vocab_size=12,
        answer_vocab_size=9,
        feature_dim=D,
        hidden_size=20,
        embedding_dim=8,
        answer_embedding_dim=6,
        attention_dim=10,
        dropout=0.3,
        question_pooling=pooling,
    ).eval()


# -- decoding -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_beam_of_one_equals_greedy_decoding(pooling):
    model = generative(pooling)
    regions, mask = padded_regions(3, 7, D)
    answerer = model.given(questions())
    opts = DecodingOptions(beam_size=1, max_length=4)
    greedy = sample(answerer, regions, mask, opts, greedy=True)
    beam = beam_search(answerer, regions, mask, opts)
    assert torch.equal(greedy.tokens, beam.tokens)
    assert torch.allclose(greedy.scores, beam.scores, atol=1e-5)
    assert torch.allclose(greedy.attention, beam.attention, atol=1e-6)
    assert torch.equal(decode(answerer, regions, mask, opts).tokens, greedy.tokens)


def test_teacher_forcing_scores_the_tokens_greedy_decoding_chose():
    model = generative()
    regions, mask = padded_regions(3, 7, D)
    answerer = model.given(questions())
    greedy = sample(answerer, regions, mask, DecodingOptions(max_length=4), greedy=True)
    tokens = torch.cat([torch.full((3, 1, 1), BOS_ID), greedy.tokens], -1)  # (B, 1, T + 1)
    logits, _ = model(regions, mask, questions(), tokens)  # (B, 1, T, V)
    logp = torch.log_softmax(logits, -1).gather(-1, greedy.tokens.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(logp.masked_fill(greedy.tokens == PAD_ID, 0.0).sum(-1), greedy.scores, atol=1e-5)


def test_padded_regions_get_no_attention_and_change_no_answer():
    model = generative()
    regions, mask = padded_regions(3, 7, D)
    answerer = model.given(questions())
    opts = DecodingOptions(beam_size=2, max_length=4)
    decoded = decode(answerer, regions, mask, opts)
    assert (decoded.attention[~mask.unsqueeze(1).unsqueeze(1).expand_as(decoded.attention)] == 0).all()
    noisy = regions.masked_fill(~mask.unsqueeze(-1), 7.0)
    assert torch.equal(decode(answerer, noisy, mask, opts).tokens, decoded.tokens)


# -- question pooling ---------------------------------------------------------------------------------------------------
def unpadded_gru_states(model, question: torch.Tensor) -> list[torch.Tensor]:
    """The GRU states over each question's real words alone, one question at a time (no padding anywhere)."""
    out = []
    for row in question:
        words = row[row != PAD_ID].unsqueeze(0)  # (1, n)
        states, _ = model.question_encoder(model.embedding(words))  # (1, n, H)
        out.append(states[0])
    return out


@pytest.mark.parametrize("cls", [UpDownVQA, ReferenceVQA, FastUpDownVQA, FastReferenceVQA, GenerativeVQA])
def test_mean_pooling_is_the_mean_of_an_unpadded_gru_run_and_last_its_final_state(cls):
    torch.manual_seed(0)
    kwargs = {"answer_vocab_size": 9} if cls is GenerativeVQA else {"num_answers": 5}
    means, lasts = (
        cls(vocab_size=12, feature_dim=D, hidden_size=20, embedding_dim=8, question_pooling=pooling, **kwargs)
        for pooling in ("mean", "last")
    )
    lasts.load_state_dict(means.state_dict())
    question = questions()
    states = unpadded_gru_states(means, question)
    expected_mean = torch.stack([s.mean(0) for s in states])
    expected_last = torch.stack([s[-1] for s in states])
    assert torch.allclose(means.encode_question(question), expected_mean, atol=1e-6)
    assert torch.allclose(lasts.encode_question(question), expected_last, atol=1e-6)
    # More padding changes nothing.
    wider = torch.cat([question, torch.zeros(3, 4, dtype=torch.long)], 1)
    assert torch.allclose(means.encode_question(wider), expected_mean, atol=1e-6)


def test_an_unknown_pooling_is_refused_in_one_line():
    with pytest.raises(ValueError, match="question_pooling='max': expected one of last, mean"):
        UpDownVQA(vocab_size=12, num_answers=5, feature_dim=D, hidden_size=20, question_pooling="max")


# -- answers: words, training targets, scoring ----------------------------------------------------------------------
def test_candidate_answers_decode_to_exactly_their_strings():
    answers = ["yes", "2", "red circle", "don't know", "3.5"]
    vocab = answer_vocabulary(answers)
    tokens = answer_tokens(vocab, answers)
    assert tokens[:, 0].eq(BOS_ID).all()
    assert tokens[2].tolist() == [BOS_ID, vocab.index["red"], vocab.index["circle"], EOS_ID]
    assert vocab.decode_batch(tokens[:, 1:]) == answers


def test_loss_weights_each_human_answer_by_its_normalised_soft_score(make_cfg):
    """Hand-computed: humans give "red circle" 7 times and "red" 3 times (soft scores 1 and .9), so the loss is
    -(1/1.9 log p(red circle) + .9/1.9 log p(red)); a question with no candidate answer adds nothing."""
    cfg = make_cfg("experiment=vqa_shapes_generative", *TINY_GENERATIVE)
    answers = ["yes", "red", "red circle"]
    module = instantiate(
        cfg.model,
        words=["<pad>", "<bos>", "<eos>", "<unk>", *[f"w{i}" for i in range(8)]],
        answers=answers,
        answer_types=["other"],
        question_types=["what is the"],
        feature_dim=D,
    )
    module.eval()
    regions, mask = (t[:2] for t in padded_regions(3, 7, D))
    boxes = torch.zeros(2, 7, 4)
    batch = VQABatch(
        question_ids=torch.tensor([1, 2]),
        image_ids=torch.tensor([1, 2]),
        regions=Regions(regions, boxes, mask, torch.full((2, 2), 64.0)),
        questions=questions()[:2],
        targets=torch.tensor([[0.0, 0.9, 1.0], [0.0, 0.0, 0.0]]),
    )
    loss = module._answer_loss(batch)
    answerer = module.net.given(batch.questions[:1])

    def log_p(answer: str) -> torch.Tensor:
        ids = [BOS_ID, *(module.answer_vocab.index[w] for w in answer.split()), EOS_ID]
        logits, _ = answerer(regions[:1], mask[:1], torch.tensor([ids]))
        return torch.log_softmax(logits[0], -1).gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).sum()

    expected = -(1 / 1.9 * log_p("red circle") + 0.9 / 1.9 * log_p("red")) / 2  # averaged over both questions
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_decoded_strings_are_scored_with_the_official_normalisation_and_groups():
    metric = SeenAnswerAccuracy(["number", "other"], ["how many", "what is the"])
    humans = [
        [
            "Two.",
            "two",
            "2",
            "2",
            "3",
            "2",
            "2",
            "two",
            "2",
            "2",
        ],  # "2" matches all but one after normalisation
        ["red triangle"] * 10,  # all identical: nothing is normalised
        ["Red Triangle."] * 9 + ["red triangle"],  # not identical: both normalise to "red triangle"
    ]
    metric.update(
        ["2", "Red triangle", "red triangle"],
        humans,
        torch.tensor([1, 2, 3]),
        torch.tensor([0, 1, 1]),
        torch.tensor([0, 1, 1]),
        torch.tensor([True, False, False]),
    )
    scores = metric.compute()
    # "2": each leave-one-out set of 9 has 8 or 9 matches -> 1. "Red triangle" vs ten verbatim "red triangle" -> 0
    # (the evaluator's quirk). The third -> 1.
    assert scores["overall"].item() == pytest.approx(100 * 2 / 3)
    assert scores["perAnswerSeen"]["seen"].item() == pytest.approx(100.0)
    assert scores["perAnswerSeen"]["held_out"].item() == pytest.approx(50.0)
    assert process_answer("Red Triangle.") == "red triangle"


# -- Shapes: answers held out of training ----------------------------------------------------------------------------
def test_held_out_answers_never_occur_in_training_while_their_words_do(tmp_path):
    root = generate(tmp_path / "shapes", sizes={"train": 150, "val": 20, "test": 40}, feature_dim=8)

    def annotations(split):
        return json.loads((root / f"vqa_{split}_annotations.json").read_text())["annotations"]

    train = annotations("train")
    train_strings = {process_answer(h["answer"]) for a in train for h in a["answers"]}
    assert not train_strings & HELD_OUT_ANSWERS
    assert all(a["answer_seen"] for a in train)
    train_words = {w for a in train for w in a["multiple_choice_answer"].split()}
    assert {w for answer in HELD_OUT_ANSWERS for w in answer.split()} <= train_words
    assert any(a["multiple_choice_answer"].count(" ") == 1 for a in train)  # two-word answers are trained
    test = annotations("test")
    held_out = [a for a in test if not a["answer_seen"]]
    assert held_out and all(a["multiple_choice_answer"] in HELD_OUT_ANSWERS for a in held_out)
    assert all(a["answer_seen"] == (a["multiple_choice_answer"] not in HELD_OUT_ANSWERS) for a in test)


# -- end to end through the real configs ------------------------------------------------------------------------------
@pytest.mark.parametrize("experiment", ["vqa_shapes_generative", "vqa_shapes_generative_blind"])
def test_a_run_writes_decoded_answers_that_the_official_evaluator_scores_as_logged(
    make_cfg, data_root, experiment
):
    cfg = make_cfg(f"experiment={experiment}", *TINY_GENERATIVE, "debug=fdr")
    metrics = run(cfg)
    out, shapes = Path(cfg.paths.output_dir), data_root / "shapes"
    results = json.loads((out / "vqa_test_results.json").read_text())
    assert results and set(results[0]) == {"question_id", "answer"}
    # fdr tests one batch: score those questions with the official evaluator.
    asked = {r["question_id"] for r in results}
    questions_json = json.loads((shapes / "vqa_test_questions.json").read_text())
    annotations_json = json.loads((shapes / "vqa_test_annotations.json").read_text())
    questions_json["questions"] = [q for q in questions_json["questions"] if q["question_id"] in asked]
    annotations_json["annotations"] = [
        a for a in annotations_json["annotations"] if a["question_id"] in asked
    ]
    official = evaluate_vqa(questions_json, annotations_json, results)
    assert metrics["test/accuracy"] == pytest.approx(official["overall"], abs=1e-4)
    for name, value in official["perAnswerType"].items():
        assert metrics[f"test/accuracy_{name.replace('/', '_')}"] == pytest.approx(value, abs=1e-4)
    held_out = [a for a in annotations_json["annotations"] if not a["answer_seen"]]
    if held_out:
        assert "test/accuracy_held_out_answers" in metrics
    assert not math.isnan(metrics["test/loss"])


def test_a_checkpoint_reloads_and_predicts_answers_with_attention_and_top_answers(make_cfg, data_root):
    cfg = make_cfg(
        "experiment=vqa_shapes_generative",
        *TINY_GENERATIVE,
        *NO_LOGGER,
        "+trainer.limit_train_batches=2",
        "test=false",
        tiny=False,
    )
    run(cfg)
    checkpoint = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    module = load_module(checkpoint)
    assert isinstance(module, GenerativeVQAModule)
    datamodule = instantiate(cfg.data, _recursive_=False)
    datamodule.prepare_data()
    datamodule.setup("test")
    batch = datamodule.examples("test", datamodule.example_ids("test", 3))
    records = module.predict_step(batch, 0)
    decoded = module.answer_vocab.decode_batch(module(batch).tokens[:, 0])
    assert [r["answer"] for r in records] == decoded
    for record in records:
        assert record["attention"].sum().item() == pytest.approx(1.0, abs=1e-5)
        assert len(record["top_answers"]) == module.predict_top_k
        probabilities = [p for _, p in record["top_answers"]]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-6

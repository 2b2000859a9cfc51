"""VQA DataModule on small files in the official VQA formats: vocabularies, soft targets, batches, GloVe."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vqacap.data.answers import answer_accuracy
from vqacap.data.store import RegionStoreError, RegionStoreWriter
from vqacap.data.vocab import UNK_ID
from vqacap.data.vqa import VQADataModule, load_glove
from vqacap.metrics.vqa.metric import batch_accuracy

LONG_QUESTION = (
    "How many dogs are there in this picture of a park on a sunny day in the middle of summer?"  # 20 words
)


def _ann(qid, image_id, qtype, atype, mc, answers):
    return {
        "question_id": qid, "image_id": image_id, "question_type": qtype, "answer_type": atype,
        "multiple_choice_answer": mc,
        "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)],
    }  # fmt: skip


TRAIN = [
    ({"image_id": 1, "question": "What color is the ball?", "question_id": 11},
     _ann(11, 1, "what color is the", "other", "red", ["red"] * 7 + ["Red."] + ["blue"] * 2)),
    ({"image_id": 1, "question": LONG_QUESTION, "question_id": 12},
     _ann(12, 1, "how many", "number", "2", ["two"] * 5 + ["2"] * 5)),
    ({"image_id": 2, "question": "Is it sunny?", "question_id": 13},
     _ann(13, 2, "is it", "yes/no", "yes", ["yes"] * 10)),
    ({"image_id": 2, "question": "What color is the car?", "question_id": 14},
     _ann(14, 2, "what color is the", "other", "Red.", ["red"] * 4 + ["orange"] * 6)),
    ({"image_id": 3, "question": "Is it raining?", "question_id": 15},
     _ann(15, 3, "is it", "yes/no", "yes", ["yes"] * 9 + ["no"])),
    ({"image_id": 3, "question": "What animal is it?", "question_id": 16},
     _ann(16, 3, "what animal is", "other", "zebra", ["zebra"] * 10)),
]  # fmt: skip
VAL = [
    ({"image_id": 3, "question": "What is the zebra doing?", "question_id": 31},
     _ann(31, 3, "what is the", "other", "eating", ["eating"] * 6 + ["red"] * 4)),
    ({"image_id": 1, "question": "Is the ball red?", "question_id": 32},
     _ann(32, 1, "is the", "yes/no", "yes", ["yes"] * 10)),
]  # fmt: skip


@pytest.fixture
def vqa_dir(tmp_path):
    rng = np.random.default_rng(0)
    with RegionStoreWriter(tmp_path / "regions.h5", feature_dim=8, dtype="float32") as store:
        for image_id, k in ((1, 3), (2, 5), (3, 2)):
            store.add(image_id, rng.random((k, 8)), np.tile([0, 0, 10, 10], (k, 1)), 20, 20)
    for split, items in (("train", TRAIN), ("val", VAL)):
        (tmp_path / f"vqa_{split}_questions.json").write_text(
            json.dumps({"questions": [q for q, _ in items]})
        )
        (tmp_path / f"vqa_{split}_annotations.json").write_text(
            json.dumps({"annotations": [a for _, a in items]})
        )
    # test-dev style: questions only
    test = [{"image_id": 2, "question": "What is that?", "question_id": 41}]
    (tmp_path / "vqa_test_questions.json").write_text(json.dumps({"questions": test}))
    return tmp_path


def _datamodule(vqa_dir, **kwargs) -> VQADataModule:
    dm = VQADataModule(str(vqa_dir), min_answer_count=2, batch_size=4, eval_batch_size=4, **kwargs)
    dm.prepare_data()
    return dm


def test_answer_vocabulary_is_normalised_frequent_training_answers(vqa_dir):
    answers = _datamodule(vqa_dir).answers
    # "red" and "Red." count together; "2" and "zebra" are seen once; most frequent first, ties alphabetical.
    assert answers.answers == ["red", "yes"]
    assert answers.answer_types == ["number", "other", "yes/no"]
    # Type names come from every annotated split, so validation-only types have an id.
    assert answers.question_types == [
        "how many",
        "is it",
        "is the",
        "what animal is",
        "what color is the",
        "what is the",
    ]


def test_questions_are_tokenized_and_truncated_to_14_words(vqa_dir):
    dm = _datamodule(vqa_dir)
    dm.setup("fit")
    split = dm.splits["train"]
    assert split.questions.shape == (len(TRAIN), 14)
    assert dm.vocab.decode(split.questions[1]) == " ".join(LONG_QUESTION.lower().rstrip("?").split()[:14])
    assert dm.vocab.decode(split.questions[0]) == "what color is the ball"


def test_soft_targets_are_official_accuracies(vqa_dir):
    dm = _datamodule(vqa_dir)
    dm.setup("fit")
    batch = dm.eval_set("train").collate(list(range(len(TRAIN))))
    red, yes = dm.answers.index["red"], dm.answers.index["yes"]
    assert batch.targets.shape == (len(TRAIN), 2)
    for row, (_, ann) in enumerate(TRAIN):
        human = [a["answer"] for a in ann["answers"]]
        for answer, index in (("red", red), ("yes", yes)):
            assert batch.targets[row, index].item() == pytest.approx(answer_accuracy(answer, human))
        # The metric's view of the same question agrees with the target.
        for index in (red, yes):
            pred = torch.tensor([index])
            assert batch_accuracy(pred, batch.gt_answers[row : row + 1]).item() == pytest.approx(
                batch.targets[row, index].item()
            )
    assert batch.targets[0, red].item() == pytest.approx(1.0)  # 7 + "Red." normalised
    assert batch.targets[3, red].item() == pytest.approx(1.0)  # 4 of 10
    assert batch.targets[1].sum() == 0 and (batch.gt_answers[1] == -1).all()  # "2" is not a candidate
    assert batch.targets[5].sum() == 0  # "zebra" is not a candidate
    assert batch.answer_types.tolist() == [1, 0, 2, 1, 2, 1]
    assert batch.question_ids.tolist() == [11, 12, 13, 14, 15, 16]


def test_batches_carry_padded_regions(vqa_dir):
    dm = _datamodule(vqa_dir)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert batch.regions.features.shape == (2, 3, 8)  # images 3 (2 regions) and 1 (3 regions)
    assert batch.regions.mask.tolist() == [[True, True, False], [True, True, True]]
    assert batch.questions.shape == (2, 14)
    assert batch.to("cpu").regions.mask.tolist() == batch.regions.mask.tolist()


def test_unannotated_split_has_no_targets(vqa_dir):
    dm = _datamodule(vqa_dir)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch.question_ids.tolist() == [41]
    assert batch.targets is None and batch.gt_answers is None
    assert batch.questions[0, 2].item() == UNK_ID  # "that" is not a training word


def test_zero_regions_blinds_the_model(vqa_dir):
    dm = _datamodule(vqa_dir, zero_regions=True)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert (batch.regions.features == 0).all() and (batch.regions.boxes == 0).all()
    assert batch.regions.mask.any()


def test_test_split_selects_the_split_answered(vqa_dir):
    dm = _datamodule(vqa_dir, test_split="val")
    dm.setup("test")
    assert [int(q) for b in dm.test_dataloader() for q in b.question_ids] == [31, 32]


def test_images_missing_from_the_store_are_named(vqa_dir):
    questions = json.loads((vqa_dir / "vqa_val_questions.json").read_text())
    questions["questions"][0]["image_id"] = 99
    (vqa_dir / "vqa_val_questions.json").write_text(json.dumps(questions))
    dm = _datamodule(vqa_dir)
    with pytest.raises(
        RegionStoreError, match="1 images of .*vqa_val_questions.json are not in the store.*99"
    ):
        dm.setup("validate")


def test_model_kwargs(vqa_dir):
    kwargs = _datamodule(vqa_dir).model_kwargs()
    assert kwargs["answers"] == ["red", "yes"] and kwargs["feature_dim"] == 8
    assert kwargs["words"][:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    assert "word_embeddings" not in kwargs


def test_glove_initialisation(vqa_dir):
    glove = vqa_dir / "glove.6B.300d.txt"
    glove.write_text("color " + " ".join(["0.5"] * 300) + "\nnotaword " + " ".join(["1"] * 300) + "\n")
    dm = _datamodule(vqa_dir, glove=str(glove))
    weights = dm.model_kwargs()["word_embeddings"]
    assert weights.shape == (len(dm.vocab), 300)
    assert (weights[dm.vocab.index["color"]] == 0.5).all()
    assert (
        weights[dm.vocab.index["ball"]] == 0
    ).all()  # no GloVe vector: zeros, as the reference implementation


def test_missing_glove_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="glove.6B.300d.txt: GloVe file not found.*data.glove=null"):
        load_glove(tmp_path / "glove.6B.300d.txt", ["<pad>", "what"])


def test_a_question_longer_than_the_model_reads_is_noted(caplog):
    """A 10k-character question was cut to its first words without a note."""
    from vqacap.data.pixels import encode_question

    words = ["<pad>", "<bos>", "<eos>", "<unk>", "what", "colour", "is", "it"]
    question = "what colour is it " * 600
    ids = encode_question(question, words, max_length=14)
    assert len(ids) == 14
    assert caplog.messages == [
        "--question: 2400 words; the model reads the first 14 ("
        + "what colour is it " * 3
        + "what colour ...)"
    ]
    caplog.clear()
    encode_question("what colour is it", words, max_length=14)
    assert caplog.messages == []

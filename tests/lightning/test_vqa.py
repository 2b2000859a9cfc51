"""VQA experiments through the real Hydra configs on tiny Shapes: fast_dev_run, checkpoint -> official results file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers.configs import NO_LOGGER, OVERFIT
from tests.helpers.runs import logged
from vqacap.metrics.vqa import evaluate_vqa
from vqacap.train import run

TINY_VQA = ["model.net.hidden_size=32", "model.net.embedding_dim=16"]
ANSWER_TYPES = {"test/accuracy_yes_no", "test/accuracy_number", "test/accuracy_other"}


@pytest.mark.parametrize(
    "overrides",
    [["experiment=vqa_shapes"], ["experiment=vqa_shapes_blind"], ["experiment=vqa_shapes", "model=vqa_reference"]],
    ids=["vqa_shapes", "vqa_shapes_blind", "vqa_reference"],
)  # fmt: skip
def test_fast_dev_run(make_cfg, overrides):
    cfg = make_cfg(*overrides, *TINY_VQA, "debug=fdr")
    metrics = run(cfg)
    assert ANSWER_TYPES | {"test/loss"} <= set(metrics)
    results = json.loads((Path(cfg.paths.output_dir) / "vqa_test_results.json").read_text())
    assert results and set(results[0]) == {"question_id", "answer"}
    # The logged accuracy is that of the written answers (the questions of the one test batch), recomputed here
    # with the VQA accuracy written out: mean over the 10 sets of 9 humans of min(1, agreeing humans / 3).
    annotations = json.loads((Path(cfg.data.data_dir) / "vqa_test_annotations.json").read_text())[
        "annotations"
    ]
    humans = {a["question_id"]: [h["answer"] for h in a["answers"]] for a in annotations}
    scores = []
    for r in results:
        answers = humans[r["question_id"]]
        others = [answers[:k] + answers[k + 1 :] for k in range(len(answers))]
        scores.append(sum(min(1.0, o.count(r["answer"]) / 3) for o in others) / len(others))
    assert metrics["test/accuracy"] == pytest.approx(100 * sum(scores) / len(scores), abs=1e-4)


def test_overfitting_a_few_batches_drives_the_loss_down(make_cfg, tmp_path):
    cfg = make_cfg(
        "experiment=vqa_shapes",
        *TINY_VQA,
        *OVERFIT,
        "trainer.max_epochs=12",
    )
    run(cfg)
    losses = logged(tmp_path / "run", "train/loss")
    assert len(losses) >= 20
    # One loss per batch and step: the last epoch's two batches against the first epoch's (about 0.36 here).
    assert sum(losses[-2:]) < 0.5 * sum(losses[:2]), losses


def test_checkpoint_answers_any_split_as_the_official_evaluator_scores_it(make_cfg, data_root):
    cfg = make_cfg(
        "experiment=vqa_shapes", *TINY_VQA, *NO_LOGGER, "+trainer.limit_train_batches=4", tiny=False
    )
    run(cfg)
    trained = Path(cfg.paths.output_dir)
    assert (trained / "checkpoints" / "last.ckpt").exists()
    # The answering run gets a run folder of its own (a folder holding another run's files is refused).
    checkpoint = trained.parent / "trained.ckpt"
    shutil.move(trained / "checkpoints" / "last.ckpt", checkpoint)
    shutil.rmtree(trained)

    answer_val = ["train=false", f"ckpt_path={checkpoint}", "data.test_split=val"]
    cfg = make_cfg("experiment=vqa_shapes", *TINY_VQA, *NO_LOGGER, *answer_val, tiny=False)
    metrics = run(cfg)
    out = Path(cfg.paths.output_dir)
    shapes = data_root / "shapes"
    official = evaluate_vqa(
        shapes / "vqa_val_questions.json", shapes / "vqa_val_annotations.json", out / "vqa_val_results.json"
    )
    assert metrics["test/accuracy"] == pytest.approx(official["overall"], abs=1e-4)  # logged as float32
    scores = json.loads((out / "vqa_val_scores.json").read_text())
    for key in ("overall", "perAnswerType", "perQuestionType"):
        assert scores[key] == pytest.approx(official[key], abs=1e-9)

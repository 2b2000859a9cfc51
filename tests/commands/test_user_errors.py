"""A mistake in what the user typed or gave ends a command in one line naming it; VQACAP_DEBUG=1 shows the traceback."""

from __future__ import annotations

import json

import pytest

from tests.helpers.configs import TINY_CAPTIONER
from tests.helpers.runs import prepare_real_data, train_tiny
from tests.helpers.tsv import write_tsv
from tests.helpers.vqa2 import VAL, annotations_json, questions_json, run_prepare
from vqacap.cli import main as vqacap
from vqacap.errors import reporting
from vqacap.train import run


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ") or err[0].startswith("vqacap visualize: ")
    return err[0]


def test_a_decoding_option_of_the_wrong_type_stops_the_run_before_training(
    make_cfg, tmp_path, capsys, monkeypatch
):
    cfg = make_cfg("model.decoding.beam_size=abc", *TINY_CAPTIONER)
    assert reporting(lambda: run(cfg)) == 1
    assert _one_error_line(capsys) == "error: decoding.beam_size='abc': expected int"
    assert not (tmp_path / "run" / "checkpoints").exists()
    monkeypatch.setenv("VQACAP_DEBUG", "1")
    with pytest.raises(Exception, match="expected int"):
        reporting(lambda: run(make_cfg("model.decoding.beam_size=abc", *TINY_CAPTIONER)))


def test_a_result_id_written_as_a_string_is_named(tmp_path, capsys):
    files = {"questions": questions_json("val2014", VAL), "annotations": annotations_json("val2014", VAL)}
    files["results"] = [{"question_id": str(q[0]), "answer": "yes"} for q in VAL]
    for name, data in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    assert vqacap(["evaluate", "vqa", *(f"--{n}={tmp_path / f'{n}.json'}" for n in files)]) != 0
    line = _one_error_line(capsys)
    assert "question_id '300': question ids are integers" in line

    annotations = {
        "images": [{"id": 4501}],
        "annotations": [{"image_id": 4501, "id": 1, "caption": "a red square"}],
    }
    (tmp_path / "captions.json").write_text(json.dumps(annotations))
    (tmp_path / "results.json").write_text(json.dumps([{"image_id": "4501", "caption": "a red square"}]))
    args = ["--annotations", str(tmp_path / "captions.json"), "--results", str(tmp_path / "results.json")]
    assert vqacap(["evaluate", "captions", *args, "--metrics", "Bleu_4"]) != 0
    line = _one_error_line(capsys)
    assert "'4501'" in line and "integer ids as numbers, not strings" in line


def test_visualize_names_a_mistyped_split_and_a_file_that_is_no_checkpoint(make_cfg, tmp_path, capsys):
    run_dir = train_tiny(make_cfg, "experiment=caption_shapes", *TINY_CAPTIONER)
    capsys.readouterr()
    assert vqacap(["visualize", "--run", str(run_dir), "--split", "tst", "--out", str(tmp_path / "m")]) != 0
    line = _one_error_line(capsys)
    assert "'tst'" in line and "'val'" in line
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    args = ["visualize", "--checkpoint", str(text), "--data-dir", str(tmp_path), "--out", str(tmp_path / "m")]
    assert vqacap(args) != 0
    assert str(text) in _one_error_line(capsys)


def test_captions_naming_an_image_missing_from_the_store_stop_in_one_line(
    make_cfg,
    tmp_path,
    capsys,
    official,
):
    data_dir = tmp_path / "data"
    overrides = prepare_real_data("caption_coco_xe", data_dir, tmp_path, official)
    from vqacap.data.store import RegionStore

    kept = sorted(int(i) for i in RegionStore(data_dir / "coco" / "regions.h5").image_ids)
    # The store loses an image the captions name: rebuilt from the same TSV without it.
    (data_dir / "coco" / "regions.h5").unlink()

    tsv = write_tsv(tmp_path / "fewer.tsv", kept[1:])
    assert (
        vqacap(["prepare", "features", "--tsv", str(tsv), "--out", str(data_dir / "coco" / "regions.h5")])
        == 0
    )
    capsys.readouterr()
    cfg = make_cfg(
        "experiment=caption_coco_xe", "trainer=cpu", "debug=fdr", f"paths.data_dir={data_dir}", "data.num_workers=0",
        "data.pin_memory=false", "data.persistent_workers=false", *overrides, tiny=False,
    )  # fmt: skip
    assert reporting(lambda: run(cfg)) == 1
    assert str(kept[0]) in _one_error_line(capsys)


def test_prepare_refuses_an_answer_vocabulary_too_small_to_train_on(official, tmp_path, capsys):
    out = tmp_path / "vqa2"
    # Train's multiple-choice answers: yes, 2 ("two"), red, no, once each (train alone; run_prepare uses count 2).
    assert run_prepare(official, out, "--vocab-from", "train") == 2
    line = _one_error_line(capsys)
    assert line == (
        "error: --min-answer-count 2 keeps 0 answers of the train questions (at least 2 needed); answers kept by a "
        "smaller --min-answer-count: 1: 4"
    )
    assert not out.exists() or not any(out.iterdir())  # refused before writing anything


def test_the_datamodule_refuses_an_empty_answer_vocabulary_in_one_line(official, tmp_path, capsys):
    from vqacap.data.vqa import AnswerVocabulary, VQADataModule

    out = tmp_path / "vqa2"
    assert run_prepare(official, out) == 0
    # An old or hand-made vocabulary file with no answers.
    AnswerVocabulary([], ["yes/no"], ["is the"], 50).save(out / "answer_vocab.json")
    datamodule = VQADataModule(data_dir=str(out))
    assert reporting(lambda: datamodule.answers) == 1
    assert _one_error_line(capsys) == (
        f"error: {out / 'answer_vocab.json'}: no candidate answers (min_count 50); rebuild it with a smaller min "
        "answer count (vqacap prepare vqa2 --min-answer-count)"
    )


def test_a_gpu_recipe_on_a_machine_without_one_says_to_add_trainer_cpu(make_cfg, tmp_path, capsys):
    import torch

    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has a GPU")
    cfg = make_cfg("experiment=vqa2_updown", tiny=False)
    assert reporting(lambda: run(cfg)) == 1
    assert _one_error_line(capsys) == (
        "error: vqa2_updown: this recipe trains on a GPU (trainer.accelerator=gpu) and none is available here; "
        "add trainer=cpu to run it on the CPU"
    )
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_trainer_option_of_the_wrong_type_stops_the_run_before_any_work(make_cfg, tmp_path, capsys):
    """trainer.max_epochs=three ran data, model and loggers for minutes, then died in Lightning's fit loop."""
    cfg = make_cfg("trainer.max_epochs=three", f"paths.data_dir={tmp_path / 'data'}", *TINY_CAPTIONER)
    assert reporting(lambda: run(cfg)) == 1
    assert _one_error_line(capsys) == "error: trainer.max_epochs='three': expected an integer or null"
    assert not (tmp_path / "data").exists() and not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.decoding.beem_size=3", "error: model.decoding.beem_size: no such option; did you mean "
                                       "model.decoding.beam_size? (to add a new one: +model.decoding.beem_size=...)"),
        ("experiment=vqa_shape", "error: experiment=vqa_shape: no such experiment config; did you mean vqa_shapes or "),
    ],
)  # fmt: skip
def test_a_misspelt_option_or_experiment_gets_one_line_with_the_closest_names(tmp_path, override, expected):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "vqacap.train", override, f"paths.root_dir={tmp_path}"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr
    assert not (tmp_path / "outputs").exists()


def test_a_data_dir_that_does_not_exist_is_announced_before_shapes_is_generated_there(
    make_cfg, tmp_path, capsys
):
    missing = tmp_path / "nonexistent_dir"
    run(make_cfg("debug=fdr", f"paths.data_dir={missing}", *TINY_CAPTIONER))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(
        "run folder: "
    )  # the run's own first line, then the data folder's, before generating
    assert lines[1] == (
        f"{missing}/shapes: no such folder; generating the Shapes data into it (mistyped? stop and fix the path)"
    )

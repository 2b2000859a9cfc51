"""The real Hydra configs, composed as `python -m vqacap.train` composes them, run through real Lightning Trainers."""

import json
from pathlib import Path

import pytest

from tests.helpers.configs import OVERFIT, TINY_CAPTIONER
from tests.helpers.runs import logged
from vqacap.metrics.captions import evaluate_captions, load_annotations, load_results
from vqacap.metrics.captions.endings import BAD_ENDINGS
from vqacap.train import run

CAPTION_EXPERIMENTS = ["caption_shapes", "caption_shapes_blind"]


@pytest.mark.parametrize("experiment", CAPTION_EXPERIMENTS)
def test_caption_experiment_fast_dev_run(make_cfg, experiment):
    cfg = make_cfg(f"experiment={experiment}", "debug=fdr", *TINY_CAPTIONER)
    metrics = run(cfg)
    assert {"test/CIDEr", "test/Bleu_4"} <= metrics.keys()


def test_blind_experiment_zeroes_the_regions_only(make_cfg):
    seeing = make_cfg("experiment=caption_shapes")
    blind = make_cfg("experiment=caption_shapes_blind")
    assert blind.data.zero_regions and not seeing.data.zero_regions
    assert blind.model == seeing.model and blind.trainer == seeing.trainer


def test_short_training_run_writes_metrics_checkpoint_and_results(make_cfg, tmp_path):
    cfg = make_cfg(
        "experiment=caption_shapes", "trainer.max_epochs=2", "model.decoding.beam_size=3", *TINY_CAPTIONER
    )
    metrics = run(cfg)
    out = tmp_path / "run"
    saved = json.loads((out / "test_metrics.json").read_text())
    assert saved["metrics"] == metrics and saved["experiment"] == "caption_shapes"
    assert (out / "checkpoints" / "last.ckpt").is_file() and saved["checkpoint"].endswith(".ckpt")
    results = json.loads((out / "test_captions.json").read_text())
    assert len(results) == 12 and all(r["caption"] for r in results)
    # The logged metrics are those of the written captions, scored again from the files alone.
    references = load_annotations(Path(cfg.data.data_dir) / "captions_test.json")
    rescored = evaluate_captions(references, load_results(out / "test_captions.json"), ["Bleu_4", "CIDEr"])
    for name in ("Bleu_4", "CIDEr"):
        assert metrics[f"test/{name}"] == pytest.approx(rescored[name], abs=1e-5)  # logged as float32
    ends = [r["caption"].split()[-1] in BAD_ENDINGS for r in results]
    assert metrics["test/bad_endings"] == pytest.approx(sum(ends) / len(ends))
    assert logged(out, "val/CIDEr")


def test_overfitting_a_few_batches_drives_the_loss_down(make_cfg, tmp_path):
    cfg = make_cfg(
        "experiment=caption_shapes",
        *OVERFIT,
        "trainer.max_epochs=40",
        "model.scheduler=null",
        "model.net.dropout=0",
        *TINY_CAPTIONER,
    )
    run(cfg)
    losses = logged(tmp_path / "run", "train/loss")
    assert len(losses) >= 60
    assert losses[-1] < 0.15 * losses[0], (losses[0], losses[-1])


def test_testing_without_a_checkpoint_is_refused_in_one_line(make_cfg, tmp_path, data_root):
    import subprocess
    import sys
    from pathlib import Path

    from vqacap.train import RunConfigError

    with pytest.raises(
        RunConfigError, match=r"^train=false tests a trained model: give ckpt_path=<checkpoint file>$"
    ):
        run(make_cfg("experiment=caption_shapes", "train=false"))
    assert not (tmp_path / "run" / "test_metrics.json").exists()
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "vqacap.train", "experiment=caption_shapes", "train=false", f"paths.data_dir={data_root}",
         f"hydra.run.dir={tmp_path / 'cli'}"],
        cwd=repo, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "error: train=false tests a trained model: give ckpt_path=<checkpoint file>"
    )
    assert "Traceback" not in done.stderr

"""EpochProgress: one line per epoch in <run>/train.log, and on stdout when stdout is not a terminal."""

from __future__ import annotations

import csv
import logging
import os
import re
import sys

from tests.helpers.configs import TINY_CAPTIONER, TINY_SHAPES
from vqacap.callbacks.progress import EpochProgress
from vqacap.train import run


def _fields(line: str) -> dict[str, str]:
    return dict(re.findall(r"(\S+) (\S+)(?:  |$)", line))


def test_each_epoch_is_one_line_in_train_log_and_on_a_redirected_stdout(
    make_cfg, tmp_path, capsys, caplog, monkeypatch
):
    monkeypatch.setattr(
        logging.getLogger("pytorch_lightning"), "propagate", True
    )  # its records reach caplog too
    caplog.set_level(logging.INFO)
    cfg = make_cfg(
        "experiment=caption_shapes", "trainer.max_epochs=2", "trainer.log_every_n_steps=1", *TINY_CAPTIONER
    )
    run(cfg)
    lines = (tmp_path / "run" / "train.log").read_text().splitlines()
    assert [line.split("  ")[0] for line in lines] == ["epoch 1/2", "epoch 2/2", "test"]
    printed = capsys.readouterr().out.splitlines()  # pytest's captured stdout is not a terminal
    assert all(line in printed for line in lines[:2])
    assert lines[2] not in printed  # the test metrics reach the screen once, as the train command's table
    assert "weights_only" not in caplog.text  # Lightning's note at a save that does not say what it keeps

    rows = list(csv.DictReader((tmp_path / "run" / "csv" / "metrics.csv").open()))
    steps_per_epoch = TINY_SHAPES["train"] // cfg.data.batch_size
    for epoch, line in enumerate(lines[:2]):
        fields = _fields(line)
        assert int(fields["step"]) == steps_per_epoch * (epoch + 1)
        # The mean of the per-step losses the CSV logger recorded for this epoch, and its validation score.
        losses = [float(r["train/loss"]) for r in rows if r.get("train/loss") and int(r["epoch"]) == epoch]
        assert len(losses) == steps_per_epoch
        assert abs(float(fields["train/loss"]) - sum(losses) / len(losses)) < 1e-4
        val = next(float(r["val/CIDEr"]) for r in rows if r.get("val/CIDEr") and int(r["epoch"]) == epoch)
        assert abs(float(fields["val/CIDEr"]) - val) < 1e-4
        assert line.split("  ")[2].startswith("train/loss") and line.split("  ")[3].startswith("val/CIDEr")
        assert re.search(r"  \d+\.\d samples/s  elapsed \d+:\d\d:\d\d$", line)
    assert "test/CIDEr" in _fields(lines[2])


def test_a_terminal_keeps_its_progress_bar_and_gets_no_lines(tmp_path, monkeypatch):
    leader, follower = os.openpty()
    terminal = os.fdopen(follower, "w")
    monkeypatch.setattr(sys, "stdout", terminal)
    progress = EpochProgress(log_file=str(tmp_path / "train.log"))
    progress.write("epoch 1/1  step 3")
    terminal.flush()
    os.set_blocking(leader, False)
    try:
        written = os.read(leader, 1024)
    except BlockingIOError:
        written = b""
    finally:
        monkeypatch.undo()
        terminal.close()
        os.close(leader)
    assert written == b""
    assert (tmp_path / "train.log").read_text() == "epoch 1/1  step 3\n"

"""`vqacap doctor` as a user runs it: a real subprocess, one line per part, each missing part with its fix."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import torch

from tests.conftest import VQACAP


def _doctor(*args: str, **env: str) -> dict[str, list[tuple[str, str]]]:
    done = subprocess.run(
        [*VQACAP, "doctor", *args], capture_output=True, text=True, timeout=300, env={**os.environ, **env}
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    lines: dict[str, list[tuple[str, str]]] = {}
    for line in done.stdout.splitlines():
        name, state, detail = line.split(maxsplit=2)
        lines.setdefault(name, []).append((state, detail))
    return lines


def test_doctor_says_what_each_part_can_do(tmp_path):
    (tmp_path / "shapes").mkdir()
    (tmp_path / "shapes" / "features.h5").write_bytes(b"")
    lines = _doctor("--data-dir", str(tmp_path), "--corenlp", str(tmp_path / "corenlp"), WANDB_MODE="offline")
    assert list(lines) == ["java", "METEOR", "SPICE", "GPU", "wandb", "data"]

    if shutil.which("java"):
        [(state, detail)] = lines["java"]
        assert state == "ok" and 'version "' in detail and shutil.which("java") in detail

    [(state, detail)] = lines["SPICE"]  # the CoreNLP folder given does not exist
    assert state == "missing" and str(tmp_path / "corenlp") in detail and "--corenlp DIR" in detail

    [(state, detail)] = lines["GPU"]
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        assert state == "ok" and f"sm_{major}{minor}" in detail
    else:
        assert state == "none" and "training runs on the CPU" in detail

    [(state, detail)] = lines["wandb"]
    assert state == "offline" and detail.startswith("WANDB_MODE=offline") and "wandb sync" in detail

    data = dict((detail.split(":")[0], (state, detail)) for state, detail in lines["data"])
    assert data["shapes"] == ("ok", f"shapes: {tmp_path / 'shapes'}")
    assert data["coco"][0] == "missing" and "vqacap prepare coco-captions" in data["coco"][1]
    assert data["vqa2"][0] == "missing" and "vqacap prepare vqa2" in data["vqa2"][1]


@pytest.mark.skipif(shutil.which("java") is None, reason="no java here to hide")
def test_without_java_on_path_doctor_says_how_to_install_it(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    lines = _doctor("--data-dir", str(tmp_path), PATH=str(empty), WANDB_MODE="disabled")
    [(state, detail)] = lines["java"]
    assert state == "missing" and "apt install default-jre-headless" in detail
    [(state, detail)] = lines["METEOR"]
    assert state == "missing" and "no `java` on PATH" in detail
    [(state, _)] = lines["wandb"]
    assert state == "disabled"

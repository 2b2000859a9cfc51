"""SPICE offline: the CoreNLP 3.6.0 jars from a folder the user names (`--corenlp`, VQACAP_CORENLP, paths.corenlp),
one line naming the files to bring when they are missing or wrong, and the real Java run with the module flags."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.conftest import VQACAP, compose_train
from vqacap.metrics.captions import spice as spice_module
from vqacap.metrics.captions.spice import CORENLP_JARS, CORENLP_VARIABLE, spice, unavailable

JAR, MODELS = CORENLP_JARS


def _jar(path: Path, *entries: str) -> Path:
    with zipfile.ZipFile(path, "w") as jar:
        jar.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\n")
        for entry in entries:
            jar.writestr(entry, b"")
    return path


def _corenlp(folder: Path) -> Path:
    """A folder with jars of the right names and contents (empty classes: enough for the checks, not to parse)."""
    folder.mkdir(parents=True, exist_ok=True)
    _jar(folder / JAR, "edu/stanford/nlp/pipeline/StanfordCoreNLP.class")
    _jar(folder / MODELS, "edu/stanford/nlp/models/pos-tagger/english.tagger")
    return folder


def _needs_spice_jar():
    folder = spice_module.spice_dir()
    if folder is None or not (folder / spice_module.JAR).is_file():
        pytest.skip("pycocoevalcap's spice-1.0.jar is not installed")
    return folder


def test_a_folder_without_the_jars_names_both_files_and_how_to_bring_them(tmp_path, monkeypatch):
    monkeypatch.delenv(CORENLP_VARIABLE, raising=False)
    _needs_spice_jar()
    reason = unavailable(tmp_path)
    assert reason.startswith(
        f"SPICE skipped: Stanford CoreNLP 3.6.0 is not in {tmp_path} ({JAR}, {MODELS} missing)"
    )
    assert "--corenlp DIR" in reason and f"{CORENLP_VARIABLE}=DIR" in reason and "paths.corenlp" in reason
    assert "\n" not in reason

    _jar(tmp_path / JAR, "edu/stanford/nlp/pipeline/StanfordCoreNLP.class")
    _jar(tmp_path / "stanford-corenlp-4.5.4-models.jar")
    reason = unavailable(tmp_path)  # nothing is downloaded or removed
    assert (
        f"({MODELS} missing; found stanford-corenlp-3.6.0.jar, stanford-corenlp-4.5.4-models.jar, but"
        in reason
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([JAR, "stanford-corenlp-4.5.4-models.jar"])


def test_wrong_jars_under_the_right_names_are_named(tmp_path, monkeypatch):
    monkeypatch.delenv(CORENLP_VARIABLE, raising=False)
    _needs_spice_jar()
    folder = _corenlp(tmp_path / "corenlp")
    (folder / MODELS).write_text("<html>404 Not Found</html>")  # a page saved under the jar's name
    assert unavailable(folder).startswith(f"SPICE skipped: {folder / MODELS} is not a jar (a zip file)")
    _jar(folder / MODELS, "edu/stanford/nlp/other/")
    reason = unavailable(folder)
    assert reason.startswith(f"SPICE skipped: {folder / MODELS} is not the CoreNLP 3.6.0 jar of that name")
    _corenlp(folder)
    if shutil.which("java"):
        assert unavailable(folder) is None
    assert unavailable(tmp_path / "nowhere").startswith(f"SPICE skipped: {tmp_path / 'nowhere'} (the CoreNLP")


def test_the_environment_variable_and_the_config_key_name_the_folder(tmp_path, monkeypatch):
    _needs_spice_jar()
    monkeypatch.setenv(CORENLP_VARIABLE, str(tmp_path))
    assert f"is not in {tmp_path} (" in unavailable()
    cfg = compose_train([], tmp_path / "run", tmp_path / "data")
    assert cfg.paths.corenlp == str(tmp_path)
    monkeypatch.delenv(CORENLP_VARIABLE)
    assert compose_train([], tmp_path / "run", tmp_path / "data").paths.corenlp is None


def test_evaluate_captions_with_a_corenlp_folder_lacking_the_jars_is_one_line_error(tmp_path, monkeypatch):
    monkeypatch.delenv(CORENLP_VARIABLE, raising=False)
    _needs_spice_jar()
    annotations = tmp_path / "captions.json"
    annotations.write_text(json.dumps({"images": [{"id": 1}], "annotations": [
        {"image_id": 1, "id": 1, "caption": "a red circle"}]}))  # fmt: skip
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"image_id": 1, "caption": "a red circle"}]))
    command = [*VQACAP, "evaluate", "captions", "--annotations", annotations, "--results", results]
    done = subprocess.run([*map(str, command), "--corenlp", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"error: Stanford CoreNLP 3.6.0 is not in {tmp_path} ({JAR}, {MODELS} missing); "
        + spice_module.HOW_TO_BRING
    ]
    # without SPICE among the metrics the folder is not needed
    done = subprocess.run([*map(str, command), "--corenlp", str(tmp_path), "--metrics", "CIDEr"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0 and done.stdout.startswith("CIDEr: ")


def test_java_runs_spices_main_class_with_the_module_flags(tmp_path, monkeypatch):
    """Real Java, the real SPICE jar and its lib/, CoreNLP jars that hold no classes: Java accepts the flags, starts
    SpiceScorer, and the failure is the first CoreNLP class it needs, in one line."""
    monkeypatch.delenv(CORENLP_VARIABLE, raising=False)
    _needs_spice_jar()
    if shutil.which("java") is None:
        pytest.skip("no java on PATH")
    folder = _corenlp(tmp_path / "corenlp")
    with pytest.raises(RuntimeError) as err:
        spice([["a man riding a horse"]], ["a man riding a horse"], corenlp=folder, cache=tmp_path / "cache")
    message = str(err.value)
    assert message.startswith(
        "SPICE failed (java exit status 1): Caused by: java.lang.ClassNotFoundException: "
    )
    assert "edu.stanford.nlp." in message and "Unrecognized option" not in message and "\n" not in message


def test_spice_scores_with_the_real_corenlp_jars_where_they_are():
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"{reason} (set {CORENLP_VARIABLE} to run this test)")
    score, per_image = spice([["a man riding a horse"], ["two dogs on the grass"]],
                             ["a man riding a horse", "a cat on a sofa"])  # fmt: skip
    assert per_image[0] == pytest.approx(1.0) and per_image[1] < 0.5
    assert score == pytest.approx(sum(per_image) / 2)

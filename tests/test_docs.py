"""The docs site: it builds strictly (broken links, missing pages and docstring cross-references fail), and its
generated references cover every command option and every config file."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vqacap import cli

ROOT = Path(__file__).resolve().parents[1]


def _reference():
    spec = importlib.util.spec_from_file_location("docs_reference", ROOT / "docs" / "hooks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_names_every_command_and_option():
    page = _reference().cli_reference()
    for name in cli.COMMANDS:
        assert f"## vqacap {name}" in page
    for step in ("features", "coco-captions", "vqa2", "vg"):
        assert f"### vqacap prepare {step}" in page
    for name in cli.COMMANDS:
        parser = cli.command_parser("vqacap", cli.COMMANDS, name)
        for action in parser._actions if parser else []:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}`" in page, (name, option)


def test_configuration_reference_lists_every_config_file():
    page = _reference().configuration_reference()
    conf = ROOT / "conf"
    for file in conf.rglob("*.yaml"):
        if file.parent == conf:
            continue
        assert f"### `{file.parent.relative_to(conf).as_posix()}`" in page
        assert f"| `{file.stem}` |" in page, file


def test_docs_build_strictly(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(module.split(".")[0]) is None:
            pytest.skip(f"{module} is not installed (it is in the dev extra: pip install -e '.[dev]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert not [line for line in output.splitlines() if line.startswith("WARNING")], output
    for page in ("reference/cli", "reference/configuration", "api/models", "results", "getting-started"):
        assert (tmp_path / "site" / page / "index.html").is_file(), page

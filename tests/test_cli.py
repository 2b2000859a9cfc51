"""The `vqacap` console command: subcommand registry, help, exit statuses."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from vqacap import cli


def test_help_lists_every_registered_command_and_prepare_step(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in cli.COMMANDS)
    with pytest.raises(SystemExit):
        cli.main(["prepare", "--help"])
    out = capsys.readouterr().out
    assert all(step in out for step in ("features", "coco-captions", "vqa2"))


def test_missing_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["prepare"])
    assert exit_info.value.code == 2
    assert "STEP" in capsys.readouterr().err


def test_a_new_command_is_one_registry_line(monkeypatch):
    calls = []
    module = types.ModuleType("vqacap_fake_visualize")
    module.add_arguments = lambda parser: parser.add_argument("--image-id", type=int, required=True)
    module.run = lambda args: calls.append(args.image_id) or 0
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(cli.COMMANDS, "visualize", (module.__name__, "draw attention maps"))
    assert cli.main(["visualize", "--image-id", "42"]) == 0
    assert calls == [42]


def test_console_entry_point_runs_as_a_module(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vqacap.cli",
            "prepare",
            "features",
            "--tsv",
            str(tmp_path / "none.tsv"),
            "--out",
            str(tmp_path / "s.h5"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'none.tsv'}: TSV file not found"

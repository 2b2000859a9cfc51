"""The `vqacap` console command: subcommand registry, help, exit statuses."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types

import pytest

from tests.helpers.runs import VQACAP
from tests.helpers.vqa2 import VAL, annotations_json, questions_json
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
            *VQACAP,
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


def _official_vqa_files(tmp_path):
    files = {
        "questions": questions_json("val2014", VAL),
        "annotations": annotations_json("val2014", VAL),
        "results": [{"question_id": 300, "answer": "2"}, {"question_id": 301, "answer": "red"}],
    }
    for name, data in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    (tmp_path / "results.json").write_text(
        json.dumps(files["results"] + [{"question_id": 302, "answer": "no"}])
    )
    return [f"--{name}={tmp_path / f'{name}.json'}" for name in files]


def test_evaluate_scores_without_importing_torch_or_lightning(tmp_path):
    args = _official_vqa_files(tmp_path)
    probe = (
        "import sys, json; from vqacap.evaluate import main; status = main(['vqa', *json.loads(sys.argv[1]), '--json']);"
        "heavy = sorted(m for m in ('torch', 'pytorch_lightning', 'lightning', 'torchmetrics', 'h5py') if m in sys.modules);"
        "print(json.dumps({'status': status, 'heavy': heavy}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, json.dumps(args)], capture_output=True, text=True, timeout=120
    )
    scores, report = (json.loads(line) for line in done.stdout.strip().splitlines())
    assert report == {"status": 0, "heavy": []}
    # 300: "2" by 7 of 10 humans -> 1; 301: "red" by 6 -> 1; 302: "no" by none -> 0 (official accuracy, in percent).
    assert scores["overall"] == pytest.approx(100 * 2 / 3)


def test_every_command_word_runs_its_module(tmp_path, capsys):
    from hydra.core.global_hydra import GlobalHydra

    from vqacap.evaluate import main as evaluate

    args = [*_official_vqa_files(tmp_path), "--json"]
    capsys.readouterr()
    assert cli.main(["evaluate", "vqa", *args]) == 0
    via_vqacap = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluate(["vqa", *args]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == via_vqacap
    assert {"train", "evaluate", "prepare", "extract", "visualize"} <= set(cli.COMMANDS)
    GlobalHydra.instance().clear()  # as in a fresh process
    argv = list(sys.argv)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--help"])  # Hydra's help, with the config groups
    assert exit_info.value.code == 0 and sys.argv == argv
    assert "experiment:" in capsys.readouterr().out.replace(" ", "").replace("experiment=", "experiment:")


def test_help_texts_show_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["prepare", "vqa2", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 9)" in text and "(default: 14)" in text
    assert "(default: None)" not in text and "(default: False)" not in text


def _every_command_parser():
    """(name, parser) of every command and sub-command that parses with argparse."""
    for name in cli.COMMANDS:
        parser = cli.command_parser("vqacap", cli.COMMANDS, name)
        if parser is None:
            continue
        yield f"vqacap {name}", parser
        for action in parser._actions:
            if action.dest == "command" and isinstance(action.choices, dict):
                for sub in action.choices:
                    yield f"vqacap {name} {sub}", cli.command_parser(f"vqacap {name}", action.choices, sub)


def test_help_texts_say_each_default_once_and_flags_without_one():
    for name, parser in _every_command_parser():
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if action.default not in (None, False) and action.nargs != 0 and action.help:
                value = re.escape(str(action.default))
                assert not re.search(rf"\({value}\) \(default: {value}\)", text), (name, action.dest)
        assert "(default: True)" not in text, name  # a flag's default reads as what the flag does
    help_of = {n: " ".join(p.format_help().split()) for n, p in _every_command_parser()}
    assert (
        "--no-tokenize captions are already PTB-tokenized: score them as given --json"
        in help_of["vqacap evaluate captions"]
    )
    for name in ("vqacap caption", "vqacap answer"):
        assert "--device DEVICE torch device" in help_of[name]


def test_a_users_mistake_is_one_line_and_the_traceback_is_opt_in(tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    command = [
        *VQACAP,
        "prepare",
        "features",
        "--no-progress",
        "--tsv",
        str(empty),
        "--out",
        str(tmp_path / "s.h5"),
    ]
    quiet = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert quiet.returncode != 0
    assert len(quiet.stderr.strip().splitlines()) == 1 and quiet.stderr.startswith("error: ")
    assert str(empty) in quiet.stderr

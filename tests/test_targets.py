"""Classes named by a file a user was given (vqacap/targets.py): a run folder's config or a checkpoint naming anything
but vqacap's own DataModules, models and torch's optimisers is refused by every command that reads one, before the
named module is imported. Each payload creates a marker file when it runs: the marker must not appear."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.helpers.configs import SHORT, TINY_CAPTIONER, TINY_OVERRIDES, compose_train
from vqacap.cli import main as vqacap
from vqacap.targets import TargetError, allowed, locate
from vqacap.train import run

PAYLOAD = "vqacap_test_payload"  # a module whose import, and whose call, each create a marker file


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory, data_root) -> Path:
    """A tiny captioning run folder as `vqacap train` leaves it: checkpoints/ and .hydra/config.yaml."""
    out = tmp_path_factory.mktemp("captioning") / "run"
    cfg = compose_train(
        [*TINY_OVERRIDES, "experiment=caption_shapes", *TINY_CAPTIONER, *SHORT], out, data_root
    )
    run(cfg)
    (out / ".hydra").mkdir()
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    return out


@pytest.fixture
def payload(tmp_path, monkeypatch) -> Path:
    """The marker that the payload module creates on import (`imported`) or on a call (`called`); a hubconf.py too."""
    marker = tmp_path / "markers"
    marker.mkdir()
    code = (
        f"open({str(marker / 'imported')!r}, 'w').close()\n"
        "class Net:\n"
        "    def __init__(self, *args, **kwargs):\n"
        f"        open({str(marker / 'called')!r}, 'w').close()\n"
        "build = Net\n"
    )
    (tmp_path / f"{PAYLOAD}.py").write_text(code)
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "hubconf.py").write_text(code + "model = Net\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, PAYLOAD, raising=False)
    return marker


def _copy_run(run_folder: Path, to: Path, **data) -> Path:
    """The run folder's config and last checkpoint under `to`, its data node changed by `data`."""
    (to / ".hydra").mkdir(parents=True)
    (to / "checkpoints").mkdir()
    (to / "checkpoints" / "last.ckpt").write_bytes((run_folder / "checkpoints" / "last.ckpt").read_bytes())
    config = OmegaConf.load(run_folder / ".hydra" / "config.yaml")
    for key, value in data.items():
        config.data[key] = value
    OmegaConf.save(config, to / ".hydra" / "config.yaml")
    return to


def _refused(capsys, *parts: str) -> None:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and all(p in err for p in parts), err
    assert "Beautiful is better than ugly" not in captured.out


@pytest.mark.parametrize(
    "data",
    [
        {"_target_": f"{PAYLOAD}.build"},
        {"_target_": "torch.hub.load", "repo_or_dir": "HUB", "model": "model", "source": "local"},
        {"_target_": "this.X"},
        {"transform": {"_target_": f"{PAYLOAD}.build"}},  # beside vqacap's own DataModule
    ],
    ids=["module", "torch.hub", "this", "nested"],
)
@pytest.mark.parametrize("flag", ["--run", "--checkpoint"])
def test_a_run_folders_config_naming_other_code_is_refused_by_visualize(
    run_folder, payload, tmp_path, capsys, data, flag
):
    data = {k: (str(tmp_path / "hub") if v == "HUB" else v) for k, v in data.items()}
    folder = _copy_run(run_folder, tmp_path / "shared", **data)
    source = folder if flag == "--run" else folder / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    code = vqacap(["visualize", flag, str(source), "--image-ids", "61", "--out", str(tmp_path / "maps")])
    assert code == 2 and not any(payload.iterdir())
    _refused(capsys, str(folder / ".hydra" / "config.yaml"), "data")
    assert not (tmp_path / "maps").exists() and PAYLOAD not in sys.modules


def _checkpoint_naming(run_folder: Path, folder: Path, target: str) -> Path:
    checkpoint = torch.load(run_folder / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["hyper_parameters"]["net"]["_target_"] = target
    folder.mkdir()
    path = folder / "shared.ckpt"
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("target", [f"{PAYLOAD}.Net", "this.X", "antigravity.X"])
@pytest.mark.parametrize("command", ["visualize", "caption", "answer"])
def test_a_checkpoint_naming_other_code_is_refused_before_it_is_imported(
    run_folder, payload, data_root, tmp_path, capsys, monkeypatch, target, command
):
    import webbrowser

    opened = []
    # What importing antigravity does.
    monkeypatch.setattr(webbrowser, "open", lambda *args, **kwargs: opened.append(args))
    monkeypatch.delitem(sys.modules, target.split(".")[0], raising=False)
    path = _checkpoint_naming(run_folder, tmp_path / "given", target)
    image = next((data_root / "shapes" / "images" / "test").iterdir())
    argv = {
        "visualize": ["visualize", "--checkpoint", str(path), "--data-dir", str(data_root / "shapes"),
                      "--out", str(tmp_path / "maps")],
        "caption": ["caption", str(image), "--captioner", str(path), "--detector", str(path), "--device", "cpu"],
        "answer": ["answer", str(image), "--vqa", str(path), "--question", "what is it", "--detector", str(path),
                   "--device", "cpu"],
    }[command]  # fmt: skip
    capsys.readouterr()
    assert vqacap(argv) == 2
    _refused(capsys, str(path), f"'net' names '{target}'", "refused without importing it")
    assert not any(payload.iterdir()) and not opened and target.split(".")[0] not in sys.modules


def test_the_patterns_accept_what_vqacap_writes_and_nothing_beside_it():
    assert allowed("net", "vqacap.models.fast.captioner.FastUpDownCaptioner")
    assert allowed("optimizer", "torch.optim.adam.Adam") and allowed(
        "scheduler", "torch.optim.lr_scheduler.StepLR"
    )
    assert allowed("data", "vqacap.data.vqa.VQADataModule")
    for kind, target in [("net", "vqacapx.models.A"), ("net", "os.system"), ("data", "vqacap.shapes.generate"),
                         ("optimizer", "torch.optim"), ("net", "vqacap.models.A;B"), ("net", None)]:  # fmt: skip
        assert not allowed(kind, target), target
    with pytest.raises(TargetError, match="not a Optimizer class"):
        locate("optimizer", "torch.optim.lr_scheduler.StepLR", "x.ckpt", "hyper-parameter 'optimizer'")

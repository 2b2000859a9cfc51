"""Checkpoint files (vqacap/checkpoints.py): a pickle payload is refused by every entry point (`ckpt_path`, `init_from`,
`vqacap visualize --checkpoint`) without running, other bad files get one line naming the file, and what vqacap
writes is read back with `weights_only=True` and rebuilt into the same model."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from tests.helpers.configs import (
    SHORT,
    TINY_CAPTIONER,
    TINY_FEATURE_DIM,
    TINY_OVERRIDES,
    TINY_SHAPES,
    compose_train,
)
from vqacap import visualize
from vqacap.checkpoints import CheckpointError, load_checkpoint, rebuild_hyperparameters
from vqacap.lightning.loading import load_module, load_weights
from vqacap.train import run


class Payload:
    """Unpickling this calls open(marker, "w"): the marker file exists exactly when the payload ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_root) -> dict[str, Path]:
    """The last.ckpt of a tiny captioning run and of a tiny VQA run."""
    out = {}
    for task, overrides in {
        "captioning": ["experiment=caption_shapes", *TINY_CAPTIONER],
        "vqa": ["experiment=vqa_shapes", "model.net.hidden_size=32", "model.net.embedding_dim=16"],
    }.items():
        folder = tmp_path_factory.mktemp(task)
        run(compose_train([*TINY_OVERRIDES, *overrides, *SHORT], folder / "run", data_root))
        out[task] = folder / "run" / "checkpoints" / "last.ckpt"
    return out


def _cfg(tmp_path, data_root, *overrides):
    return compose_train([*TINY_OVERRIDES, "experiment=caption_shapes", *TINY_CAPTIONER, *SHORT, *overrides],
                         tmp_path / "run", data_root)  # fmt: skip


@pytest.fixture
def evil(runs, tmp_path) -> tuple[Path, Path]:
    """A real captioning checkpoint with a pickle payload among its hyper-parameters, and the payload's marker."""
    marker = tmp_path / "payload-ran"
    checkpoint = torch.load(runs["captioning"], weights_only=True)
    checkpoint["hyper_parameters"]["note"] = Payload(marker)
    path = tmp_path / "evil.ckpt"
    torch.save(checkpoint, path)
    return path, marker


def _one_line(err: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(err.value)
    assert "\n" not in message and all(p in message for p in parts), message


@pytest.mark.parametrize("entry_point", ["ckpt_path", "init_from"])
def test_a_payload_is_refused_when_resuming_or_initialising(evil, tmp_path, data_root, entry_point):
    path, marker = evil
    with pytest.raises(CheckpointError) as err:
        run(_cfg(tmp_path, data_root, f"{entry_point}={path}"))
    _one_line(err, str(path), "io.open")
    assert not marker.exists()


def test_a_payload_is_refused_by_visualize(evil, tmp_path, data_root, capsys):
    path, marker = evil
    args = argparse.ArgumentParser()
    visualize.add_arguments(args)
    code = visualize.run(
        args.parse_args(
            ["--checkpoint", str(path), "--data-dir", str(data_root / "shapes"), "--out", str(tmp_path)]
        )
    )
    assert code == 2 and not marker.exists()
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and str(path) in error and "io.open" in error


@pytest.mark.parametrize("content", [b"", b"not a checkpoint\n", "half"])
def test_truncated_and_text_files_get_one_line(runs, tmp_path, data_root, content):
    path = tmp_path / "bad.ckpt"
    if content == "half":
        whole = runs["captioning"].read_bytes()
        content = whole[: len(whole) // 2]
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    _one_line(err, str(path), "not a readable PyTorch checkpoint")
    with pytest.raises(CheckpointError) as err:
        run(_cfg(tmp_path, data_root, f"ckpt_path={path}"))
    _one_line(err, str(path))


def test_a_vqa_checkpoint_is_refused_by_the_captioner(runs, tmp_path, data_root):
    with pytest.raises(CheckpointError) as err:
        run(_cfg(tmp_path, data_root, f"ckpt_path={runs['vqa']}"))
    _one_line(err, str(runs["vqa"]), "a VQA checkpoint, not a captioning one")
    with pytest.raises(CheckpointError) as err:  # a run folder of its own: the first one holds that run's log
        run(_cfg(tmp_path / "init", data_root, f"init_from={runs['vqa']}"))
    _one_line(err, str(runs["vqa"]), "a VQA checkpoint, not a captioning one")


def test_a_checkpoint_of_another_size_is_refused(runs, tmp_path, data_root):
    cfg = _cfg(tmp_path, data_root, f"ckpt_path={runs['captioning']}")
    with open_dict(cfg):
        cfg.model.net.hidden_dim = 40
    with pytest.raises(CheckpointError) as err:
        run(cfg)
    _one_line(err, str(runs["captioning"]), "does not fit this model")


def test_checkpoints_hold_plain_types_and_rebuild_the_same_model(runs):
    for task, path in runs.items():
        assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
        checkpoint = load_checkpoint(path)
        module = load_module(path)
        assert module.task == {"captioning": "captioning", "vqa": "VQA"}[task] and not module.training
        for name, weight in module.state_dict().items():
            assert torch.equal(weight, checkpoint["state_dict"][name]), name
        rebuilt = rebuild_hyperparameters(checkpoint["hyper_parameters"], path)
        assert rebuilt["net"].func is type(module.net) and rebuilt["optimizer"].func.__module__.startswith(
            "torch.optim"
        )


def test_hyperparameters_naming_a_function_instead_of_a_class_are_refused(runs, tmp_path):
    checkpoint = load_checkpoint(runs["captioning"])
    checkpoint["hyper_parameters"]["net"] = {"_target_": "os.system", "_partial_": True, "command": "true"}
    path = tmp_path / "odd.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError) as err:
        load_module(path)
    _one_line(err, str(path), "'net' names 'os.system', which vqacap does not build from a file")


def test_init_from_loads_the_weights_it_checks(runs, tmp_path, data_root):
    from hydra.utils import instantiate

    cfg = _cfg(tmp_path, data_root)
    datamodule = instantiate(cfg.data, _recursive_=False)
    module = instantiate(cfg.model, **datamodule.model_kwargs())
    load_weights(module, runs["captioning"])
    saved = load_checkpoint(runs["captioning"])["state_dict"]
    assert all(torch.equal(v, saved[k]) for k, v in module.state_dict().items())


class SystemPayload:
    """Unpickling this calls os.system (a module torch blocks by name): it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _detector_checkpoint(path: Path, **extra) -> Path:
    hparams = {
        "detector": {},
        "classes": ["__background__", "a"],
        "attributes": ["__no_attribute__", "b"],
        **extra,
    }
    torch.save({"hyper_parameters": hparams, "state_dict": {}}, path)
    return path


@pytest.mark.parametrize("payload", [Payload, SystemPayload])
@pytest.mark.parametrize("flag", ["--detector", "--weights"])
def test_a_pickled_detector_or_weights_file_is_refused_in_one_line_naming_the_global(
    tmp_path, capsys, payload, flag
):
    """torch's multi-line text advising weights_only=False was printed, and "Trying to load unsupported GLOBAL"
    read as "truncated or another kind of file"."""
    from vqacap.cli import main as vqacap

    marker = tmp_path / "payload-ran"
    path = _detector_checkpoint(tmp_path / "evil.ckpt", note=payload(marker))
    (tmp_path / "images").mkdir()
    assert (
        vqacap(
            [
                "extract",
                flag,
                str(path),
                "--images",
                str(tmp_path / "images"),
                "--out",
                str(tmp_path / "s.h5"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    name = "io.open" if payload is Payload else "system"
    assert len(err.splitlines()) == 1 and f"{path}: refused: it holds the type " in err and name in err, err
    assert "weights_only" not in err and not marker.exists()


def test_a_tsv_given_as_the_detector_and_a_detector_given_as_a_model_are_named(
    runs, tmp_path, data_root, capsys
):
    from vqacap.cli import main as vqacap

    tsv = tmp_path / "features.tsv"
    tsv.write_text("image_id\timage_w\timage_h\tnum_boxes\tboxes\tfeatures\n1\t10\t10\t1\tAAAA\tAAAA\n")
    (tmp_path / "images").mkdir()
    assert (
        vqacap(["extract", "--detector", str(tsv), "--images", str(tmp_path / "images"), "--out", "s.h5"])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tsv}: not a readable PyTorch checkpoint") and "\n" not in err, err

    detector = _detector_checkpoint(tmp_path / "detector.ckpt")
    argv = [
        "visualize",
        "--checkpoint",
        str(detector),
        "--data-dir",
        str(data_root / "shapes"),
        "--out",
        "maps",
    ]
    assert vqacap(argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"vqacap visualize: {detector}: a detector checkpoint, where a captioner or VQA model is needed"
    )


def test_a_full_disk_while_training_is_one_line_and_leaves_no_partial_file(tmp_path):
    """A nearly full disk gave an OSError traceback and a stale last.ckpt.partial."""
    import os
    import resource
    import signal
    import subprocess
    import sys

    from vqacap.shapes import generate

    generate(tmp_path / "data" / "shapes", sizes=TINY_SHAPES, feature_dim=TINY_FEATURE_DIM)
    limit = 60_000  # bytes per file: the logs fit, a checkpoint does not

    def full_disk() -> None:  # in the child: writes past `limit` bytes fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "vqacap.train", "experiment=caption_shapes", *TINY_OVERRIDES, *TINY_CAPTIONER,
               *SHORT, f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={run_dir}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, env=env, preexec_fn=full_disk
    )
    assert done.returncode == 1, done.stderr[-3000:]
    lines = [
        line for line in done.stderr.splitlines() if line.startswith("error: ")
    ]  # beside Lightning's log
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith(f"error: {run_dir}/checkpoints/"), lines
    assert "could not write the checkpoint (File too large); the previous one, if any, is kept" in lines[0]
    assert not list(run_dir.rglob("*.partial"))

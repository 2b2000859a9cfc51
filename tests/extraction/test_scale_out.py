"""Extraction at cluster scale (vqacap.extraction): `vqacap extract --devices 2` on two real CPU processes (gloo) gives
the store of one process; a rank killed with SIGKILL mid-run leaves shards that a rerun with any number of processes
completes without extracting an image twice; shards of another detector are refused in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from tests.helpers.detector import ATTRIBUTES, CLASSES, random_detector, save_checkpoint
from tests.helpers.references import import_reference
from vqacap.cli import main
from vqacap.data.store import RegionStore, partial_path
from vqacap.extract import extract_with_detector
from vqacap.extraction import shards
from vqacap.extraction.data import aspect_ratio_batches
from vqacap.models.detector import BottomUpDetector
from vqacap.models.regions import DETECTOR_FIELDS
from vqacap.shapes import generate
from vqacap.train import CONFIG_DIR

REPO = Path(__file__).resolve().parents[2]
IMAGES = 24  # Shapes test images; 12 per process of two
# One image per forward pass: one and two processes then compute every image bit for bit alike.
OPTIONS = ["--batch-size", "1", "--workers", "0", "--dtype", "float32", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(random_detector(0), tmp_path_factory.mktemp("ckpt") / "detector.ckpt")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = generate(
        tmp_path_factory.mktemp("shapes"), sizes={"train": 1, "val": 1, "test": IMAGES}, feature_dim=8
    )
    return root / "images" / "test"


@pytest.fixture(scope="module")
def reference(checkpoint, images, tmp_path_factory) -> RegionStore:
    """One process, this one."""
    out = tmp_path_factory.mktemp("one") / "regions.h5"
    found = extract_with_detector(
        images, checkpoint, out, batch_size=1, dtype="float32", progress=False, workers=0
    )
    assert found == (IMAGES, 0, [])
    return RegionStore(out)


def extract_command(checkpoint: Path, images: Path, out: Path, devices: int) -> list[str]:
    return [
        sys.executable, "-m", "vqacap.cli", "extract", "--detector", str(checkpoint), "--images", str(images),
        "--out", str(out), "--devices", str(devices), "--accelerator", "cpu", *OPTIONS,
    ]  # fmt: skip


def run_processes(command: list[str]) -> subprocess.CompletedProcess:
    """Lightning starts the second process, re-running the command; one thread each, as on a shared CI machine."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def assert_same_store(found: RegionStore, expected: RegionStore) -> None:
    """The same images with the same regions, features and labels (in whatever row order)."""
    assert sorted(found.image_ids.tolist()) == sorted(expected.image_ids.tolist())
    assert found.region_fields == expected.region_fields
    for image_id in expected.image_ids.tolist():
        for a, b in zip(found.read(image_id), expected.read(image_id)):
            np.testing.assert_array_equal(a, b)
        for field in expected.region_fields:
            np.testing.assert_array_equal(
                found.read_field(image_id, field), expected.read_field(image_id, field)
            )


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def images_flushed(partial: Path) -> int:
    """Images in the index of a store being written (0 while it cannot be read)."""
    try:
        with h5py.File(partial, "r", locking=False) as f:
            return len(f["image_ids"])
    except Exception:  # not there yet, or caught between two writes
        return 0


def kill_mid_run(command: list[str], watched: Path, rank: int) -> None:
    """Start the command, SIGKILL process `rank` once `watched` (a store being written) holds an image, and wait for
    the first process to end (Lightning kills the survivors of a process group that lost a member)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    while images_flushed(partial_path(watched)) < 1:
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.005)
    os.kill(first.pid if rank == 0 else children(first.pid)[rank - 1], signal.SIGKILL)
    first.communicate(timeout=120)
    assert first.returncode != 0


# ----------------------------------------------------------------------------------------------------------------------


def test_images_are_dealt_to_one_rank_each_by_id():
    ids = [17, 3, 391895, 8, 5]
    dealt = [shards.deal(ids, rank, 2) for rank in range(2)]
    assert dealt == [[3, 8, 391895], [5, 17]]
    assert sorted(sum((shards.deal(ids, r, 3) for r in range(3)), [])) == sorted(ids)


def test_batches_group_images_of_similar_aspect_ratio():
    sizes = [(640, 480), (480, 640), (600, 450), (500, 700), (640, 480)]
    assert aspect_ratio_batches(sizes, 2) == [[3, 1], [0, 2], [4]]


def test_two_processes_give_the_store_of_one_and_a_rerun_extracts_nothing(
    checkpoint, images, reference, tmp_path
):
    out = tmp_path / "regions.h5"
    done = run_processes(extract_command(checkpoint, images, out, devices=2))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert done.stdout.strip() == f"{out}: extracted {IMAGES}, skipped 0 already in the store, problems 0"
    assert not shards.shard_folder(out).exists()  # merged and removed
    merged = RegionStore(out)
    assert_same_store(merged, reference)
    assert sorted(merged.region_fields) == sorted(DETECTOR_FIELDS)
    assert merged.field_names("object_labels") == CLASSES
    # One process after two: everything is there already.
    assert extract_with_detector(images, checkpoint, out, batch_size=1, dtype="float32", progress=False, workers=0) == (
        0, IMAGES, [],
    )  # fmt: skip


@pytest.mark.parametrize("rerun_devices", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_a_rank_killed_mid_run_then_a_rerun_completes_the_same_store_once(
    checkpoint, images, reference, tmp_path, rerun_devices
):
    out = tmp_path / "regions.h5"
    kill_mid_run(extract_command(checkpoint, images, out, devices=2), shards.shard_path(out, 1), rank=1)
    assert not out.exists() and shards.shards_of(out)  # what both ranks had written, in their shards
    done = run_processes(extract_command(checkpoint, images, out, devices=rerun_devices))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    extracted, skipped = (int(word.rstrip(",")) for word in done.stdout.split()[2:5:2])
    # The rerun extracted only what no shard held; the killed rank had written some images and not all of its 12.
    assert extracted + skipped == IMAGES and skipped >= 1 and extracted >= 1
    assert_same_store(RegionStore(out), reference)
    assert not shards.shard_folder(out).exists()


def test_one_process_killed_mid_run_then_a_rerun_extracts_each_image_once(
    checkpoint, images, reference, tmp_path
):
    out = tmp_path / "regions.h5"
    kill_mid_run(extract_command(checkpoint, images, out, devices=1), out, rank=0)
    extracted, skipped, problems = extract_with_detector(
        images, checkpoint, out, batch_size=1, dtype="float32", progress=False, workers=0
    )
    assert extracted + skipped == IMAGES and extracted >= 1 and skipped >= 1 and problems == []
    assert_same_store(RegionStore(out), reference)


def test_a_shard_of_another_detector_is_refused_in_one_line(checkpoint, images, tmp_path, capsys):
    out = tmp_path / "regions.h5"
    other = save_checkpoint(random_detector(1), tmp_path / "other.ckpt")
    foreign = shards.shard_path(out, 1)
    foreign.parent.mkdir()
    assert extract_with_detector(
        images, other, foreign, batch_size=4, dtype="float32", progress=False, workers=0
    )[0] == IMAGES  # fmt: skip
    assert (
        main(["extract", "--detector", str(checkpoint), "--images", str(images), "--out", str(out), *OPTIONS])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"error: {foreign}: extracted with another detector or options (fingerprint ")
    assert err.endswith("differs in detector weights); extract into another store")
    assert not out.exists()
    # The merge command refuses it beside a shard of the right detector, also in one line, before writing.
    mine = shards.shard_path(out, 0)
    extract_with_detector(images, checkpoint, mine, batch_size=4, dtype="float32", progress=False, workers=0)
    assert main(["prepare", "merge", str(mine), str(foreign), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "extracted with another detector" in err and not out.exists()


def test_the_merge_command_checks_every_image_is_there_once(checkpoint, images, reference, tmp_path, capsys):
    out = tmp_path / "regions.h5"
    files = sorted(images.iterdir())
    halves = [tmp_path / "a", tmp_path / "b"]
    for n, half in enumerate(halves):
        half.mkdir()
        for f in files[n::2]:
            (half / f.name).symlink_to(f)
        extract_with_detector(
            half,
            checkpoint,
            shards.shard_path(out, n),
            batch_size=1,
            dtype="float32",
            progress=False,
            workers=0,
        )
    folder = shards.shard_folder(out)
    # An image held by two shards is refused.
    (folder / "copy").mkdir()
    duplicate = folder / "copy" / "shard-00009.h5"
    duplicate.write_bytes(shards.shard_path(out, 0).read_bytes())
    assert main(["prepare", "merge", str(folder), str(duplicate), "--out", str(out)]) == 2
    assert "is also in" in capsys.readouterr().err and not out.exists()
    duplicate.unlink()
    # An image of the folders that no shard holds is reported by count and first id.
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "999.png").symlink_to(files[0])
    assert (
        main(["prepare", "merge", str(folder), "--out", str(out), "--images", str(images), str(extra)]) == 2
    )
    assert capsys.readouterr().err.strip().endswith("1 requested images missing after the merge (first: 999); "
                                                    "rerun the extraction to add them")  # fmt: skip
    assert (
        main(["prepare", "merge", str(folder), "--out", str(out), "--images", str(images), "--remove"]) == 0
    )
    assert (
        capsys.readouterr().out.strip()
        == f"{out}: merged 0 images from 2 shards ({IMAGES} already there), {IMAGES} in all"
    )
    assert_same_store(RegionStore(out), reference)
    assert not shards.shard_path(out, 0).exists()


def test_hydra_entry_composes_and_slurm_runs_one_task_per_gpu(monkeypatch, tmp_path):
    """conf/extract.yaml with training's trainer group: `hydra/launcher=slurm trainer=ddp` asks for a task per GPU."""
    SlurmExecutor = import_reference("submitit.slurm.slurm").SlurmExecutor  # a dev dependency
    GlobalHydra.instance().clear()
    overrides = [
        "hydra/launcher=slurm", "trainer=ddp", "trainer.devices=8", "trainer.num_nodes=4", "trainer.precision=tf32",
        "images=[coco/train2014,coco/val2014]", "detector=d.ckpt", "out=coco.h5", "hydra.launcher.partition=gpu",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("extract", overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    assert (cfg.trainer.devices, cfg.trainer.num_nodes, cfg.trainer.precision) == (8, 4, "tf32")
    assert cfg.regions == {"min_boxes": 10, "max_boxes": 100, "conf_thresh": 0.2, "grid": None}
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    params.pop("_target_")
    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # as if srun were installed
    executor = SlurmExecutor(tmp_path, max_num_timeout=params.pop("max_num_timeout"))
    del params["submitit_folder"]
    executor.update_parameters(**executor._convert_parameters(params))
    sbatch = executor._make_submission_file_text("python -m vqacap.extract_hydra", "uid")
    for line in ["--nodes=4", "--ntasks-per-node=8", "--gpus-per-node=8", "--partition=gpu"]:
        assert f"#SBATCH {line}" in sbatch, line


def test_hydra_entry_extracts_as_the_command(checkpoint, images, reference, tmp_path):
    """`python -m vqacap.extract_hydra` on one process writes the store `vqacap extract` writes."""
    out = tmp_path / "regions.h5"
    command = [
        sys.executable, "-m", "vqacap.extract_hydra", f"images=[{images}]", f"detector={checkpoint}", f"out={out}",
        "dtype=float32", "batch_size=1", "num_workers=0", f"hydra.run.dir={tmp_path / 'run'}",
    ]  # fmt: skip
    done = run_processes(command)
    assert done.returncode == 0, done.stderr[-4000:]
    assert_same_store(RegionStore(out), reference)


def test_bf16_autocast_extracts_every_image_under_its_own_fingerprint(
    checkpoint, images, reference, tmp_path
):
    out = tmp_path / "bf16.h5"
    found = extract_with_detector(
        images,
        checkpoint,
        out,
        batch_size=4,
        dtype="float32",
        progress=False,
        workers=0,
        precision="bf16-mixed",
    )
    assert found == (IMAGES, 0, [])
    store = RegionStore(out)
    assert sorted(store.image_ids.tolist()) == sorted(reference.image_ids.tolist())
    assert all(10 <= k <= 100 for k in store.num_regions.tolist())
    assert shards.recorded(out)[shards.FINGERPRINT] != shards.recorded(reference.path)[shards.FINGERPRINT]


def test_each_batch_is_written_at_the_end_of_the_next_one_and_the_last_at_the_end(
    images, reference, tmp_path
):
    """The order that lets a GPU copy batch i's regions to the host during batch i + 1 (the CPU runs the same
    order): after batch i the store holds the batches before it; at the end, every image once."""
    import pytorch_lightning as pl

    from vqacap.data.pixels import RegionChoice
    from vqacap.extraction.data import ExtractionData, request
    from vqacap.extraction.module import (
        PredictedBatch,
        RegionExtractor,
        StoreWriter,
        detector_fingerprint,
        store_layout,
    )

    detector, choice, out = random_detector(0), RegionChoice(), tmp_path / "regions.h5"
    expected = detector_fingerprint(detector, choice, "float32", "32-true")
    writer = StoreWriter(out, {**store_layout(detector, choice), "attrs": expected}, "float32")
    written = []

    class Watch(pl.Callback):
        def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            assert isinstance(outputs, PredictedBatch) and len(outputs.parts) == 1
            assert all(copy.event is None for _, copy in outputs.parts)  # on the CPU, nothing to wait for
            written.append(images_flushed(partial_path(out)))

    data = ExtractionData(request(images), out, expected, batch_size=5, num_workers=0)
    trainer = pl.Trainer(
        callbacks=[writer, Watch()], accelerator="cpu", devices=1, logger=False, enable_progress_bar=False
    )
    trainer.predict(RegionExtractor(detector.eval(), choice), datamodule=data, return_predictions=False)
    writer.close()
    assert written == [0, 5, 10, 15, 20]  # batch i's end: the batches before it
    assert writer.extracted == IMAGES and writer.failed == []
    found = RegionStore(out)  # five images a forward pass against one: the same regions, to float rounding
    assert sorted(found.image_ids.tolist()) == sorted(reference.image_ids.tolist())
    for image_id in reference.image_ids.tolist():
        for a, b in zip(found.read(image_id), reference.read(image_id)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


class FailsOnOneImage(torch.nn.Module):
    """The tiny detector, failing on any batch that holds one given image (as a model failing on one input does)."""

    def __init__(self, detector: BottomUpDetector, bad: torch.Tensor) -> None:
        super().__init__()
        self.detector = detector
        self.bad = float(bad.float().div(255).sum())
        self.feature_dim, self.classes, self.attributes = detector.feature_dim, CLASSES, ATTRIBUTES

    def regions(self, images: list[torch.Tensor]):
        if any(abs(float(image.sum()) - self.bad) < 0.5 for image in images):
            raise RuntimeError("the model cannot take this one")
        return self.detector.regions(images)


def test_a_batch_the_model_fails_on_is_written_image_by_image_but_the_one_it_fails_on(
    images, reference, tmp_path
):
    from torchvision.io import read_image

    from vqacap.data.pixels import RegionChoice
    from vqacap.extraction.module import extract_folders

    files = sorted(images.glob("*.png"))
    model = FailsOnOneImage(random_detector(0), read_image(str(files[7]))[:3])
    out = tmp_path / "regions.h5"
    result = extract_folders(
        images, model, out, RegionChoice(), "float32", batch_size=5, workers=0, progress=False
    )
    assert result.extracted == IMAGES - 1
    assert result.problems == [
        f"{files[7]}: the model failed on it (RuntimeError: the model cannot take this one)"
    ]
    found = RegionStore(out)
    assert sorted(found.image_ids.tolist()) == sorted(
        set(reference.image_ids.tolist()) - {int(files[7].stem)}
    )
    for image_id in found.image_ids.tolist():  # five a forward pass, or one: to float rounding
        for a, b in zip(found.read(image_id), reference.read(image_id)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)

"""Region features through Lightning's `Trainer.predict`: one process per device, on any number of nodes.

    result = extract_folders(folders, detector, "coco.h5", RegionChoice(), devices=8, num_nodes=4)

`RegionExtractor` runs a detector (anything with `.regions(images)` / `.grid(images, n)`, as
vqacap.models.detector.BottomUpDetector, or torchvision's `fasterrcnn_resnet50_fpn`) on a batch and chooses the regions
with `vqacap.extract`'s choice (generate_tsv's, for the whole batch on the detector's device: `bottom_up_regions`),
then starts their copy to the host (`HostCopy`); `StoreWriter` adds each batch to this process's shard (or, in a
one-process run, to the store itself) at the end of the next batch, so that on a GPU the copy overlaps the next forward
pass, and flushes after every batch; the first process then merges the shards into the store
(vqacap.extraction.shards). The trainer settings are training's: accelerator, devices,
num_nodes, precision (fp32 by default; "tf32", "bf16-mixed", "16-mixed" for speed at a small deviation).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

from vqacap.data.pixels import RegionChoice
from vqacap.data.store import CHUNK_REGIONS, RegionStoreError, RegionStoreWriter, StoreWriteError
from vqacap.extraction import shards
from vqacap.extraction.data import ExtractionData, ImageBatch, request
from vqacap.extraction.settings import accelerator_for, all_gathered, quiet_lightning, trainer_settings
from vqacap.models.regions import (
    DETECTOR_FIELDS,
    FEATURE_DIM,
    ChosenRegions,
    bottom_up_regions,
    extract_batch,
    grid_batch,
)


@dataclass(frozen=True)
class FasterRCNNChoice:
    """`vqacap extract --weights`: torchvision's detections, topped up to min_boxes (vqacap.models.regions.select_regions)."""

    min_boxes: int = 10
    max_boxes: int = 36
    conf_thresh: float = 0.2


def choose_regions(
    detector: torch.nn.Module, images: list[torch.Tensor], choice: RegionChoice | FasterRCNNChoice
) -> ChosenRegions:
    """Images (3, H, W) in [0, 1] on the detector's device -> their regions, padded: features (B, K, D), boxes
    (B, K, 4), fields (B, K), counts (B,)."""
    if isinstance(choice, FasterRCNNChoice):
        found = extract_batch(detector, images, choice.max_boxes, choice.min_boxes, choice.conf_thresh)
        return ChosenRegions.stack([(features, boxes, None) for features, boxes in found])
    if choice.grid is not None:
        return ChosenRegions.stack(grid_batch(detector, images, choice.grid))
    return bottom_up_regions(detector, images, choice.conf_thresh, choice.min_boxes, choice.max_boxes)


def store_layout(detector: torch.nn.Module, choice: RegionChoice | FasterRCNNChoice) -> dict:
    """`RegionStoreWriter` arguments for what `choose_regions` returns: D and the detector's label fields."""
    if isinstance(choice, FasterRCNNChoice):
        return {"feature_dim": FEATURE_DIM}
    if choice.grid is not None:
        return {"feature_dim": detector.feature_dim}
    return {
        "feature_dim": detector.feature_dim,
        "region_fields": DETECTOR_FIELDS,
        "field_names": {"object_labels": detector.classes, "attribute_labels": detector.attributes},
    }


def detector_fingerprint(
    detector: torch.nn.Module, choice: RegionChoice | FasterRCNNChoice, dtype: str, precision: str
) -> dict[str, str]:
    """What the regions depend on: the weights, the detector's settings, the region choice, precision and dtype."""
    settings = getattr(detector, "options", None) or getattr(detector, "spec", None)  # trained / published
    if dataclasses.is_dataclass(settings):
        settings = {k: v for k, v in dataclasses.asdict(settings).items() if k != "pretrained"}
    elif hasattr(detector, "transform"):  # torchvision's Faster R-CNN: its input size and proposal count
        settings = {
            "min_size": list(detector.transform.min_size),
            "max_size": detector.transform.max_size,
            "proposals": detector.rpn.post_nms_top_n(),  # in eval mode: the test-time count
        }
    options = {
        "detector": type(detector).__name__,
        "settings": settings,
        "choice": {"kind": type(choice).__name__, **dataclasses.asdict(choice)},
        "precision": precision,
        "dtype": dtype,
    }
    weights = (
        (name, t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        for name, t in detector.state_dict().items()
    )
    return shards.fingerprint(weights, options)


def forward_each(
    regions: Callable[[list[torch.Tensor]], ChosenRegions],
    images: list[torch.Tensor],
    paths: list[Path],
    positions: list[int] | None = None,
) -> list[tuple[list[int], ChosenRegions | str]]:
    """`regions(images)` as [(positions of the images, their regions)]; when the batch's forward pass fails, each
    image alone, so that only an image the model fails on is lost: its part is then the one-line problem naming its
    file (a per-image failure, not the run's). `positions`: the images' places in the batch (default 0, 1, ...)."""
    positions = list(range(len(images))) if positions is None else positions
    try:
        return [(positions, regions(images))]
    except (RuntimeError, ValueError, AssertionError) as err:
        if len(images) == 1:
            lines = str(err).strip().splitlines() or [""]
            problem = f"{paths[0]}: the model failed on it ({type(err).__name__}: {lines[0][:200]})"
            return [(positions, problem)]
    return [
        part
        for image, path, at in zip(images, paths, positions)
        for part in forward_each(regions, [image], [path], [at])
    ]


class HostCopy:
    """A batch's regions on their way to the host: on a GPU a non-blocking copy into pinned memory, which `wait`
    waits for (so the copy of batch i overlaps the forward pass of batch i + 1); elsewhere the tensors themselves."""

    def __init__(self, chosen: ChosenRegions) -> None:
        # Floats as float32: autocast leaves some outputs in bf16, which numpy has no type for.
        tensors = {n: t.float() if t.is_floating_point() else t for n, t in chosen.tensors().items()}
        self.event = None
        if any(t.device.type == "cuda" for t in tensors.values()):
            for name, t in tensors.items():
                if t.device.type == "cuda":
                    tensors[name] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(
                        t, non_blocking=True
                    )
            self.event = torch.cuda.Event()
            self.event.record()
        self.tensors = tensors

    def wait(self) -> ChosenRegions:
        """The regions on the host, once their copy has finished."""
        if self.event is not None:
            self.event.synchronize()
        return ChosenRegions.of(self.tensors)


@dataclass
class PredictedBatch:
    """What `RegionExtractor.predict_step` gives for a batch: the regions of its images, in parts of positions in the
    batch (one part unless a forward pass failed and images went alone), and the one-line problem of each other image
    by its position."""

    parts: list[tuple[list[int], HostCopy]] = dataclasses.field(default_factory=list)
    problems: dict[int, str] = dataclasses.field(default_factory=dict)


class RegionExtractor(pl.LightningModule):
    """A detector and a region choice as a LightningModule whose `predict_step` returns the batch's regions, padded
    and on their way to the host, and the one-line problem of each image the detector cannot take (a size it names up
    front, or a failed forward pass)."""

    def __init__(self, detector: torch.nn.Module, choice: RegionChoice | FasterRCNNChoice) -> None:
        super().__init__()
        self.detector = detector
        self.choice = choice

    def predict_step(self, batch: ImageBatch, batch_idx: int) -> PredictedBatch:
        out = PredictedBatch()
        grid = getattr(self.choice, "grid", None)
        size_problem = getattr(self.detector, "size_problem", None)
        todo = []
        for i, (image, path) in enumerate(zip(batch.images, batch.paths)):
            problem = size_problem(*image.shape[-2:], grid) if size_problem is not None else None
            if problem is not None:
                out.problems[i] = f"{path}: {problem}"
            else:
                todo.append(i)
        if not todo:
            return out
        # The batch came to the device as uint8, a quarter of the bytes of floats.
        images = [batch.images[i].float().div_(255) for i in todo]
        found = forward_each(
            lambda chunk: choose_regions(self.detector, chunk, self.choice),
            images,
            [batch.paths[i] for i in todo],
            todo,
        )
        for positions, result in found:
            if isinstance(result, str):
                out.problems[positions[0]] = result
            else:
                out.parts.append((positions, HostCopy(result)))
        return out


@dataclass
class _Pending:
    """A batch predicted, not yet written: what `StoreWriter.write` needs of it."""

    image_ids: list[int]
    sizes: list[tuple[int, int]]  # (height, width) of each image
    problems: list[tuple[int, str]]  # (image id, why) of the images the DataLoader could not decode
    prediction: PredictedBatch


class StoreWriter(BasePredictionWriter):
    """Each batch's regions into this process's shard (the store itself when there is one process), flushed after
    every batch. Batch i is written at the end of batch i + 1 (the last at the end of the run): on a GPU its copy to
    the host then ran during batch i + 1's forward pass, and the CPU runs the same order. A kill loses at most the two
    batches in flight (the one computed, not yet written, and the one running), which a rerun extracts; the store
    keeps what was flushed before. Images the store refuses are reported, not fatal; a failed disk write
    (`StoreWriteError`) ends the run with the shard as of its last flush."""

    def __init__(self, out: str | os.PathLike, layout: Mapping[str, Any], dtype: str) -> None:
        super().__init__(write_interval="batch")
        self.out = Path(out)
        self.layout = dict(layout)
        self.dtype = dtype
        self.writer: RegionStoreWriter | None = None
        self.pending: _Pending | None = None  # the batch to write at the end of the next one
        self.extracted = 0
        self.failed: list[tuple[int, str]] = []  # (image id, why) of the images not extracted

    def open(self, rank: int, world_size: int) -> RegionStoreWriter:
        if self.writer is None:
            path = self.out if world_size == 1 else shards.shard_path(self.out, rank)
            self.writer = RegionStoreWriter(
                path, dtype=self.dtype, chunk_regions=CHUNK_REGIONS, **self.layout
            )
        return self.writer

    def write_on_batch_end(
        self,
        trainer,
        pl_module,
        prediction: PredictedBatch,
        batch_indices,
        batch: ImageBatch,
        batch_idx,
        dataloader_idx=0,
    ) -> None:
        self.open(trainer.global_rank, trainer.world_size)
        # The images' sizes, not their pixels: those need not live a batch longer.
        sizes = [tuple(image.shape[-2:]) for image in batch.images]
        pending, self.pending = self.pending, _Pending(batch.image_ids, sizes, batch.problems, prediction)
        if pending is not None:
            self.write(pending)

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        """The last batch, held back by `write_on_batch_end`."""
        pending, self.pending = self.pending, None
        if pending is not None:
            self.write(pending)
        super().on_predict_epoch_end(trainer, pl_module)

    def write(self, batch: _Pending) -> None:
        """One batch into the store, then a flush."""
        writer = self.writer
        self.failed += batch.problems
        # The images the detector could not take, each named by its file.
        for at, problem in batch.prediction.problems.items():
            self.failed.append((batch.image_ids[at], problem))
        for positions, copy in batch.prediction.parts:
            for at, (features, boxes, fields) in zip(positions, copy.wait().unpadded(), strict=True):
                image_id = batch.image_ids[at]
                height, width = batch.sizes[at]
                if fields is not None:
                    fields = {name: values.numpy() for name, values in fields.items()}
                try:
                    writer.add(image_id, features.numpy(), boxes.numpy(), width, height, fields)
                    self.extracted += 1
                except StoreWriteError:
                    raise  # the disk, not the image: nothing more can be written
                except RegionStoreError as err:
                    self.failed.append((image_id, str(err)))
        writer.flush()

    def close(self) -> None:
        """Commit this process's shard (or store)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


@dataclass
class ExtractionResult:
    extracted: int  # images extracted by this run, all processes together
    skipped: int  # requested images already in the store or a shard
    problems: list[str]  # one line per file not extracted
    merged: int  # images merged from shards into the store
    rank: int  # this process's; only rank 0 should report


def extract_folders(
    images: str | os.PathLike | Sequence[str | os.PathLike],
    detector: torch.nn.Module,
    out: str | os.PathLike,
    choice: RegionChoice | FasterRCNNChoice,
    dtype: str = "float16",
    batch_size: int = 4,
    workers: int = 2,
    accelerator: str = "cpu",
    devices: int | str | list[int] = 1,
    num_nodes: int = 1,
    precision: str = "32-true",
    progress: bool = True,
) -> ExtractionResult:
    """Extract every image of the folders that is not yet in the store `out` (nor in a shard of an earlier run),
    on `num_nodes` x `devices` processes, then merge the shards into `out`."""
    with quiet_lightning():
        detector = detector.eval()
        wanted = request(images)
        expected = detector_fingerprint(detector, choice, dtype, precision)
        settings = trainer_settings(accelerator, devices, num_nodes, precision)
        # Pinned host memory: the copy of a batch to the GPU can overlap the work on the previous one.
        pinned = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
        data = ExtractionData(wanted, out, expected, batch_size, workers, pin_memory=pinned)
        writer = StoreWriter(out, {**store_layout(detector, choice), "attrs": expected}, dtype)
        trainer = pl.Trainer(callbacks=[writer], enable_progress_bar=progress, **settings)
        trainer.predict(RegionExtractor(detector, choice), datamodule=data, return_predictions=False)
        writer.close()
        counts = all_gathered((writer.extracted, writer.failed))
        extracted = sum(n for n, _ in counts)
        position = {image_id: n for n, (image_id, _) in enumerate(wanted.images)}
        failed = sorted((found for _, failures in counts for found in failures), key=lambda f: position[f[0]])
        merged = 0
        if trainer.global_rank == 0:
            found = shards.shards_of(out)
            requested = {image_id for image_id, _ in wanted.images} - {image_id for image_id, _ in failed}
            merged, _ = shards.merge(found, out, requested=requested, expected=expected)
            shards.remove(found)
        problems = [*wanted.problems, *(line for _, line in failed)]
        return ExtractionResult(extracted, data.skipped, problems, merged, trainer.global_rank)


def run_extraction(
    images: str | os.PathLike | Sequence[str | os.PathLike],
    detector: torch.nn.Module,
    out: str | os.PathLike,
    choice: RegionChoice | FasterRCNNChoice,
    dtype: str,
    batch_size: int,
    device: str,
    progress: bool,
    workers: int = 2,
    accelerator: str | None = None,
    devices: int | None = None,
    num_nodes: int = 1,
    precision: str = "32-true",
) -> tuple[int, int, list[str]]:
    """`extract_folders` with `vqacap extract`'s --device: (extracted, skipped, problems)."""
    accelerator, chosen = accelerator_for(device, accelerator, devices)
    result = extract_folders(
        images,
        detector,
        out,
        choice,
        dtype=dtype,
        batch_size=batch_size,
        workers=workers,
        accelerator=accelerator,
        devices=chosen,
        num_nodes=num_nodes,
        precision=precision,
        progress=progress,
    )
    return result.extracted, result.skipped, result.problems

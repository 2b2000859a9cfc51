"""Image files as extraction batches, dealt to the processes of a (distributed) extraction.

What is asked (`request`): every image file of the folders, with its id from the file name; files without an id or
with an id already taken are reported, not extracted. What a process extracts (`ExtractionData.setup`): the requested
images that are neither in the store nor in a shard of an earlier run (vqacap.extraction.shards), every
`world_size`-th of them in id order, so that the processes never share an image.

Decoding runs in DataLoader workers: a batch carries the images as uint8 tensors at their own size (a quarter of the
bytes of floats, pinned for an asynchronous copy to the GPU); the detector resizes and normalises them on its device
as it always does, so the regions are those of a one-image-at-a-time extraction. Images are batched by aspect ratio,
so that a batch's images are padded little. An unreadable image is reported by id in its batch's `problems` and
skipped; the others of the batch go on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.functional import pil_to_tensor

from vqacap.extraction import shards
from vqacap.images import ImageError, image_files, image_id_from_name, open_rgb


@dataclass
class Request:
    """The images to extract, (image id, file) with distinct ids, and what was wrong with the other files."""

    images: list[tuple[int, Path]]
    problems: list[str]


def request(folders: str | os.PathLike | Sequence[str | os.PathLike]) -> Request:
    """The image files of the folders (see `vqacap.images.image_files`) with their ids."""
    images, problems = [], []
    seen: dict[int, Path] = {}
    for path in image_files(folders):
        image_id = image_id_from_name(path)
        if image_id is None:
            problems.append(f"{path}: no image id (digits) in the file name")
        elif image_id in seen:
            problems.append(f"{path}: image id {image_id} already taken by {seen[image_id]}")
        else:
            seen[image_id] = path
            images.append((image_id, path))
    return Request(images, problems)


@dataclass
class ImageBatch:
    """B decodable images of a batch, and one line per image of it that could not be decoded."""

    image_ids: list[int]
    images: list[torch.Tensor]  # (3, H, W) uint8 each
    problems: list[tuple[int, str]] = field(default_factory=list)  # (image id, why) of the undecodable ones
    paths: list[Path] = field(default_factory=list)  # the files of image_ids, to name them in a problem

    def pin_memory(self) -> ImageBatch:  # called by the DataLoader's pinning thread
        return replace(self, images=[image.pin_memory() for image in self.images])


class DecodedBatches(Dataset):
    """Item b: batch b of the images as an `ImageBatch`, decoded by whichever DataLoader worker builds it (a dataset
    of batches, so that Lightning's predict loop keeps the batching as made here)."""

    def __init__(self, images: Sequence[tuple[int, Path]], batches: Sequence[Sequence[int]]) -> None:
        self.images = list(images)
        self.batches = [list(b) for b in batches]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, b: int) -> ImageBatch:
        batch = ImageBatch([], [], [], [])
        for i in self.batches[b]:
            image_id, path = self.images[i]
            try:
                image = pil_to_tensor(open_rgb(path))
            except ImageError as err:  # reported by id; the rest of the batch goes on
                batch.problems.append((image_id, str(err)))
                continue
            batch.image_ids.append(image_id)
            batch.images.append(image)
            batch.paths.append(path)
        return batch


def header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header without decoding it; (1, 1) for a file the workers will report."""
    try:
        with Image.open(path) as im:
            return im.size
    except Exception:  # whatever is wrong with it is reported, by id, when a worker decodes it
        return 1, 1


def aspect_ratio_batches(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices of `sizes` in batches of `batch_size` whose images have neighbouring aspect ratios (width / height):
    a batch is padded to its widest and tallest image, which costs little when all have the same shape."""
    order = sorted(range(len(sizes)), key=lambda i: (sizes[i][0] / max(1, sizes[i][1]), i))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


class ExtractionData(pl.LightningDataModule):
    """The images this process extracts (decided in `setup`, once every process has started), as `ImageBatch`es."""

    def __init__(
        self,
        wanted: Request,
        out: str | os.PathLike,
        expected: dict[str, str],
        batch_size: int = 4,
        num_workers: int = 2,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.wanted = wanted
        self.out = Path(out)
        self.expected = expected
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.mine: list[tuple[int, Path]] = []
        self.skipped = 0  # requested images already extracted (store or shards)

    def setup(self, stage: str | None = None) -> None:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        found = [self.out, *shards.shards_of(self.out)]
        for path in found:  # every process checks, so that all stop alike on a foreign shard
            shards.check_same(path, self.expected)
        if rank == 0:  # what killed runs wrote is committed before anyone reads the stores, or writes its own
            for path in found:
                shards.settle(path)
        if trainer is not None:
            trainer.strategy.barrier("extraction: shards settled")
        done = shards.stored_ids(self.out) | shards.ids_in_shards(shards.shards_of(self.out))
        todo = {image_id for image_id, _ in self.wanted.images} - done
        self.skipped = len(self.wanted.images) - len(todo)
        paths = dict(self.wanted.images)
        self.mine = [(image_id, paths[image_id]) for image_id in shards.deal(todo, rank, world)]

    def predict_dataloader(self) -> DataLoader:
        sizes = [header_size(path) for _, path in self.mine]
        return DataLoader(
            DecodedBatches(self.mine, aspect_ratio_batches(sizes, self.batch_size)),
            batch_size=None,  # items are whole batches
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
        )

"""Image files as prediction batches: the bottom-up detector turns each image's pixels into the regions a captioner or
a VQA model attends over, chosen exactly as `vqacap extract --detector` chooses them for a region store (generate_tsv's
proposals, 10-100 or a fixed count, or the N x N grid of the same trunk), so a model trained on an extracted store
sees the same kind of regions here.

    data = PixelDataModule(["photo.jpg", "scene.png"], detector)                   # captioning
    data = PixelDataModule(["photo.jpg"], detector, question="what colour ...?", words=vqa_module.hparams.words)
    items = [x for batch in trainer.predict(module, datamodule=data) for x in batch]

Images get the ids 0, 1, ... in the order given. Each batch also carries the detector's name of every region (the most
probable attribute and object class: "red circle"), which the modules'
`predict_step` passes on so that attention maps can say what was attended. An unusable image file raises
`vqacap.images.ImageError` (one line naming it) when its batch is read.

Dims: B images, K regions (the largest count in the batch), D the detector's feature dimension.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from vqacap.data.captions import CaptionBatch
from vqacap.data.store import Regions
from vqacap.data.vocab import Vocabulary, tokenize
from vqacap.data.vqa import VQABatch
from vqacap.images import load_image
from vqacap.models.regions import ADAPTIVE_BOXES, CONF_THRESH, bottom_up_regions, grid_batch


@dataclass
class PixelCaptionBatch(CaptionBatch):
    region_labels: list[list[str]] | None = None  # per image, the detector's name of each real region


@dataclass
class PixelVQABatch(VQABatch):
    region_labels: list[list[str]] | None = None


@dataclass(frozen=True)
class RegionChoice:
    """Which regions of an image the models see: `vqacap extract --detector`'s options."""

    min_boxes: int = ADAPTIVE_BOXES[0]
    max_boxes: int = ADAPTIVE_BOXES[1]
    conf_thresh: float = CONF_THRESH
    grid: int | None = None  # N: the N x N cells of the res5 map instead of regions

    def __post_init__(self) -> None:
        if self.grid is not None and self.grid < 1:
            raise ValueError(f"grid must be at least 1, got {self.grid}")
        if self.grid is None and not 1 <= self.min_boxes <= self.max_boxes:
            raise ValueError(f"need 1 <= min_boxes <= max_boxes, got {self.min_boxes} and {self.max_boxes}")


def region_names(
    fields: dict[str, torch.Tensor] | None, classes: list[str], attributes: list[str]
) -> list[str]:
    """'red circle' per region: the most probable attribute (other than "no attribute") and object class, the labels
    extraction stores; [] for grid cells, which have none."""
    if fields is None:
        return []
    return [
        f"{attributes[a]} {classes[c]}"
        for c, a in zip(fields["object_labels"].tolist(), fields["attribute_labels"].tolist())
    ]


class ImageFiles(Dataset):
    """Item i is (i, the image as a (3, H, W) float tensor in [0, 1]); files are read when their batch is made."""

    def __init__(self, paths: Sequence[str | os.PathLike]) -> None:
        self.paths = [Path(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        return i, load_image(self.paths[i])


class DetectorCollate:
    """Images -> one padded batch of their detected regions (+ the question, for VQA)."""

    def __init__(
        self, detector: torch.nn.Module, choice: RegionChoice, question: torch.Tensor | None
    ) -> None:
        self.detector = detector
        self.choice = choice
        self.question = question  # (T,) token ids, the same question for every image

    @torch.no_grad()
    def __call__(self, items: list[tuple[int, torch.Tensor]]) -> PixelCaptionBatch | PixelVQABatch:
        ids = torch.tensor([i for i, _ in items], dtype=torch.long)
        device = next(self.detector.parameters()).device
        images = [image.to(device) for _, image in items]
        c = self.choice
        if c.grid is not None:
            found = grid_batch(self.detector, images, c.grid)
        else:
            chosen = bottom_up_regions(self.detector, images, c.conf_thresh, c.min_boxes, c.max_boxes)
            found = chosen.to("cpu").unpadded()  # one copy to the host for the batch
        regions = pad_regions(
            [features.cpu() for features, _, _ in found],
            [boxes.cpu() for _, boxes, _ in found],
            [(image.shape[-1], image.shape[-2]) for image in images],
        )
        labels = [
            region_names(fields, self.detector.classes, self.detector.attributes) for _, _, fields in found
        ]
        if self.question is None:
            return PixelCaptionBatch(ids, regions, None, region_labels=labels)
        questions = self.question.unsqueeze(0).expand(len(items), -1).clone()  # (B, T)
        return PixelVQABatch(ids, ids, regions, questions, region_labels=labels)


def pad_regions(
    features: list[torch.Tensor], boxes: list[torch.Tensor], sizes: list[tuple[int, int]]
) -> Regions:
    """Per-image features (k_i, D) and boxes (k_i, 4), image sizes (width, height) -> a padded `Regions` batch, as the
    region store's `read_batch` pads."""
    b, k, d = len(features), max(len(f) for f in features), features[0].shape[1]
    padded = Regions(
        features=torch.zeros(b, k, d),
        boxes=torch.zeros(b, k, 4),
        mask=torch.zeros(b, k, dtype=torch.bool),
        image_size=torch.tensor(sizes, dtype=torch.float32),
    )
    for i, (f, x) in enumerate(zip(features, boxes)):
        padded.features[i, : len(f)] = f.float()
        padded.boxes[i, : len(x)] = x.float()
        padded.mask[i, : len(f)] = True
    return padded


def encode_question(question: str, words: list[str], max_length: int = 14) -> torch.Tensor:
    """(T,) token ids of a question in a VQA model's vocabulary (`words`, specials first); ValueError when none of its
    words is known to the model (it would answer an empty question)."""
    vocab = Vocabulary.from_words(words, max_length=max_length)
    ids = vocab.encode(question, field="--question")
    if len(tokenize(question)) > max_length:  # a question trained on reads at most max_length words
        logging.getLogger(__name__).warning(
            "--question: %d words; the model reads the first %d (%s ...)",
            len(tokenize(question)),
            max_length,
            " ".join(tokenize(question)[:max_length]),
        )
    if all(vocab.words[i] == "<unk>" for i in ids):
        raise ValueError(f"--question: none of the words of {question!r} is in the VQA model's vocabulary")
    return torch.tensor(ids, dtype=torch.long)


class PixelDataModule(pl.LightningDataModule):
    """`predict_dataloader` over image files whose regions the bottom-up `detector` finds in the collate function.

    `question` given (with the VQA model's `words`): VQA batches asking it of every image; else caption batches.
    The detector runs in the loading process (num_workers 0), on its own device.
    """

    def __init__(
        self,
        images: Sequence[str | os.PathLike],
        detector: torch.nn.Module,
        choice: RegionChoice | None = None,
        question: str | None = None,
        words: list[str] | None = None,
        batch_size: int = 4,
    ) -> None:
        super().__init__()
        if not images:
            raise ValueError("no image files given")
        if question is not None and words is None:
            raise ValueError("a question needs the VQA model's words to be encoded")
        self.images = ImageFiles(images)
        self.collate = DetectorCollate(
            detector.eval(),
            choice or RegionChoice(),
            None if question is None else encode_question(question, words),
        )
        self.batch_size = batch_size

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None:  # each process of a distributed run detects on its own device
            self.collate.detector.to(self.trainer.strategy.root_device)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.images, batch_size=self.batch_size, shuffle=False, collate_fn=self.collate)

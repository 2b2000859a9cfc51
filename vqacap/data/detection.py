"""Detection data: prepared Visual Genome-format annotations + images -> batches for the bottom-up detector.

The annotations are the `detection_<split>.json` files that `vqacap prepare vg` writes (their layout is in
`load_detection_split`); the images are read from disk (`vqacap.images.open_rgb`), as RGB floats in [0, 1], at their
own size (the detector resizes). Training images are flipped horizontally with probability 0.5 (cfg.TRAIN.USE_FLIPPED
of Faster R-CNN, which doubles the training set with the flipped copies).

For Shapes, `prepare_data` runs the Shapes generator, which renders the images and writes them in Visual Genome's
format, then `vqacap.shapes.prepare_detection`, which runs the same preparation as real data gets. The loaders,
the splits and the resumable training order are `TaskDataModule`'s (vqacap.data.base), as for the region tasks.
Not here: the model (vqacap.models.detector) and the metric (vqacap.metrics.detection).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vqacap.data.base import SPLITS, Batch, TaskDataModule, spread
from vqacap.images import ImageError, load_image

FORMAT = "vqacap-detection"
MAX_ATTRIBUTES = 16  # per object, as bottom-up-attention's vg.py keeps


class DetectionFormatError(ValueError):
    """An annotation file that does not follow the prepared detection format; the message names the file and record."""


@dataclass
class DetectionImage:
    image_id: int
    path: Path  # image_root / file_name
    width: int
    height: int
    boxes: np.ndarray  # (n, 4) float32 x1, y1, x2, y2 pixels
    labels: np.ndarray  # (n,) int64 in 1..C
    attributes: np.ndarray  # (n, MAX_ATTRIBUTES) int64 in 1..A, padded with -1


@dataclass
class DetectionSplit:
    classes: list[str]  # index 0 = "__background__"
    attributes: list[str]  # index 0 = "__no_attribute__"
    images: list[DetectionImage]


def load_detection_split(path: str | os.PathLike) -> DetectionSplit:
    """Read one `detection_<split>.json`:

        {"format": "vqacap-detection", "version": 1, "image_root": DIR, "classes": [...], "attributes": [...],
         "images": [{"image_id", "file_name", "width", "height",
                     "objects": [{"box": [x1, y1, x2, y2], "class": c, "attributes": [a, ...]}]}]}

    Raises DetectionFormatError naming the file (and image id, object and field) on anything else.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: detection annotation file not found (run `vqacap prepare vg`)"
        ) from None
    except json.JSONDecodeError as err:
        raise DetectionFormatError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DetectionFormatError(f'{path}: not a prepared detection file ("format" is not {FORMAT!r})')
    if data.get("version") != 1:
        raise DetectionFormatError(
            f"{path}: unsupported version {data.get('version')!r} (this reader knows 1)"
        )
    for key in ("image_root", "classes", "attributes", "images"):
        if key not in data:
            raise DetectionFormatError(f"{path}: missing {key!r}")
    classes, attributes = list(data["classes"]), list(data["attributes"])
    if len(classes) < 2 or classes[0] != "__background__":
        raise DetectionFormatError(
            f"{path}: \"classes\" must start with '__background__' and name at least one class"
        )
    if not attributes or attributes[0] != "__no_attribute__":
        raise DetectionFormatError(f"{path}: \"attributes\" must start with '__no_attribute__'")
    root = Path(data["image_root"])
    images = [_image(path, root, record, len(classes), len(attributes)) for record in data["images"]]
    return DetectionSplit(classes, attributes, images)


def _image(path: Path, root: Path, record: dict, num_classes: int, num_attributes: int) -> DetectionImage:
    image_id = record.get("image_id")
    where = f"{path}: image {image_id}"
    try:
        width, height, objects = int(record["width"]), int(record["height"]), record["objects"]
        name = record["file_name"]
    except (KeyError, TypeError, ValueError) as err:
        raise DetectionFormatError(f"{where}: missing or malformed field ({err})") from None
    boxes = np.zeros((len(objects), 4), dtype=np.float32)
    labels = np.zeros(len(objects), dtype=np.int64)
    attributes = np.full((len(objects), MAX_ATTRIBUTES), -1, dtype=np.int64)
    for n, obj in enumerate(objects):
        box, label, attrs = obj.get("box"), obj.get("class"), obj.get("attributes", [])
        if not (isinstance(box, list) and len(box) == 4):
            raise DetectionFormatError(f'{where}, object {n}: "box" must be [x1, y1, x2, y2], got {box!r}')
        try:  # checked as stored: a box positive in float64 can be empty in float32 (torchvision then asserts)
            x1, y1, x2, y2 = np.asarray(box, dtype=np.float32)
        except (TypeError, ValueError):
            raise DetectionFormatError(f'{where}, object {n}: "box" {box!r} is not four numbers') from None
        if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
            raise DetectionFormatError(
                f"{where}, object {n}: box {box} is empty or outside the {width}x{height} image"
            )
        if not (isinstance(label, int) and 1 <= label < num_classes):
            raise DetectionFormatError(
                f'{where}, object {n}: "class" {label!r} is not in 1..{num_classes - 1}'
            )
        if len(attrs) > MAX_ATTRIBUTES or any(
            not (isinstance(a, int) and 1 <= a < num_attributes) for a in attrs
        ):
            raise DetectionFormatError(
                f'{where}, object {n}: "attributes" {attrs!r} must be at most {MAX_ATTRIBUTES} indices in '
                f"1..{num_attributes - 1}"
            )
        boxes[n], labels[n] = (x1, y1, x2, y2), label
        attributes[n, : len(attrs)] = attrs
    return DetectionImage(int(image_id), root / name, width, height, boxes, labels, attributes)


@dataclass
class DetectionBatch(Batch):
    image_ids: torch.Tensor  # (B,) long
    images: list[torch.Tensor]  # B x (3, H, W) float in [0, 1]
    targets: list[dict[str, torch.Tensor]]  # B x {"boxes" (n, 4), "labels" (n,), "attributes" (n, 16)}


class DetectionSet(Dataset):
    """Images of one split with their objects; `flip`: mirror each image (and its boxes) with probability 0.5."""

    def __init__(self, images: list[DetectionImage], flip: bool = False) -> None:
        self.images = images
        self.flip = flip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, dict[str, torch.Tensor]]:
        record = self.images[i]
        if not record.path.is_file():
            raise FileNotFoundError(f"{record.path}: image {record.image_id} not found")
        try:
            image = load_image(record.path)  # (3, H, W)
        except ImageError as err:
            raise ImageError(f"{err} (image {record.image_id})") from None
        if image.shape[1:] != (record.height, record.width):
            raise ValueError(
                f"{record.path}: image {record.image_id} is {image.shape[2]}x{image.shape[1]}, the annotations say "
                f"{record.width}x{record.height}"
            )
        boxes = torch.from_numpy(record.boxes.copy())
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
            boxes = torch.stack(
                [record.width - boxes[:, 2], boxes[:, 1], record.width - boxes[:, 0], boxes[:, 3]], 1
            )
        target = {
            "boxes": boxes,
            "labels": torch.from_numpy(record.labels),
            "attributes": torch.from_numpy(record.attributes),
        }
        return record.image_id, image, target

    @staticmethod
    def collate(items: list) -> DetectionBatch:
        ids, images, targets = zip(*items)
        return DetectionBatch(torch.as_tensor(ids), list(images), list(targets))


class DetectionDataModule(TaskDataModule):
    """Prepared detection annotations (`<annotation_dir>/detection_<split>.json`) and their images; takes
    `TaskDataModule`'s loader and order arguments besides its own.

    generator: a data generator node (Shapes) run with root=data_dir in prepare_data; prepare: a node run after it with
    root=data_dir that writes the annotations into annotation_dir (vqacap.shapes.prepare_detection); both None for
    data prepared beforehand (`vqacap prepare vg --out <annotation_dir>`). flip: mirror each training image with
    probability 0.5.
    """

    def __init__(
        self,
        data_dir: str,
        annotation_dir: str | None = None,
        batch_size: int = 1,
        eval_batch_size: int = 1,
        flip: bool = True,
        prepare: dict | None = None,
        **kwargs,
    ) -> None:
        # batch_size: images per training batch (IMS_PER_BATCH: 1 per GPU in the paper)
        super().__init__(data_dir, batch_size=batch_size, eval_batch_size=eval_batch_size, **kwargs)
        self.annotation_dir = Path(annotation_dir) if annotation_dir else self.data_dir
        self.split_files = {s: self.annotation_dir / f"detection_{s}.json" for s in SPLITS}
        self.flip = flip
        self.prepare = prepare
        self._splits: dict[str, DetectionSplit] = {}

    def prepare_data(self) -> None:
        from hydra.utils import instantiate

        super().prepare_data()
        if self.prepare is not None:
            written = Path(instantiate(self.prepare, root=str(self.data_dir)))
            if written.resolve() != self.annotation_dir.resolve():
                raise ValueError(
                    f"data.prepare wrote the annotations to {written}, but data.annotation_dir is {self.annotation_dir}"
                )

    def load_split(self, split: str) -> DetectionSplit:
        """The images and objects of the split (read once); its classes and attributes must be the training split's."""
        self.check_split(split)
        if split not in self._splits:
            loaded = load_detection_split(self.split_files[split])
            train = loaded if split == "train" else self.load_split("train")
            if (loaded.classes, loaded.attributes) != (train.classes, train.attributes):
                raise ValueError(
                    f"{self.split_files[split]}: classes or attributes differ from the training split's (prepare all "
                    "splits with the same vocabularies)"
                )
            self._splits[split] = loaded
        return self._splits[split]

    def model_kwargs(self) -> dict:
        """What the LightningModule needs to know about the data to build its model: the class and attribute names."""
        train = self.load_split("train")
        return {"classes": train.classes, "attributes": train.attributes}

    def train_set(self) -> DetectionSet:
        return DetectionSet(self.load_split("train").images, flip=self.flip)

    def eval_set(self, split: str) -> DetectionSet:
        return DetectionSet(self.load_split(split).images)

    # -- examples, for the detection-image callback ------------------------------------------------------------------
    def example_ids(self, split: str, count: int) -> list[int]:
        """`count` image ids spread evenly over the split in file order: the same images every call."""
        return spread([im.image_id for im in self.load_split(split).images], count)

    def examples(self, split: str, image_ids: list[int]) -> DetectionBatch:
        """An evaluation batch of these images of the split (not flipped)."""
        position = {im.image_id: i for i, im in enumerate(self.load_split(split).images)}
        unknown = [i for i in image_ids if int(i) not in position]
        if unknown:
            raise ValueError(f"{self.split_files[split]}: no image with id {unknown[0]}")
        dataset = self.eval_set(split)
        return DetectionSet.collate([dataset[position[int(i)]] for i in image_ids])

"""A tiny detection dataset in the prepared format (detection_<split>.json + PNG images), drawn with PIL.

Squares and circles, red or blue, some "large"; every third object has no attribute. Written in the exact layout that
`vqacap prepare vg` produces, so the DataModule and the trainer read it as they read real data. Also boxes that stress
non-maximum suppression.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

CLASSES = ["__background__", "square", "circle"]
ATTRIBUTES = ["__no_attribute__", "red", "blue", "large"]
COLOURS = {"red": (220, 40, 40), "blue": (40, 80, 220)}


def write_detection_dataset(
    root: Path, sizes: dict[str, int] | None = None, image_size: int = 64, seed: int = 0
) -> Path:
    """Write <root>/images/<split>/<id>.png and <root>/detection_<split>.json; returns root."""
    sizes = sizes or {"train": 8, "val": 4, "test": 4}
    rng = np.random.default_rng(seed)
    root = Path(root)
    next_id = 1
    for split, count in sizes.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        images = []
        for _ in range(count):
            image = Image.new("RGB", (image_size, image_size), (235, 235, 235))
            pen = ImageDraw.Draw(image)
            objects = []
            for k in range(int(rng.integers(1, 3))):
                large = bool(rng.random() < 0.5)
                side = int(rng.integers(20, 28) if large else rng.integers(10, 16))
                # one object per half of the image, so objects never overlap
                x1 = float(rng.integers(0, image_size // 2 - side) + k * image_size // 2)
                y1 = float(rng.integers(0, image_size - side))
                box = [x1, y1, x1 + side, y1 + side]
                colour = "red" if rng.random() < 0.5 else "blue"
                shape = "square" if rng.random() < 0.5 else "circle"
                (pen.rectangle if shape == "square" else pen.ellipse)(box, fill=COLOURS[colour])
                attributes = [ATTRIBUTES.index(colour)] + ([ATTRIBUTES.index("large")] if large else [])
                if (next_id + k) % 3 == 0:
                    attributes = []
                objects.append({"box": box, "class": CLASSES.index(shape), "attributes": attributes})
            name = f"images/{split}/{next_id}.png"
            image.save(root / name)
            images.append({
                "image_id": next_id, "file_name": name, "width": image_size, "height": image_size, "objects": objects,
            })  # fmt: skip
            next_id += 1
        data = {
            "format": "vqacap-detection",
            "version": 1,
            "image_root": str(root),
            "classes": CLASSES,
            "attributes": ATTRIBUTES,
            "images": images,
        }
        (root / f"detection_{split}.json").write_text(json.dumps(data))
    return root


def awkward_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 4) pixel boxes in random order: fractional and whole-pixel corners, degenerate ones (x2 < x1), and for n >= 7
    an exact duplicate, a nested box, a pair at IoU exactly 6 / 20 = 0.3 with the +1-pixel convention, and two
    identical zero-area boxes (IoU 0 / 0)."""
    xy = torch.rand(n, 2, generator=generator) * 200
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=generator) * 120 - 10], 1)
    whole = torch.rand(n, generator=generator) < 0.5
    boxes[whole] = boxes[whole].round()
    if n >= 7:
        boxes[1] = boxes[0]
        boxes[2] = boxes[0] + torch.tensor([1.5, 1.5, -1.5, -1.5])
        boxes[3] = torch.tensor([50.0, 50.0, 50.0, 55.0])  # 1 x 6 pixels
        boxes[4] = torch.tensor([50.0, 50.0, 51.0, 59.0])  # 2 x 10 pixels around it
        boxes[5] = boxes[6] = torch.tensor([10.0, 10.0, 9.0, 20.0])  # 0 pixels wide
    return boxes[torch.randperm(n, generator=generator)]

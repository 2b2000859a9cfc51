"""Rows of bottom-up-attention's TSV (generate_tsv.py's output: id, width, height, box count, base64 boxes and
features), as `vqacap prepare features --tsv` reads them."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

FEATURE_DIM = 2048  # bottom-up-attention's ResNet-101 features


def make_image(image_id: int, k: int, w: int = 640, h: int = 480) -> tuple[np.ndarray, np.ndarray, int, int]:
    rng = np.random.default_rng(image_id)
    x1, y1 = rng.uniform(0, w / 2, k), rng.uniform(0, h / 2, k)
    boxes = np.stack([x1, y1, x1 + rng.uniform(1, w / 2, k), y1 + rng.uniform(1, h / 2, k)], 1).astype(
        np.float32
    )
    features = rng.uniform(0, 10, (k, FEATURE_DIM)).astype(np.float32)  # ReLU outputs: non-negative
    return features, boxes, w, h


def tsv_line(
    image_id: int, features: np.ndarray, boxes: np.ndarray, w: int, h: int, num_boxes: int | None = None
) -> str:
    b64 = [base64.b64encode(a.astype(np.float32).tobytes()).decode() for a in (boxes, features)]
    return "\t".join(
        [str(image_id), str(w), str(h), str(len(boxes) if num_boxes is None else num_boxes), *b64]
    )


def write_tsv(path: Path, image_ids, k: int = 36) -> Path:
    """A TSV at path with one row of k random regions (make_image) per image id."""
    path.write_text("".join(tsv_line(i, *make_image(i, k=k)) + "\n" for i in image_ids))
    return path

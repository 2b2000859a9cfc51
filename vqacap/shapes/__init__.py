"""Shapes: the embedded default dataset, generated offline and deterministically from a seed (plain, or the cluttered
style of `ClutteredShapesGenerator`), written in the public formats real data uses (region store, COCO captions, VQA v2,
Visual Genome). A test bed, not a benchmark: captions and answers are fully determined by the regions. It sits beside
vqacap.prepare because it writes the same files a user brings.

    scenes.py     the objects, the grammar of captions and questions, `ShapesGenerator`
    render.py     drawing one object
    cluttered.py  `ClutteredShapesGenerator`: overlap, occlusion, patterns, distractors
    files.py      `generate` (the public formats), `write_vg` and `prepare_detection` (Visual Genome's, then `prepare vg`)

What it generates and where: docs/data.md (Shapes).
"""

from vqacap.shapes.cluttered import (
    CLUTTERED_SHAPES,
    CLUTTERED_SIZES,
    MIN_VISIBLE,
    PATTERNS,
    ClutteredObject,
    ClutteredScene,
    ClutteredShapesGenerator,
)
from vqacap.shapes.files import GENERATORS, generate, prepare_detection, write_vg
from vqacap.shapes.scenes import (
    BACKGROUNDS,
    COLOURS,
    HELD_OUT_ANSWERS,
    SHAPES,
    SIZES,
    SPLITS,
    STYLES,
    Scene,
    ShapesGenerator,
    ShapesObject,
)

__all__ = [
    "BACKGROUNDS",
    "CLUTTERED_SHAPES",
    "CLUTTERED_SIZES",
    "COLOURS",
    "GENERATORS",
    "HELD_OUT_ANSWERS",
    "MIN_VISIBLE",
    "PATTERNS",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "STYLES",
    "ClutteredObject",
    "ClutteredScene",
    "ClutteredShapesGenerator",
    "Scene",
    "ShapesGenerator",
    "ShapesObject",
    "generate",
    "prepare_detection",
    "write_vg",
]

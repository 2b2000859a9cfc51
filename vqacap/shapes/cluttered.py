"""Cluttered Shapes: scenes a detector has to work for (overlap and occlusion, continuous sizes, fill patterns, textured
backgrounds, distractor blobs), with the grammar of the plain scenes and one more attribute, the pattern."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from vqacap.shapes.render import draw_shape
from vqacap.shapes.scenes import BACKGROUNDS, COLOURS, SHAPES, Scene, ShapesGenerator, ShapesObject


@dataclass
class ClutteredObject(ShapesObject):
    pattern: str = "solid"

    def describe(self) -> str:
        return f"{self.size} {self.pattern} {self.colour} {self.shape}"

    def attributes(self) -> list[str]:
        return [self.colour, self.size, self.pattern]


CLUTTERED_SHAPES = (*SHAPES, "star", "hexagon", "cross")
# Radius bands of the size attribute; a radius is drawn uniformly from 6 to 19 pixels, so sizes are continuous.
CLUTTERED_SIZES = {"small": (6.0, 10.0), "medium": (10.0, 14.0), "large": (14.0, 19.0)}
PATTERNS = ("solid", "striped", "dotted")
MIN_VISIBLE = 0.5  # every object keeps at least this share of its pixels in view


@dataclass
class ClutteredScene(Scene):
    # Per object: the top-left corner (x0, y0) of a crop around it and the crop's bool mask of its pixels.
    masks: list[tuple[int, int, np.ndarray]] = field(default_factory=list)
    # Blobs that are no object: {"points": polygon, "rgb": colour, "box": [x1, y1, x2, y2]}.
    distractors: list[dict] = field(default_factory=list)


class ClutteredShapesGenerator(ShapesGenerator):
    """Shapes that are hard to detect: overlap and occlusion, continuous sizes, fill patterns, textured backgrounds and
    distractor blobs. Same grammar for captions and questions; the pattern is one more attribute."""

    shapes = CLUTTERED_SHAPES
    sizes = CLUTTERED_SIZES
    max_objects = 8
    # JPEG, as Visual Genome's photos: PNG spends ~10 ms per noisy image choosing its row filters.
    image_format = ("jpg", {"quality": 90})

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        yy, xx = np.mgrid[0 : self.image_size, 0 : self.image_size]
        # Fill patterns in image coordinates: the pattern's pixels are drawn in a darker shade of the object's colour.
        self.patterns = {
            "solid": np.zeros_like(xx, dtype=bool),
            "striped": ((xx + yy) // 3) % 2 == 1,
            "dotted": (xx % 5 < 2) & (yy % 5 < 2),
        }

    def embedding_names(self) -> tuple[str, ...]:
        return (*super().embedding_names(), *PATTERNS, "distractor")

    def _shape_crop(self, shape: str, box: list[float]) -> tuple[int, int, np.ndarray]:
        """The shape's pixels: the top-left corner (x0, y0) of a crop around it and the crop's bool mask."""
        x0, y0 = math.floor(box[0]), math.floor(box[1])
        canvas = Image.new("L", (math.ceil(box[2]) - x0 + 1, math.ceil(box[3]) - y0 + 1), 0)
        draw_shape(ImageDraw.Draw(canvas), shape, [box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0], 255)
        return x0, y0, np.asarray(canvas) > 0

    def scene(self) -> ClutteredScene:
        rng, s = self.rng, self.image_size
        n = int(rng.integers(3, self.max_objects + 1))
        objects: list[ClutteredObject] = []
        masks: list[tuple[int, int, np.ndarray]] = []
        on_top = np.full((s, s), -1, dtype=np.int16)  # index of the object seen at each pixel
        visible, area = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        for _ in range(20 * n):
            if len(objects) == n:
                break
            r = float(rng.uniform(CLUTTERED_SIZES["small"][0], CLUTTERED_SIZES["large"][1]))
            if objects and rng.random() < 0.6:  # next to an earlier object, so that they overlap
                cx, cy = objects[int(rng.integers(len(objects)))].centre
                angle, dist = rng.uniform(0, 2 * math.pi), rng.uniform(0.6, 1.2) * r
                cx, cy = cx + dist * math.cos(angle), cy + dist * math.sin(angle)
            else:
                cx, cy = rng.uniform(0, s, size=2)
            cx, cy = float(np.clip(cx, r + 1, s - r - 1)), float(np.clip(cy, r + 1, s - r - 1))
            shape = self._pick(self.shapes)
            x0, y0, crop = self._shape_crop(shape, [cx - r, cy - r, cx + r, cy + r])
            window = on_top[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]]
            hidden = np.bincount(window[crop] + 1, minlength=len(objects) + 1)[1:]  # pixels each object loses
            if (visible - hidden < MIN_VISIBLE * area).any():
                continue
            window[crop] = len(objects)
            visible = np.append(visible - hidden, crop.sum())
            area = np.append(area, crop.sum())
            ys, xs = np.nonzero(crop)
            size = next(name for name, (lo, hi) in CLUTTERED_SIZES.items() if r < hi or name == "large")
            box = [
                float(x0 + xs.min()),
                float(y0 + ys.min()),
                float(x0 + xs.max() + 1),
                float(y0 + ys.max() + 1),
            ]
            objects.append(
                ClutteredObject(shape, self._pick(list(self.colours)), size, box, self._pick(PATTERNS))
            )
            masks.append((x0, y0, crop))
        if len(objects) < 3:  # captions need two objects; the placement gave up on a crowded start
            return self.scene()
        distractors = []
        for _ in range(int(rng.integers(1, 4))):
            r = rng.uniform(4, 12)
            cx, cy = rng.uniform(r, s - r, size=2)
            angles = np.sort(rng.uniform(0, 2 * math.pi, size=int(rng.integers(6, 11))))
            radii = r * rng.uniform(0.5, 1.0, size=len(angles))
            points = [
                (float(cx + d * math.cos(a)), float(cy + d * math.sin(a))) for a, d in zip(angles, radii)
            ]
            xs, ys = zip(*points)
            distractors.append(
                {
                    "points": points,
                    "rgb": tuple(int(c) for c in rng.integers(40, 215, size=3)),
                    "box": [min(xs), min(ys), max(xs), max(ys)],
                }
            )
        return ClutteredScene(self._pick(list(BACKGROUNDS)), objects, masks, distractors)

    def render(self, scene: ClutteredScene) -> Image.Image:
        rng, s = self.rng, self.image_size
        # Background: its colour, slow blotches (a coarse random grid, upsampled) and pixel noise.
        coarse = rng.uniform(-35, 35, size=(6, 6)).astype(np.float32)
        blotches = np.asarray(Image.fromarray(coarse, mode="F").resize((s, s), Image.BILINEAR))
        img = np.asarray(BACKGROUNDS[scene.background], dtype=np.float32) + blotches[..., None]
        canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(canvas)
        for blob in scene.distractors:  # beneath the objects: things that are no shape of the vocabulary
            draw.polygon(blob["points"], fill=blob["rgb"])
        img = np.asarray(canvas).astype(np.float32)
        for o, (x0, y0, crop) in zip(scene.objects, scene.masks):
            h, w = crop.shape
            window = img[y0 : y0 + h, x0 : x0 + w]
            colour = np.asarray(COLOURS[o.colour], dtype=np.float32)
            window[crop] = colour
            window[crop & self.patterns[o.pattern][y0 : y0 + h, x0 : x0 + w]] = 0.45 * colour
        img += 5.0 * rng.standard_normal(img.shape, dtype=np.float32)
        return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))

    def object_feature(self, o: ClutteredObject) -> np.ndarray:
        return super().object_feature(o) + self.embeddings[o.pattern]

    def regions(self, scene: ClutteredScene) -> tuple[np.ndarray, np.ndarray]:
        """Objects, background crops, then one region per distractor blob (a detector would propose them too)."""
        feats, boxes = super().regions(scene)
        if not scene.distractors:
            return feats, boxes
        extra = np.stack([self.embeddings["distractor"]] * len(scene.distractors))
        extra = np.maximum(extra + self.noise * self.rng.standard_normal(extra.shape).astype(np.float32), 0.0)
        extra_boxes = np.asarray([d["box"] for d in scene.distractors], dtype=np.float32)
        return np.concatenate([feats, extra]), np.concatenate([boxes, extra_boxes])

    def attribute_question_kind(self) -> str:
        return ("shape", "size", "pattern")[int(self.rng.integers(3))]

    def other_answers(self) -> list[str]:
        return [*super().other_answers(), *PATTERNS]

"""Shapes: the embedded default dataset, generated offline and deterministically from a seed (plain, or the cluttered
style of `ClutteredShapesGenerator`), written in the public formats real data uses (region store, COCO captions, VQA v2,
Visual Genome). A test bed, not a benchmark: captions and answers are fully determined by the regions.

What it generates and where: docs/data.md (Shapes).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vqacap.data.owned import check_written, claim_folder, folder_lock, record_written
from vqacap.data.store import RegionStoreWriter, partial_path
from vqacap.prepare.vg import prepare_vg

log = logging.getLogger(__name__)

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 180),
    "orange": (240, 140, 30),
}
SIZES = {"small": (7, 10), "large": (13, 17)}  # radius range in pixels
BACKGROUNDS = {"white": (245, 245, 245), "gray": (150, 150, 150), "black": (25, 25, 25)}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}
SPLITS = ("train", "val", "test")
VERSION = 2  # bump when the generator changes, so stale data is regenerated
# Of the VQA files alone: 2 added "What is the <size> object?" (answers "<colour> <shape>", some held out of training)
# and "answer_seen". The other questions and their answers are those of VQA version 1; every other file is unchanged.
VQA_VERSION = 2
# "<colour> <shape>" answers that never occur in the training split, not even as a human answer, while each of their
# words does: one shape per colour, each shape held out once or twice. Questions with these answers are dropped from
# the training split and flagged "answer_seen": false elsewhere; a classifier over the training answers scores 0 on
# them by construction, a model that composes answers word by word need not.
HELD_OUT_ANSWERS = frozenset(
    {"red triangle", "green diamond", "blue circle", "yellow square", "purple triangle", "orange diamond"}
)
VG_VERSION = (
    1  # of the Visual Genome-format files under <root>/vg, which are rebuilt from the scenes on their own
)
STYLES = ("plain", "cluttered")
WRITER = "Shapes generator"


@dataclass
class ShapesObject:
    shape: str
    colour: str
    size: str
    box: list[float]  # x1, y1, x2, y2 in pixels

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2

    def describe(self) -> str:
        return f"{self.size} {self.colour} {self.shape}"

    def attributes(self) -> list[str]:
        return [self.colour, self.size]


@dataclass
class ClutteredObject(ShapesObject):
    pattern: str = "solid"

    def describe(self) -> str:
        return f"{self.size} {self.pattern} {self.colour} {self.shape}"

    def attributes(self) -> list[str]:
        return [self.colour, self.size, self.pattern]


@dataclass
class Scene:
    background: str
    objects: list[ShapesObject]


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _question(
    question: str, answer: str, answer_type: str, question_type: str, target: ShapesObject | None = None
) -> dict:
    """A question record; `target` is the object a single-object question is about."""
    return {
        "question": question,
        "answer": answer,
        "answer_type": answer_type,
        "question_type": question_type,
        "target": target,
    }


def _relation(a: ShapesObject, b: ShapesObject) -> str:
    """Where a lies relative to b, along the axis where they differ most."""
    (ax, ay), (bx, by) = a.centre, b.centre
    if abs(ax - bx) >= abs(ay - by):
        return "to the left of" if ax < bx else "to the right of"
    return "above" if ay < by else "below"


class ShapesGenerator:
    """Scenes, images, regions, captions and questions, all from one seeded generator."""

    shapes: tuple[str, ...] = SHAPES
    colours: dict[str, tuple[int, int, int]] = COLOURS
    sizes: dict[str, tuple[float, float]] = SIZES
    max_objects = 6
    image_format = ("png", {"compress_level": 1})  # file extension, PIL save options

    def __init__(
        self, seed: int = 0, image_size: int = 128, feature_dim: int = 2048, noise: float = 0.1
    ) -> None:
        self.rng = np.random.default_rng(seed)
        # The human answers of the "<colour> <shape>" questions draw from an RNG of their own, so the main stream, and
        # every file that depends on it, is what it was before those questions existed.
        self.open_rng = np.random.default_rng([seed, 0x4F50])
        self.image_size = image_size
        self.feature_dim = feature_dim
        self.noise = noise
        emb = np.random.default_rng(seed + 1)
        # Fixed "detector" embeddings, sparse and non-negative like pooled ReLU detector features (about 16% of the
        # dimensions active, mean about 0.1), so the regions have the scale of real bottom-up features.
        self.embeddings = {
            name: np.maximum(emb.standard_normal(feature_dim) - 1.0, 0.0).astype(np.float32)
            for name in self.embedding_names()
        }

    def embedding_names(self) -> tuple[str, ...]:
        return (*self.shapes, *self.colours, *self.sizes, *(f"bg_{b}" for b in BACKGROUNDS))

    # -- scenes -----------------------------------------------------------------------------------------------------
    def _pick(self, options):
        return options[int(self.rng.integers(len(options)))]

    def scene(self) -> Scene:
        n = int(self.rng.integers(3, 7))
        objects: list[ShapesObject] = []
        while len(objects) < n:
            size = self._pick(list(SIZES))
            r = float(self.rng.uniform(*SIZES[size]))
            cx, cy = self.rng.uniform(r + 2, self.image_size - r - 2, size=2)
            box = [cx - r, cy - r, cx + r, cy + r]
            if all(_gap(box, o.box) > 3 for o in objects):
                objects.append(ShapesObject(self._pick(SHAPES), self._pick(list(COLOURS)), size, box))
        return Scene(self._pick(list(BACKGROUNDS)), objects)

    def render(self, scene: Scene) -> Image.Image:
        img = Image.new("RGB", (self.image_size, self.image_size), BACKGROUNDS[scene.background])
        draw = ImageDraw.Draw(img)
        for o in scene.objects:
            _draw_shape(draw, o.shape, o.box, COLOURS[o.colour])
        return img

    def object_feature(self, o: ShapesObject) -> np.ndarray:
        return self.embeddings[o.shape] + self.embeddings[o.colour] + self.embeddings[o.size]

    def regions(self, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
        """Ideal-detector regions: objects first, then 2-3 background crops. Features (k, D), boxes (k, 4)."""
        feats, boxes = [], []
        for o in scene.objects:
            feats.append(self.object_feature(o))
            boxes.append(o.box)
        s = self.image_size
        for _ in range(int(self.rng.integers(2, 4))):
            x1, y1 = self.rng.uniform(0, s / 2, size=2)
            w, h = self.rng.uniform(s / 3, s / 2, size=2)
            feats.append(self.embeddings[f"bg_{scene.background}"].copy())
            boxes.append([x1, y1, min(x1 + w, s), min(y1 + h, s)])
        feats = np.stack(feats)
        feats = np.maximum(feats + self.noise * self.rng.standard_normal(feats.shape).astype(np.float32), 0.0)
        return feats, np.asarray(boxes, dtype=np.float32)

    # -- language ---------------------------------------------------------------------------------------------------
    def captions(self, scene: Scene) -> list[str]:
        """Five references: the largest object is the subject, as a describer would start with the salient thing."""
        background, objects = scene.background, scene.objects
        by_size = sorted(objects, key=lambda o: -(o.box[2] - o.box[0]))
        a, b = by_size[0], by_size[1]
        rel = _relation(a, b)
        desc_a = a.describe()
        desc_b = b.describe()
        n = NUMBER_WORDS[len(objects)]
        colours = sorted({o.colour for o in objects})
        return [
            f"{_article(desc_a)} {desc_a} {rel} {_article(desc_b)} {desc_b}.",
            f"{n} shapes on a {background} background.",
            f"{_article(a.colour).capitalize()} {a.colour} {a.shape} {rel} {_article(b.colour)} {b.colour} {b.shape}.",
            f"There is {_article(desc_a)} {desc_a} and {n} shapes in total.",
            f"{n.capitalize()} shapes, including {_article(a.colour)} {a.colour} {a.shape}, on {_article(background)} "
            f"{background} background."
            if len(colours) > 1
            else f"{n} {a.colour} shapes on a {background} background.",
        ]

    def attribute_question_kind(self) -> str:
        return "shape" if self.rng.random() < 0.5 else "size"

    def questions(self, objects: list[ShapesObject]) -> list[dict]:
        """About six questions per image; `target` is the object a single-object question is about."""
        qs: list[dict] = []
        rng = self.rng
        # yes/no, balanced: ask about a present object or a random attribute combination.
        for _ in range(2):
            if rng.random() < 0.5:
                o = objects[int(rng.integers(len(objects)))]
                shape, colour = o.shape, o.colour
            else:
                shape, colour = self._pick(self.shapes), self._pick(list(self.colours))
            matches = [o for o in objects if o.shape == shape and o.colour == colour]
            answer = "yes" if matches else "no"
            target = matches[0] if len(matches) == 1 else None
            question = f"Is there {_article(colour)} {colour} {shape}?"
            qs.append(_question(question, answer, "yes/no", "is there a", target))
        # number
        shape = self._pick(self.shapes)
        count = str(sum(o.shape == shape for o in objects))
        qs.append(_question(f"How many {_plural(shape)} are there?", count, "number", "how many"))
        colour = self._pick(list(self.colours))
        count = str(sum(o.colour == colour for o in objects))
        qs.append(_question(f"How many {colour} shapes are there?", count, "number", "how many"))
        # other: attributes of a uniquely described object
        shapes_once = [o for o in objects if sum(p.shape == o.shape for p in objects) == 1]
        if shapes_once:
            o = shapes_once[int(rng.integers(len(shapes_once)))]
            qs.append(_question(f"What color is the {o.shape}?", o.colour, "other", "what color is the", o))
        colours_once = [o for o in objects if sum(p.colour == o.colour for p in objects) == 1]
        if colours_once:
            o = colours_once[int(rng.integers(len(colours_once)))]
            kind = self.attribute_question_kind()
            question = f"What {kind} is the {o.colour} object?"
            qs.append(_question(question, getattr(o, kind), "other", f"what {kind} is the", o))
        # other, two words: the object of the one size only one object has (no draw from the main RNG).
        for size in self.sizes:
            sized = [o for o in objects if o.size == size]
            if len(sized) == 1:
                answer = f"{sized[0].colour} {sized[0].shape}"
                question = _question(f"What is the {size} object?", answer, "other", "what is the", sized[0])
                qs.append({**question, "humans": self.combination_answers(answer)})
        return qs

    def combination_answers(self, answer: str) -> list[str]:
        """Ten annotator answers to a "<colour> <shape>" question, from `open_rng`: slips name another combination
        that is not held out, so a held-out string never occurs in training."""
        rng = self.open_rng
        seen = [f"{c} {s}" for c in self.colours for s in self.shapes if f"{c} {s}" not in HELD_OUT_ANSWERS]
        out = []
        for _ in range(10):
            a = answer if rng.random() < 0.9 else seen[int(rng.integers(len(seen)))]
            if rng.random() < 0.1:
                a = a.capitalize() + "."
            out.append(a)
        return out

    def other_answers(self) -> list[str]:
        return [*self.colours, *self.shapes, *self.sizes]

    def human_answers(self, answer: str, answer_type: str) -> list[str]:
        """Ten annotator answers: mostly the truth, sometimes a plausible slip, with casual spelling."""
        alternatives = {
            "yes/no": ["yes", "no"],
            "number": [str(i) for i in range(0, self.max_objects + 1)],
            "other": self.other_answers(),
        }[answer_type]
        out = []
        for _ in range(10):
            a = answer if self.rng.random() < 0.9 else self._pick(alternatives)
            if answer_type == "number" and self.rng.random() < 0.2:
                a = NUMBER_WORDS.get(int(a), a)  # "two" -> normalised to "2" by the official processing
            if self.rng.random() < 0.1:
                a = a.capitalize() + "."
            out.append(a)
        return out


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: list[float], fill) -> None:
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    r = (x2 - x1) / 2
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y1), (x2, y2), (x1, y2)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, y1), (x2, cy), (cx, y2), (x1, cy)], fill=fill)
    elif shape == "star":  # five points, inner radius 0.45 r
        points = []
        for k in range(10):
            radius, angle = (r if k % 2 == 0 else 0.45 * r), -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        draw.polygon(points, fill=fill)
    elif shape == "hexagon":
        draw.polygon(
            [(cx + r * math.cos(k * math.pi / 3), cy + r * math.sin(k * math.pi / 3)) for k in range(6)],
            fill=fill,
        )
    elif shape == "cross":
        t = r / 3
        draw.rectangle([x1, cy - t, x2, cy + t], fill=fill)
        draw.rectangle([cx - t, y1, cx + t, y2], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


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
        _draw_shape(ImageDraw.Draw(canvas), shape, [box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0], 255)
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
                {"points": points, "rgb": tuple(int(c) for c in rng.integers(40, 215, size=3)),
                 "box": [min(xs), min(ys), max(xs), max(ys)]}
            )  # fmt: skip
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


GENERATORS = {"plain": ShapesGenerator, "cluttered": ClutteredShapesGenerator}


def _gap(a: list[float], b: list[float]) -> float:
    """Distance between two boxes (negative when they overlap)."""
    dx = max(b[0] - a[2], a[0] - b[2])
    dy = max(b[1] - a[3], a[1] - b[3])
    return max(dx, dy)


def generate(
    root: str | os.PathLike,
    sizes: dict[str, int] | None = None,
    seed: int = 0,
    feature_dim: int = 2048,
    image_size: int = 128,
    dtype: str = "float16",
    style: str = "plain",
    no_attribute_fraction: float = 0.03,
) -> Path:
    """Write the whole dataset under `root` unless a complete copy with the same settings is there. Returns root.

    `no_attribute_fraction` of the objects carry no attributes in the Visual Genome-format files only (vg/)."""
    if style not in GENERATORS:
        raise ValueError(f"unknown Shapes style {style!r}; expected one of {', '.join(GENERATORS)}")
    root = Path(root)
    sizes = dict(sizes or {"train": 4000, "val": 500, "test": 500})
    settings = {
        "version": VERSION,
        "vqa_version": VQA_VERSION,
        "sizes": sizes,
        "seed": seed,
        "feature_dim": feature_dim,
        "image_size": image_size,
        "dtype": dtype,
    }
    if style != "plain":  # so that plain folders written before styles existed stay complete
        settings["style"] = style
    done = root / "COMPLETE.json"
    claim_folder(root, WRITER, REFUSAL_ADVICE)
    with folder_lock(root):
        if not (done.exists() and json.loads(done.read_text()) == settings):
            check_written(root, _generated_files(root), REGENERATE_ADVICE)
            _generate(
                root, settings, GENERATORS[style](seed=seed, image_size=image_size, feature_dim=feature_dim)
            )
            record_written(root, _generated_files(root))
        write_vg(root, no_attribute_fraction)
    return root


REFUSAL_ADVICE = (
    "to train on data prepared in it, add data.generator=null (or use data=coco_karpathy / data=vqa2); "
    "to generate Shapes, set data.data_dir to a new or empty folder"
)
REGENERATE_ADVICE = "move it away, or set data.data_dir to a new or empty folder"
GENERATED = (
    "COMPLETE.json",
    "captions_*.json",
    "vqa_*.json",
    "scenes_*.json",
    "regions.h5*",
    "images/**/*",
    "vg/**/*",
)


def _generated_files(root: Path) -> list[Path]:
    """The files of `root` that a generation writes, deletes or overwrites."""
    return sorted({p for pattern in GENERATED for p in root.glob(pattern) if p.is_file()})


def _set_aside(path: Path) -> Path:
    """Rename `path` to the first free `<name>.stale[.N]`: a file built from an older generation, kept."""
    n, aside = 0, path.with_name(path.name + ".stale")
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.stale.{n}")
    path.rename(aside)
    return aside


def _generate(root: Path, settings: dict, gen: ShapesGenerator) -> None:
    done = root / "COMPLETE.json"
    done.unlink(missing_ok=True)
    for stale in root.glob("*vocab*.json"):  # vocabularies a DataModule built from an older generation
        log.info("%s: built from the data generated before; set aside as %s", stale, _set_aside(stale).name)
    store_path = root / "regions.h5"
    store_path.unlink(missing_ok=True)
    partial_path(store_path).unlink(missing_ok=True)  # an interrupted generation: never resumed, regenerated
    sizes, image_size, seed = settings["sizes"], settings["image_size"], settings["seed"]
    image_id = 0
    with RegionStoreWriter(
        store_path, settings["feature_dim"], dtype=settings["dtype"], buffer_regions=1 << 16
    ) as store:
        for split in SPLITS:
            images, captions, questions, annotations, scenes = [], [], [], [], []
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            for _ in range(sizes[split]):
                image_id += 1
                scene = gen.scene()
                extension, options = gen.image_format
                file_name = f"images/{split}/{image_id:06d}.{extension}"
                gen.render(scene).save(root / file_name, **options)
                feats, boxes = gen.regions(scene)
                store.add(image_id, feats, boxes, image_size, image_size)
                images.append(
                    {"id": image_id, "file_name": file_name, "width": image_size, "height": image_size}
                )
                for text in gen.captions(scene):
                    captions.append({"id": len(captions) + 1, "image_id": image_id, "caption": text})
                asked = gen.questions(scene.objects)
                # Held-out answers stay out of training (after their human answers were drawn).
                if split == "train":
                    asked = [q for q in asked if q["answer"] not in HELD_OUT_ANSWERS]
                for n, q in enumerate(asked):
                    qid = image_id * 100 + n
                    questions.append({"image_id": image_id, "question": q["question"], "question_id": qid})
                    answers = q.get("humans") or gen.human_answers(q["answer"], q["answer_type"])
                    ann = {
                        "question_id": qid,
                        "image_id": image_id,
                        "question_type": q["question_type"],
                        "answer_type": q["answer_type"],
                        "multiple_choice_answer": q["answer"],
                        "answers": [
                            {"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                            for i, a in enumerate(answers)
                        ],
                        "answer_seen": q["answer"] not in HELD_OUT_ANSWERS,
                    }
                    if q["target"] is not None:
                        ann["target_box"] = q["target"].box
                    annotations.append(ann)
                record = {
                    "image_id": image_id,
                    "background": scene.background,
                    "objects": [asdict(o) for o in scene.objects],
                }
                if isinstance(scene, ClutteredScene):
                    record["distractors"] = [d["box"] for d in scene.distractors]
                scenes.append(record)
            info = {
                "description": f"Shapes {settings.get('style', '') + ' ' if 'style' in settings else ''}{split} "
                "(vqacap embedded dataset)",
                "version": str(VERSION),
                "seed": seed,
            }
            _dump(
                root / f"captions_{split}.json",
                {"info": info, "images": images, "annotations": captions, "type": "captions", "licenses": []},
            )
            subtype = f"shapes_{split}"
            vqa_info = {**info, "version": f"{VERSION}.{VQA_VERSION}"}
            _dump(
                root / f"vqa_{split}_questions.json",
                {
                    "info": vqa_info,
                    "task_type": "Open-Ended",
                    "data_type": "shapes",
                    "data_subtype": subtype,
                    "questions": questions,
                    "license": {},
                },
            )
            _dump(
                root / f"vqa_{split}_annotations.json",
                {
                    "info": vqa_info,
                    "data_type": "shapes",
                    "data_subtype": subtype,
                    "annotations": annotations,
                    "license": {},
                },
            )
            _dump(root / f"scenes_{split}.json", {"scenes": scenes})
    _dump(done, settings)


def _dump(path: Path, data: dict) -> None:
    _write_text(path, json.dumps(data))


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# -- the same scenes in Visual Genome's formats --------------------------------------------------------------------------
def write_vg(root: str | os.PathLike, no_attribute_fraction: float = 0.03) -> Path:
    """<root>/vg: image_data.json, objects.json, attributes.json (an object without attributes has no "attributes"
    key, as in Visual Genome), the two vocabularies and splits/<split>.txt, from the generated scenes. Returns the
    folder; rewritten only when the data or `no_attribute_fraction` changed."""
    root = Path(root)
    vg, data_settings = root / "vg", json.loads((root / "COMPLETE.json").read_text())
    settings = {
        "vg_version": VG_VERSION,
        "data": data_settings,
        "no_attribute_fraction": no_attribute_fraction,
    }
    done = vg / "COMPLETE.json"
    if done.exists() and json.loads(done.read_text()) == settings:
        return vg
    check_written(root, sorted(p for p in vg.rglob("*") if p.is_file()), REGENERATE_ADVICE)
    (vg / "splits").mkdir(parents=True, exist_ok=True)
    done.unlink(missing_ok=True)
    gen = GENERATORS[data_settings.get("style", "plain")]
    # An RNG of its own picks the objects without attributes: the main stream, and every other file, stays as it was.
    rng = np.random.default_rng([data_settings["seed"], 0x5647])
    image_data, objects, attributes = [], [], []
    for split in SPLITS:
        scenes = json.loads((root / f"scenes_{split}.json").read_text())["scenes"]
        images = json.loads((root / f"captions_{split}.json").read_text())["images"]
        for image, scene in zip(images, scenes, strict=True):
            image_id = image["id"]
            image_data.append(
                {"image_id": image_id, "url": image["file_name"], "width": image["width"],
                 "height": image["height"], "coco_id": None, "flickr_id": None}
            )  # fmt: skip
            objs, attrs = [], []
            for n, o in enumerate(scene["objects"]):
                x1, y1, x2, y2 = o["box"]
                x, y = math.floor(x1), math.floor(y1)
                record = {"object_id": image_id * 100 + n, "x": x, "y": y, "w": math.ceil(x2) - x,
                          "h": math.ceil(y2) - y, "names": [o["shape"]], "synsets": []}  # fmt: skip
                objs.append(record)
                if rng.random() < no_attribute_fraction:
                    attrs.append(record)
                else:
                    attrs.append(
                        {
                            **record,
                            "attributes": [
                                o["colour"],
                                o["size"],
                                *([o["pattern"]] if "pattern" in o else []),
                            ],
                        }
                    )
            objects.append({"image_id": image_id, "objects": objs})
            attributes.append({"image_id": image_id, "attributes": attrs})
        _write_text(vg / "splits" / f"{split}.txt", "".join(f"{image['id']}\n" for image in images))
    _dump_list(vg / "image_data.json", image_data)
    _dump_list(vg / "objects.json", objects)
    _dump_list(vg / "attributes.json", attributes)
    patterns = PATTERNS if gen is ClutteredShapesGenerator else ()
    _write_text(vg / "objects_vocab.txt", "\n".join(gen.shapes) + "\n")
    _write_text(vg / "attributes_vocab.txt", "\n".join([*gen.colours, *gen.sizes, *patterns]) + "\n")
    _dump(done, settings)
    record_written(root, sorted(p for p in vg.rglob("*") if p.is_file()))
    return vg


def _dump_list(path: Path, data: list) -> None:
    _write_text(path, json.dumps(data))


def prepare_detection(root: str | os.PathLike) -> Path:
    """<root>/vg through `vqacap prepare vg` (as real Visual Genome goes) into <root>/detection, which is returned."""
    root = Path(root)
    vg, out = root / "vg", root / "detection"
    if not (vg / "COMPLETE.json").is_file():
        raise FileNotFoundError(f"{vg}: no Shapes Visual Genome files (generate the Shapes data first)")
    with folder_lock(root):
        prepare_vg(
            vg / "image_data.json",
            vg / "objects.json",
            root / "images",
            vg,
            out,
            attributes=vg / "attributes.json",
            splits={split: vg / "splits" / f"{split}.txt" for split in SPLITS},
            log=log.info,
        )
    return out

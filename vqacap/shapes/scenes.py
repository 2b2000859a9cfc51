"""Shapes scenes and their words: the objects, the grammar of captions and questions, and `ShapesGenerator`, which
draws a scene, renders it and gives its regions, captions and questions from one seeded random stream."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from vqacap.shapes.render import draw_shape

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
            if all(box_gap(box, o.box) > 3 for o in objects):
                objects.append(ShapesObject(self._pick(SHAPES), self._pick(list(COLOURS)), size, box))
        return Scene(self._pick(list(BACKGROUNDS)), objects)

    def render(self, scene: Scene) -> Image.Image:
        img = Image.new("RGB", (self.image_size, self.image_size), BACKGROUNDS[scene.background])
        draw = ImageDraw.Draw(img)
        for o in scene.objects:
            draw_shape(draw, o.shape, o.box, COLOURS[o.colour])
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


def box_gap(a: list[float], b: list[float]) -> float:
    """Distance between two boxes (negative when they overlap)."""
    dx = max(b[0] - a[2], a[0] - b[2])
    dy = max(b[1] - a[3], a[1] - b[3])
    return max(dx, dy)

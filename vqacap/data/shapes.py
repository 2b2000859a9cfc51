"""Shapes: the embedded default dataset, generated offline and deterministically from a seed.

Each scene holds 3-6 objects (shape x colour x size) on a coloured background, rendered to a PNG. An "ideal detector"
gives one region per object (box = the object's bounding box, feature = fixed random embeddings of its shape, colour and
size plus noise) and 2-3 background regions (feature = the background colour's embedding plus noise), so K varies per image.
Every image gets 5 reference captions from a small grammar (attributes, counts, spatial relations) and VQA questions with 10
answers each (yes/no, number, other). Everything is written in the public formats real data uses:

    <root>/regions.h5                              region-feature store (vqacap.data.store)
    <root>/images/<split>/<image_id>.png           rendered scenes
    <root>/captions_<split>.json                   COCO caption-annotation format
    <root>/vqa_<split>_questions.json              VQA v2 question format
    <root>/vqa_<split>_annotations.json            VQA v2 annotation format (+ "target_box" for single-object questions)
    <root>/scenes_<split>.json                     objects of each image (for grounding accuracy)

It is a test bed, not a benchmark: captions and answers are fully determined by the regions, so a model that reads the
regions scores far above one that does not.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vqacap.data.store import RegionStoreWriter, partial_path

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
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
SPLITS = ("train", "val", "test")
VERSION = 2  # bump when the generator changes, so stale data is regenerated


@dataclass
class ShapesObject:
    shape: str
    colour: str
    size: str
    box: list[float]  # x1, y1, x2, y2 in pixels

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _relation(a: ShapesObject, b: ShapesObject) -> str:
    """Where a lies relative to b, along the axis where they differ most."""
    (ax, ay), (bx, by) = a.centre, b.centre
    if abs(ax - bx) >= abs(ay - by):
        return "to the left of" if ax < bx else "to the right of"
    return "above" if ay < by else "below"


class ShapesGenerator:
    """Scenes, images, regions, captions and questions, all from one seeded generator."""

    def __init__(
        self, seed: int = 0, image_size: int = 128, feature_dim: int = 2048, noise: float = 0.1
    ) -> None:
        self.rng = np.random.default_rng(seed)
        self.image_size = image_size
        self.feature_dim = feature_dim
        self.noise = noise
        emb = np.random.default_rng(seed + 1)
        # Fixed "detector" embeddings, sparse and non-negative like pooled ReLU detector features (about 16% of the
        # dimensions active, mean about 0.1), so the regions have the scale of real bottom-up features.
        self.embeddings = {
            name: np.maximum(emb.standard_normal(feature_dim) - 1.0, 0.0).astype(np.float32)
            for name in (*SHAPES, *COLOURS, *SIZES, *(f"bg_{b}" for b in BACKGROUNDS))
        }

    # -- scenes -----------------------------------------------------------------------------------------------------
    def _pick(self, options):
        return options[int(self.rng.integers(len(options)))]

    def scene(self) -> tuple[str, list[ShapesObject]]:
        n = int(self.rng.integers(3, 7))
        objects: list[ShapesObject] = []
        while len(objects) < n:
            size = self._pick(list(SIZES))
            r = float(self.rng.uniform(*SIZES[size]))
            cx, cy = self.rng.uniform(r + 2, self.image_size - r - 2, size=2)
            box = [cx - r, cy - r, cx + r, cy + r]
            if all(_gap(box, o.box) > 3 for o in objects):
                objects.append(ShapesObject(self._pick(SHAPES), self._pick(list(COLOURS)), size, box))
        return self._pick(list(BACKGROUNDS)), objects

    def render(self, background: str, objects: list[ShapesObject]) -> Image.Image:
        img = Image.new("RGB", (self.image_size, self.image_size), BACKGROUNDS[background])
        draw = ImageDraw.Draw(img)
        for o in objects:
            x1, y1, x2, y2 = o.box
            cx, cy = o.centre
            fill = COLOURS[o.colour]
            if o.shape == "circle":
                draw.ellipse(o.box, fill=fill)
            elif o.shape == "square":
                draw.rectangle(o.box, fill=fill)
            elif o.shape == "triangle":
                draw.polygon([(cx, y1), (x2, y2), (x1, y2)], fill=fill)
            else:
                draw.polygon([(cx, y1), (x2, cy), (cx, y2), (x1, cy)], fill=fill)
        return img

    def regions(self, background: str, objects: list[ShapesObject]) -> tuple[np.ndarray, np.ndarray]:
        """Ideal-detector regions: objects first, then 2-3 background crops. Features (k, D), boxes (k, 4)."""
        feats, boxes = [], []
        for o in objects:
            feats.append(self.embeddings[o.shape] + self.embeddings[o.colour] + self.embeddings[o.size])
            boxes.append(o.box)
        s = self.image_size
        for _ in range(int(self.rng.integers(2, 4))):
            x1, y1 = self.rng.uniform(0, s / 2, size=2)
            w, h = self.rng.uniform(s / 3, s / 2, size=2)
            feats.append(self.embeddings[f"bg_{background}"].copy())
            boxes.append([x1, y1, min(x1 + w, s), min(y1 + h, s)])
        feats = np.stack(feats)
        feats = np.maximum(feats + self.noise * self.rng.standard_normal(feats.shape).astype(np.float32), 0.0)
        return feats, np.asarray(boxes, dtype=np.float32)

    # -- language ---------------------------------------------------------------------------------------------------
    def captions(self, background: str, objects: list[ShapesObject]) -> list[str]:
        """Five references: the largest object is the subject, as a describer would start with the salient thing."""
        by_size = sorted(objects, key=lambda o: -(o.box[2] - o.box[0]))
        a, b = by_size[0], by_size[1]
        rel = _relation(a, b)
        desc_a = f"{a.size} {a.colour} {a.shape}"
        desc_b = f"{b.size} {b.colour} {b.shape}"
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
                shape, colour = self._pick(SHAPES), self._pick(list(COLOURS))
            matches = [o for o in objects if o.shape == shape and o.colour == colour]
            qs.append(
                {
                    "question": f"Is there {_article(colour)} {colour} {shape}?",
                    "answer": "yes" if matches else "no",
                    "answer_type": "yes/no",
                    "question_type": "is there a",
                    "target": matches[0] if len(matches) == 1 else None,
                }
            )
        # number
        shape = self._pick(SHAPES)
        qs.append(
            {
                "question": f"How many {_plural(shape)} are there?",
                "answer": str(sum(o.shape == shape for o in objects)),
                "answer_type": "number",
                "question_type": "how many",
                "target": None,
            }
        )
        colour = self._pick(list(COLOURS))
        qs.append(
            {
                "question": f"How many {colour} shapes are there?",
                "answer": str(sum(o.colour == colour for o in objects)),
                "answer_type": "number",
                "question_type": "how many",
                "target": None,
            }
        )
        # other: attributes of a uniquely described object
        shapes_once = [o for o in objects if sum(p.shape == o.shape for p in objects) == 1]
        if shapes_once:
            o = shapes_once[int(rng.integers(len(shapes_once)))]
            qs.append(
                {
                    "question": f"What color is the {o.shape}?",
                    "answer": o.colour,
                    "answer_type": "other",
                    "question_type": "what color is the",
                    "target": o,
                }
            )
        colours_once = [o for o in objects if sum(p.colour == o.colour for p in objects) == 1]
        if colours_once:
            o = colours_once[int(rng.integers(len(colours_once)))]
            kind = "shape" if rng.random() < 0.5 else "size"
            qs.append(
                {
                    "question": f"What {kind} is the {o.colour} object?",
                    "answer": o.shape if kind == "shape" else o.size,
                    "answer_type": "other",
                    "question_type": f"what {kind} is the",
                    "target": o,
                }
            )
        return qs

    def human_answers(self, answer: str, answer_type: str) -> list[str]:
        """Ten annotator answers: mostly the truth, sometimes a plausible slip, with casual spelling."""
        alternatives = {
            "yes/no": ["yes", "no"],
            "number": [str(i) for i in range(0, 7)],
            "other": [*COLOURS, *SHAPES, *SIZES],
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
) -> Path:
    """Write the whole dataset under `root` unless a complete copy with the same settings is there. Returns root."""
    root = Path(root)
    sizes = dict(sizes or {"train": 4000, "val": 500, "test": 500})
    settings = {
        "version": VERSION,
        "sizes": sizes,
        "seed": seed,
        "feature_dim": feature_dim,
        "image_size": image_size,
        "dtype": dtype,
    }
    done = root / "COMPLETE.json"
    if done.exists() and json.loads(done.read_text()) == settings:
        return root
    root.mkdir(parents=True, exist_ok=True)
    done.unlink(missing_ok=True)
    for stale in root.glob("*vocab*.json"):  # vocabularies built from an older generation
        stale.unlink()
    store_path = root / "regions.h5"
    store_path.unlink(missing_ok=True)
    partial_path(store_path).unlink(missing_ok=True)  # an interrupted generation: never resumed, regenerated
    gen = ShapesGenerator(seed=seed, image_size=image_size, feature_dim=feature_dim)
    image_id = 0
    with RegionStoreWriter(store_path, feature_dim, dtype=dtype, buffer_regions=1 << 16) as store:
        for split in SPLITS:
            images, captions, questions, annotations, scenes = [], [], [], [], []
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            for _ in range(sizes[split]):
                image_id += 1
                background, objects = gen.scene()
                file_name = f"images/{split}/{image_id:06d}.png"
                gen.render(background, objects).save(root / file_name, compress_level=1)
                feats, boxes = gen.regions(background, objects)
                store.add(image_id, feats, boxes, image_size, image_size)
                images.append(
                    {"id": image_id, "file_name": file_name, "width": image_size, "height": image_size}
                )
                for text in gen.captions(background, objects):
                    captions.append({"id": len(captions) + 1, "image_id": image_id, "caption": text})
                for n, q in enumerate(gen.questions(objects)):
                    qid = image_id * 100 + n
                    questions.append({"image_id": image_id, "question": q["question"], "question_id": qid})
                    answers = gen.human_answers(q["answer"], q["answer_type"])
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
                    }
                    if q["target"] is not None:
                        ann["target_box"] = q["target"].box
                    annotations.append(ann)
                scenes.append(
                    {"image_id": image_id, "background": background, "objects": [asdict(o) for o in objects]}
                )
            info = {
                "description": f"Shapes {split} (vqacap embedded dataset)",
                "version": str(VERSION),
                "seed": seed,
            }
            _dump(
                root / f"captions_{split}.json",
                {"info": info, "images": images, "annotations": captions, "type": "captions", "licenses": []},
            )
            subtype = f"shapes_{split}"
            _dump(
                root / f"vqa_{split}_questions.json",
                {
                    "info": info,
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
                    "info": info,
                    "data_type": "shapes",
                    "data_subtype": subtype,
                    "annotations": annotations,
                    "license": {},
                },
            )
            _dump(root / f"scenes_{split}.json", {"scenes": scenes})
    done.write_text(json.dumps(settings))
    return root


def _dump(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)

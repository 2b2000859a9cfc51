"""Shapes written in the public formats real data comes in: the region store, COCO captions, VQA v2 question and
annotation files, and Visual Genome's files, which `prepare_detection` turns into detection annotations through
`vqacap prepare vg`, as real Visual Genome goes."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from vqacap.data.owned import check_written, claim_folder, folder_lock, record_written
from vqacap.data.store import RegionStoreWriter, partial_path
from vqacap.prepare.vg import prepare_vg
from vqacap.shapes.cluttered import PATTERNS, ClutteredScene, ClutteredShapesGenerator
from vqacap.shapes.scenes import (
    HELD_OUT_ANSWERS,
    SPLITS,
    VERSION,
    VG_VERSION,
    VQA_VERSION,
    WRITER,
    ShapesGenerator,
)

log = logging.getLogger(__name__)

GENERATORS = {"plain": ShapesGenerator, "cluttered": ClutteredShapesGenerator}


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
                {
                    "image_id": image_id,
                    "url": image["file_name"],
                    "width": image["width"],
                    "height": image["height"],
                    "coco_id": None,
                    "flickr_id": None,
                }
            )
            objs, attrs = [], []
            for n, o in enumerate(scene["objects"]):
                x1, y1, x2, y2 = o["box"]
                x, y = math.floor(x1), math.floor(y1)
                record = {
                    "object_id": image_id * 100 + n,
                    "x": x,
                    "y": y,
                    "w": math.ceil(x2) - x,
                    "h": math.ceil(y2) - y,
                    "names": [o["shape"]],
                    "synsets": [],
                }
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

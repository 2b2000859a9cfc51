"""Shapes in Visual Genome's formats, through `prepare vg` into the detector's reader; the cluttered style; and the
generator's refusal to write into a folder it did not create."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from tests.helpers.configs import TINY_CAPTIONER
from vqacap.data.detection import load_detection_split
from vqacap.data.owned import MARKER, WRITTEN, FolderNotOwnedError
from vqacap.data.store import RegionStore
from vqacap.prepare.common import PrepareError
from vqacap.shapes import (
    CLUTTERED_SHAPES,
    MIN_VISIBLE,
    PATTERNS,
    ClutteredShapesGenerator,
    generate,
    prepare_detection,
)

TINY = {"train": 40, "val": 10, "test": 10}
# sha256 of what generate(TINY, seed 0, feature_dim 32) wrote at commit 5b473f1, before the Visual Genome files and the
# cluttered style existed: JSON bytes, decoded image pixels, HDF5 dataset bytes. README results depend on these files.
# The six vqa_* files are those of VQA_VERSION 2 (the "<colour> <shape>" questions and "answer_seen" added; the questions
# of version 1 and their answers are unchanged, drawn from the same RNG stream as before).
PLAIN_BEFORE = {
    "captions_test.json": "1cb27a5cc7d70c727286c8dc390dc656a765062d57bf486e8f0593b8ab0a0388",
    "captions_train.json": "8b4c19dd931b7cecadc0ff1cc9b874aeda7b458a840e07114ee755c62ea5dee5",
    "captions_val.json": "ade107d84dc186cdb02cb8c3d35bfec37ad2f2267d54c6451bb525b6481e2500",
    "scenes_test.json": "33299ba31dea19301937e554af283a3c17b31c3608c9bfc30070d984042caa5f",
    "scenes_train.json": "419d92e715ed5c628352fbd55af69e13f851c8d39fb5359f7d54642269f132e8",
    "scenes_val.json": "e261b43f78c4714d58c98df2915ec23cf705db74e57c0c0411d30ef6f612ad56",
    "vqa_test_annotations.json": "d1d8e0c336206e01b5eccc41dcc1f38cd0c5e95b58ae227923279726bb184351",
    "vqa_test_questions.json": "b6ec970eedf62622845cfbf76e4a825f5c3c176aefc4898259ff525b59aaffce",
    "vqa_train_annotations.json": "1c1c1768f88014a0eefca7fb8cb1e3a2e464447a30a732c0d1a414a0517196fc",
    "vqa_train_questions.json": "7292d6c4bd61e9c98a6977dca43524b3935efdd0ce4b96dd491b55d01f798679",
    "vqa_val_annotations.json": "5afb2f1db58ee51d43ae56fc9f66fe51b87c22a0793cdd567fb02b92558ff245",
    "vqa_val_questions.json": "f1eca108d1d7d421317e8cb9832a344d5f353daf17c36275b316d3c64e4b0984",
    "images": "e532477130dd1b8aeaea937de8c66e204d0537fd9418325227005b8c73f9845f",
    "regions.h5/boxes": "4d55722e8a10baa159980dab0d4e9a5642fab0e0a115e6393e65974e9a8d415a",
    "regions.h5/features": "654581b34f2d1e4a8495aafa79650cf48b17d87068990fe0004ef52c8423c19c",
    "regions.h5/image_h": "66954125cc33362ab814ece7770792f6b544a151c895b96c1e8d965267c43338",
    "regions.h5/image_ids": "d64e9aed6edf2c23e508bd7390a466ac5f0a690d011b258aeafeebd109578ffd",
    "regions.h5/image_w": "66954125cc33362ab814ece7770792f6b544a151c895b96c1e8d965267c43338",
    "regions.h5/num_regions": "1de681ccfbe5ac2a2e3f354fcd365c86620daecd5e99359965de5aa80cfb3a18",
    "regions.h5/region_start": "fc6640cf5181f481885605a37cef661290542c25ab859fe917ea69e4aae6d331",
}


def fingerprint(root: Path) -> dict[str, str]:
    out = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.glob("*.json"))}
    del out["COMPLETE.json"]
    pixels = hashlib.sha256()
    for p in sorted((root / "images").rglob("*.png")):
        pixels.update(p.name.encode())
        pixels.update(np.asarray(Image.open(p)).tobytes())
    out["images"] = pixels.hexdigest()
    with h5py.File(root / "regions.h5", "r") as f:
        out.update({f"regions.h5/{k}": hashlib.sha256(f[k][()].tobytes()).hexdigest() for k in sorted(f)})
    return out


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("plain"), sizes=TINY, feature_dim=32, no_attribute_fraction=0.2)


@pytest.fixture(scope="module")
def cluttered(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("cluttered"), sizes=TINY, feature_dim=32, style="cluttered")


def test_plain_shapes_files_are_those_of_before_the_visual_genome_files(plain, tmp_path):
    assert fingerprint(plain) == PLAIN_BEFORE
    other = generate(tmp_path / "other", sizes=TINY, feature_dim=32, no_attribute_fraction=0.0)
    assert fingerprint(other) == PLAIN_BEFORE  # the objects without attributes come from an RNG of their own


def test_visual_genome_files_describe_the_scenes(plain):
    vg = plain / "vg"
    scenes = {s["image_id"]: s for split in ("train", "val", "test")
              for s in json.loads((plain / f"scenes_{split}.json").read_text())["scenes"]}  # fmt: skip
    objects = json.loads((vg / "objects.json").read_text())
    attributes = json.loads((vg / "attributes.json").read_text())
    image_data = json.loads((vg / "image_data.json").read_text())
    assert [i["image_id"] for i in image_data] == [o["image_id"] for o in objects] == sorted(scenes)
    assert (plain / image_data[0]["url"]).is_file()
    assert (vg / "splits" / "val.txt").read_text().split() == [str(i) for i in range(41, 51)]
    without = 0
    for record, attrs in zip(objects, attributes, strict=True):
        scene = scenes[record["image_id"]]["objects"]
        assert [o["names"] for o in record["objects"]] == [[o["shape"]] for o in scene]
        for o, a, truth in zip(record["objects"], attrs["attributes"], scene, strict=True):
            x1, y1, x2, y2 = truth["box"]
            assert o["x"] <= x1 < o["x"] + 1 and o["x"] + o["w"] - 1 < x2 <= o["x"] + o["w"]
            assert o["y"] <= y1 < o["y"] + 1 and o["y"] + o["h"] - 1 < y2 <= o["y"] + o["h"]
            if "attributes" in a:
                assert a["attributes"] == [truth["colour"], truth["size"]]
            else:
                without += 1
    total = sum(len(o["objects"]) for o in objects)
    assert 0.1 * total < without < 0.3 * total  # no_attribute_fraction=0.2
    assert (vg / "objects_vocab.txt").read_text().split() == ["circle", "square", "triangle", "diamond"]


def test_prepare_detection_goes_through_prepare_vg_into_the_reader(plain):
    out = prepare_detection(plain)
    assert out == plain / "detection" and (out / "COMPLETE.json").is_file()
    attributes = json.loads((plain / "vg" / "attributes.json").read_text())
    for split, ids in (("train", range(1, 41)), ("val", range(41, 51)), ("test", range(51, 61))):
        data = load_detection_split(out / f"detection_{split}.json")
        assert data.classes == ["__background__", "circle", "square", "triangle", "diamond"]
        assert data.attributes == ["__no_attribute__", "red", "green", "blue", "yellow", "purple", "orange",
                                   "small", "large"]  # fmt: skip
        assert [image.image_id for image in data.images] == list(ids)
        for image in data.images:
            assert image.path.is_file() and (image.width, image.height) == (128, 128)
            vg_objects = attributes[image.image_id - 1]["attributes"]
            assert [data.classes[c] for c in image.labels] == [o["names"][0] for o in vg_objects]
            for o, boxes, labels in zip(vg_objects, image.boxes, image.attributes, strict=True):
                assert boxes.tolist() == [
                    o["x"],
                    o["y"],
                    min(o["x"] + o["w"], 127),
                    min(o["y"] + o["h"], 127),
                ]
                names = [data.attributes[a] for a in labels if a >= 1]
                assert names == o.get("attributes", [])
    stamp = (out / "detection_train.json").stat().st_mtime_ns
    assert prepare_detection(plain) == out and (out / "detection_train.json").stat().st_mtime_ns == stamp


def test_cluttered_scenes_overlap_stay_half_visible_and_carry_a_pattern():
    gen = ClutteredShapesGenerator(seed=3, feature_dim=16)
    overlapping = 0
    for _ in range(40):
        scene = gen.scene()
        assert 3 <= len(scene.objects) <= 8 and 1 <= len(scene.distractors) <= 3
        seen = np.full((128, 128), -1)
        for k, (x0, y0, crop) in enumerate(scene.masks):
            window = seen[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]]
            overlapping += int((window[crop] >= 0).any())
            window[crop] = k
        for k, ((x0, y0, crop), o) in enumerate(zip(scene.masks, scene.objects)):
            full = np.zeros((128, 128), dtype=bool)
            full[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
            assert (seen[full] == k).mean() >= MIN_VISIBLE
            ys, xs = np.nonzero(full)
            assert o.box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert o.pattern in PATTERNS and o.shape in CLUTTERED_SHAPES
    assert overlapping >= 20  # occlusion is the rule, not the exception


def test_cluttered_data_is_deterministic_and_its_language_names_the_pattern(cluttered, tmp_path):
    again = generate(tmp_path / "again", sizes=TINY, feature_dim=32, style="cluttered")
    for name in ("captions_train.json", "vqa_val_annotations.json", "scenes_test.json", "vg/attributes.json"):
        assert (cluttered / name).read_text() == (again / name).read_text()
    captions = json.loads((cluttered / "captions_train.json").read_text())
    assert captions["images"][0]["file_name"].endswith(".jpg")
    assert any(p in c["caption"].split() for c in captions["annotations"] for p in PATTERNS)
    questions = [
        q["question"] for q in json.loads((cluttered / "vqa_train_questions.json").read_text())["questions"]
    ]
    assert any(q.startswith("What pattern is the") for q in questions)
    with h5py.File(
        cluttered / "regions.h5", "r"
    ) as f:  # objects, background crops and one region per distractor
        scenes = json.loads((cluttered / "scenes_train.json").read_text())["scenes"]
        expected_min = [len(s["objects"]) + 2 + len(s["distractors"]) for s in scenes]
        assert (f["num_regions"][: len(scenes)] >= expected_min).all()
    data = load_detection_split(prepare_detection(cluttered) / "detection_train.json")
    assert data.classes[1:] == list(CLUTTERED_SHAPES)
    assert data.attributes[-6:] == ["small", "medium", "large", "solid", "striped", "dotted"]
    assert all(((image.attributes >= 1).sum(1) <= 3).all() for image in data.images)


def test_a_folder_the_generator_did_not_create_is_refused_and_left_untouched(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "regions.h5").write_bytes(b"my features")
    (mine / "caption_vocab.json").write_text('{"words": ["mine"]}')
    with pytest.raises(FolderNotOwnedError) as err:
        generate(mine, sizes=TINY, feature_dim=32)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{mine}: refusing to write into a non-empty folder")
    assert "data.generator=null" in message and "data=coco_karpathy" in message
    assert sorted(p.name for p in mine.iterdir()) == ["caption_vocab.json", "regions.h5"]
    assert (mine / "regions.h5").read_bytes() == b"my features"
    assert (mine / "caption_vocab.json").read_text() == '{"words": ["mine"]}'


def test_the_refusal_comes_through_a_training_config_and_its_advice_works(make_cfg, tmp_path):
    from hydra.utils import instantiate

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "regions.h5").write_bytes(b"my features")
    datamodule = instantiate(
        make_cfg("experiment=caption_shapes", f"data.data_dir={mine}").data, _recursive_=False
    )
    with pytest.raises(Exception, match="refusing to write into a non-empty folder"):
        datamodule.prepare_data()
    assert sorted(p.name for p in mine.iterdir()) == ["regions.h5"]
    advised = make_cfg("experiment=caption_shapes", f"data.data_dir={mine}", "data.generator=null")
    assert advised.data.generator is None


def _bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_user_folder_that_looks_generated_is_refused_and_left_byte_identical(tmp_path):
    """A COMPLETE.json with the generator's keys no longer passes for a generated folder."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "COMPLETE.json").write_text('{"version": 1, "sizes": {}, "seed": 0, "feature_dim": 8}')
    (mine / "captions_train.json").write_text('{"annotations": ["my own captions"]}')
    (mine / "caption_vocab.json").write_text('{"words": ["mine"]}')
    (mine / "regions.h5").write_bytes(b"my features")
    before = _bytes(mine)
    with pytest.raises(FolderNotOwnedError, match="refusing to write into a non-empty folder"):
        generate(mine, sizes=TINY, feature_dim=32)
    assert _bytes(mine) == before


@pytest.mark.parametrize("change", ["edited", "added", "unrecorded"])
def test_regenerating_never_overwrites_a_file_the_generator_did_not_write(plain, tmp_path, change):
    old = tmp_path / "old"
    shutil.copytree(plain, old)
    if change == "edited":
        (old / "captions_train.json").write_text('{"annotations": ["edited by hand"]}')
    elif change == "added":
        (old / "images" / "train" / "my_photo.png").write_bytes(b"a photo of mine")
    else:  # marked by an older vqacap, which recorded nothing: the files cannot be told from the user's
        (old / WRITTEN).unlink()
    before = _bytes(old)
    with pytest.raises(FolderNotOwnedError) as err:
        generate(old, sizes={**TINY, "test": 11}, feature_dim=32)
    assert "\n" not in str(err.value) and "not written by vqacap (or changed since)" in str(err.value)
    assert _bytes(old) == before


def test_regenerating_its_own_folder_sets_the_old_vocabulary_aside(plain, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(plain, old)
    (old / "caption_vocab.json").write_text('{"words": ["built", "before"]}')  # the DataModule's
    assert generate(old, sizes={**TINY, "test": 11}, feature_dim=32, no_attribute_fraction=0.2) == old
    assert (old / "caption_vocab.json.stale").read_text() == '{"words": ["built", "before"]}'
    assert not (old / "caption_vocab.json").exists()
    assert len(json.loads((old / "captions_test.json").read_text())["images"]) == 11
    (old / "detection").mkdir(exist_ok=True)
    (old / "detection" / MARKER).write_text("Shapes generator\n")  # another writer's folder
    with pytest.raises(PrepareError, match="written by vqacap's Shapes generator, not by its prepare vg"):
        prepare_detection(old)


@pytest.mark.parametrize("data", ["shapes_cluttered_captions", "shapes_cluttered_vqa"])
def test_cluttered_shapes_trains_the_captioner_and_the_vqa_model(make_cfg, data):
    from vqacap.train import run

    experiment = (
        ["experiment=caption_shapes", *TINY_CAPTIONER] if "captions" in data else ["experiment=vqa_shapes"]
    )
    cfg = make_cfg(*experiment, f"data={data}", "debug=fdr")
    assert cfg.data.data_dir.endswith("shapes_cluttered") and cfg.data.generator.style == "cluttered"
    metrics = run(cfg)
    assert metrics and all(np.isfinite(v) for v in metrics.values())


def test_runs_started_together_fill_a_shared_folder_one_after_the_other(tmp_path):
    """A sweep's jobs on a fresh clone all ask for the same Shapes folder at once: every one gets a complete copy."""
    root = tmp_path / "shapes"
    script = (
        "import sys; from vqacap.shapes import generate, prepare_detection; "
        "root = generate(sys.argv[1], sizes={'train': 20, 'val': 4, 'test': 4}, feature_dim=8); "
        "prepare_detection(root)"
    )
    jobs = [
        subprocess.Popen([sys.executable, "-c", script, str(root)], stderr=subprocess.PIPE) for _ in range(3)
    ]
    for job in jobs:
        _, stderr = job.communicate(timeout=300)
        assert job.returncode == 0, stderr.decode()
    store = RegionStore(root / "regions.h5")
    assert len(store) == 28
    captions = json.loads((root / "captions_train.json").read_text())
    assert {image["id"] for image in captions["images"]} <= {int(i) for i in store.image_ids}
    assert len(load_detection_split(root / "detection" / "detection_train.json").images) == 20

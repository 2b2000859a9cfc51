"""`vqacap prepare vg` on hand-written Visual Genome records: each cleaning rule of bottom-up-attention's setup_vg.py and
vg.py, bad input, and an interrupted run (a real SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers.runs import VQACAP
from vqacap.cli import main
from vqacap.data.detection import load_detection_split
from vqacap.prepare.common import PrepareError
from vqacap.prepare.vg import (
    EMPTY,
    NOT_FINITE,
    OUTSIDE,
    LabelVocabulary,
    Skips,
    clean_attribute,
    clean_box,
    clean_image,
    clean_object_name,
    clean_string,
    iter_json_list,
    prepare_vg,
)

OBJECTS_VOCAB = "man,men\nplate\ntennis racket\nshirt"
ATTRIBUTES = [
    "white", "large", "red", "black and white", "gray,grey", "striped", "wooden", "metal", "dark", "tall", "long",
    "small", "blue", "green", "yellow", "brown", "pink", "orange", "silver", "shiny",
]  # fmt: skip
ATTRIBUTE_INDEX = {line.split(",")[0]: n for n, line in enumerate(ATTRIBUTES, 1)}
SIZES = {1: (100, 80), 2: (50, 40), 4: (30, 30), 5: (60, 50), 6: (40, 40)}


def attribute_ids(*names: str) -> list[int]:
    return [ATTRIBUTE_INDEX[n] for n in names]


def write_vg(root: Path, scene_graphs: bool = False) -> dict[str, Path]:
    """Six images in VG's formats: two usable, one without in-vocabulary objects, one missing, one corrupt, one whose
    url names the wrong folder."""
    images = root / "images"
    for folder in ("VG_100K", "VG_100K_2"):
        (images / folder).mkdir(parents=True)
    for image_id, folder in ((1, "VG_100K"), (2, "VG_100K"), (5, "VG_100K_2"), (6, "VG_100K_2")):
        Image.new("RGB", SIZES[image_id], (90, 120, 30)).save(images / folder / f"{image_id}.jpg")
    (images / "VG_100K" / "4.jpg").write_bytes(b"not a jpeg at all")
    image_data = [
        {
            "image_id": i,
            "url": f"https://cs.stanford.edu/people/rak248/VG_100K/{i}.jpg",
            "width": w,
            "height": h,
        }
        for i, (w, h) in {**SIZES, 3: (10, 10)}.items()
    ]

    def obj(object_id, name, x, y, w, h):
        return {"object_id": object_id, "x": x, "y": y, "w": w, "h": h, "names": [name], "synsets": []}

    objects = {
        1: [
            obj(11, "Men.", 10, 5, 20, 30),
            obj(12, "large white plate", 40, 10, 20, 10),
            obj(
                13, "white tennis racket", 0, 0, 10, 10
            ),  # "tennis" is no common adjective: no split, not in vocab
            obj(14, "shirt", 90, 70, 30, 30),  # clipped to the image
            obj(15, "shirt", -20, 10, 10, 10),  # entirely left of the image
            obj(16, "plate", 5, 50, 10, 10),  # no attributes
            obj(17, "tennis racket", 20, 20, 30, 30),  # 20 attributes
        ],
        2: [obj(21, "tree", 1, 1, 5, 5)],
        3: [obj(31, "man", 1, 1, 5, 5)],
        4: [obj(41, "man", 1, 1, 5, 5)],
        5: [obj(51, "Man", 2, 3, 10, 10)],
        6: [obj(61, "plate", 0, 0, 39, 39)],
    }
    attributes = {
        11: ["Red and Striped", "tall"],
        12: ["Grey", "gray."],
        14: ["black and white"],
        17: [a.split(",")[0] for a in reversed(ATTRIBUTES)],
    }
    files = {"image_data": root / "image_data.json", "objects": root / "objects.json", "images": images}
    files["image_data"].write_text(json.dumps(image_data))
    if scene_graphs:  # attributes inline, as scene_graphs.json objects may carry them
        graphs = []
        for image_id, objs in objects.items():
            for o in objs:
                if o["object_id"] in attributes:
                    o["attributes"] = attributes[o["object_id"]]
            graphs.append({"image_id": image_id, "objects": objs, "relationships": []})
        files["objects"] = root / "scene_graphs.json"
        files["objects"].write_text(json.dumps(graphs))
    else:
        files["objects"].write_text(json.dumps([{"image_id": i, "objects": o} for i, o in objects.items()]))
        files["attributes"] = root / "attributes.json"
        by_image = [
            {
                "image_id": image_id,
                "attributes": [
                    {
                        **o,
                        **(
                            {"attributes": attributes[o["object_id"]]} if o["object_id"] in attributes else {}
                        ),
                    }
                    for o in objs
                ],
            }
            for image_id, objs in objects.items()
        ]
        files["attributes"].write_text(json.dumps(by_image))
    vocab = root / "1600-400-20"
    vocab.mkdir()
    (vocab / "objects_vocab.txt").write_text(OBJECTS_VOCAB)
    (vocab / "attributes_vocab.txt").write_text("\n".join(ATTRIBUTES))
    files["vocab"] = vocab
    splits = root / "splits"
    splits.mkdir()
    (splits / "train.txt").write_text("VG_100K/1.jpg xml/1.xml\nVG_100K_2/5.jpg xml/5.xml\n")
    (splits / "val.txt").write_text("6\n2\n")
    files["train"], files["val"] = splits / "train.txt", splits / "val.txt"
    return files


def args_of(files: dict[str, Path], out: Path, splits: bool = True) -> list[str]:
    args = ["prepare", "vg", "--image-data", str(files["image_data"]), "--objects", str(files["objects"])]
    args += ["--images", str(files["images"]), "--vocab", str(files["vocab"]), "--out", str(out)]
    if "attributes" in files:
        args += ["--attributes", str(files["attributes"])]
    if splits:
        args += ["--split", f"train={files['train']}", "--split", f"val={files['val']}"]
    return args


# Hand-computed from the records above with setup_vg.py's and vg.py's rules.
EXPECTED_TRAIN = [
    {
        "image_id": 1,
        "file_name": "VG_100K/1.jpg",
        "width": 100,
        "height": 80,
        "objects": [
            {
                "box": [10.0, 5.0, 30.0, 35.0],
                "class": 1,
                "attributes": attribute_ids("red", "striped", "tall"),
            },
            {
                "box": [40.0, 10.0, 60.0, 20.0],
                "class": 2,
                "attributes": attribute_ids("large", "white", "gray"),
            },
            {"box": [90.0, 70.0, 99.0, 79.0], "class": 4, "attributes": attribute_ids("black and white")},
            {"box": [5.0, 50.0, 15.0, 60.0], "class": 2, "attributes": []},
            {"box": [20.0, 20.0, 50.0, 50.0], "class": 3, "attributes": list(range(20, 4, -1))},
        ],
    },
    {
        "image_id": 5,
        "file_name": "VG_100K_2/5.jpg",  # the url names VG_100K: found by its id
        "width": 60,
        "height": 50,
        "objects": [{"box": [2.0, 3.0, 12.0, 13.0], "class": 1, "attributes": []}],
    },
]


def test_strings_are_lower_cased_and_lose_one_trailing_period():
    assert clean_string("  Red Car. ") == "red car"
    assert clean_string("etc..") == "etc."
    assert clean_string(".") == ""


def test_leading_common_adjectives_of_object_names_become_attributes():
    assert clean_object_name("White plate") == ("plate", ["white"])
    assert clean_object_name("large white plate.") == ("plate", ["large", "white"])
    assert clean_object_name("tennis racket") == ("tennis racket", [])
    assert clean_object_name("white tennis racket") == (
        "white tennis racket",
        [],
    )  # "tennis" is no common adjective
    assert clean_object_name("Dark") == ("dark", [])  # one word stays the name


def test_attributes_split_on_and_except_black_and_white():
    assert clean_attribute("Red and Striped.") == ["red", "striped"]
    assert clean_attribute("black and white") == ["black and white"]
    assert clean_attribute("black and white and red") == ["black", "white", "red"]
    assert clean_attribute("sand") == ["sand"]


def test_an_objects_attributes_come_adjectives_first_each_class_once(tmp_path):
    (tmp_path / "o.txt").write_text("plate")
    (tmp_path / "a.txt").write_text("\n".join(ATTRIBUTES))
    classes = LabelVocabulary.load(tmp_path / "o.txt", "__background__")
    attributes = LabelVocabulary.load(tmp_path / "a.txt", "__no_attribute__")
    obj = {
        "object_id": 7,
        "x": 1,
        "y": 2,
        "w": 3,
        "h": 4,
        "names": ["White grey white plate"],
        "attributes": ["Gray"],
    }
    cleaned = clean_image(1, [obj], {7: (ATTRIBUTE_INDEX["red"], ATTRIBUTE_INDEX["white"])}, 10, 10, classes,
                          attributes, tmp_path / "objects.json", Skips())  # fmt: skip
    assert cleaned == [
        {"box": [1.0, 2.0, 4.0, 6.0], "class": 1, "attributes": attribute_ids("white", "gray", "red")}
    ]


def test_vocabulary_lines_map_synonyms_to_the_first_alias(tmp_path):
    path = tmp_path / "objects_vocab.txt"
    path.write_text("Man, men\nplate\n")
    vocab = LabelVocabulary.load(path, "__background__")
    assert vocab.names == ["__background__", "man", "plate"]
    assert vocab.index == {"man": 1, "men": 1, "plate": 2}


@pytest.mark.skipif(
    not Path("/work/shared/heldout/bottom-up-attention/objects_vocab.txt").is_file(),
    reason="1600-400-20 lists absent",
)
def test_the_real_1600_400_vocabularies_give_1601_and_401_classes():
    folder = Path("/work/shared/heldout/bottom-up-attention")
    classes = LabelVocabulary.load(folder / "objects_vocab.txt", "__background__")
    attributes = LabelVocabulary.load(folder / "attributes_vocab.txt", "__no_attribute__")
    assert len(classes.names) == 1601 and len(attributes.names) == 401
    assert attributes.index["grey"] == attributes.index["gray"] == attributes.names.index("gray")
    assert attributes.index["multicolored"] == attributes.names.index("multi colored")


def test_prepare_applies_every_rule_and_reports_the_skips(tmp_path, capsys):
    files, out = write_vg(tmp_path), tmp_path / "detection"
    assert main(args_of(files, out)) == 0
    train = json.loads((out / "detection_train.json").read_text())
    assert train["format"] == "vqacap-detection" and train["version"] == 1
    assert train["image_root"] == str(files["images"].resolve())
    assert train["classes"] == ["__background__", "man", "plate", "tennis racket", "shirt"]
    assert train["attributes"] == ["__no_attribute__", *(a.split(",")[0] for a in ATTRIBUTES)]
    assert train["images"] == EXPECTED_TRAIN
    val = json.loads((out / "detection_val.json").read_text())["images"]
    assert [image["image_id"] for image in val] == [6]
    assert not (out / "detection_test.json").exists()  # only the splits given
    report = capsys.readouterr().out
    assert "skipped 1 boxes outside the image (e.g. image 1 object 15)" in report
    assert "skipped 1 images without an in-vocabulary object (e.g. 2)" in report
    assert f"skipped 1 images without an image file under {files['images']} (e.g. 3)" in report
    assert "skipped 1 unreadable images (e.g. 4 (4.jpg: UnidentifiedImageError" in report
    assert "skipped 1 ids of split files that have no kept image (val) (e.g. 2)" in report
    complete = json.loads((out / "COMPLETE.json").read_text())
    assert complete["counts"] == {
        "objects": 7,
        "objects_without_attributes": 3,
        "images": {"train": 2, "val": 1},
    }
    assert (out / "objects_vocab.txt").read_text() == OBJECTS_VOCAB
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp")) == []


def test_the_reader_reads_what_prepare_writes(tmp_path):
    files, out = write_vg(tmp_path), tmp_path / "detection"
    prepare_vg(files["image_data"], files["objects"], files["images"], files["vocab"], out, files["attributes"],
               {"train": files["train"], "val": files["val"]}, log=lambda line: None)  # fmt: skip
    split = load_detection_split(out / "detection_train.json")
    assert split.classes[1:] == ["man", "plate", "tennis racket", "shirt"]
    first = split.images[0]
    assert first.path == files["images"].resolve() / "VG_100K" / "1.jpg" and first.path.is_file()
    assert first.boxes.tolist() == [o["box"] for o in EXPECTED_TRAIN[0]["objects"]]
    assert first.labels.tolist() == [1, 2, 4, 2, 3]
    assert first.attributes[0].tolist()[:3] == attribute_ids("red", "striped", "tall")
    assert (first.attributes[3] == -1).all() and (first.attributes[4] >= 1).all()


def test_scene_graphs_with_inline_attributes_give_the_same_annotations(tmp_path):
    files, out = write_vg(tmp_path, scene_graphs=True), tmp_path / "detection"
    assert main(args_of(files, out)) == 0
    assert json.loads((out / "detection_train.json").read_text())["images"] == EXPECTED_TRAIN


def test_without_split_files_a_seeded_split_covers_every_kept_image(tmp_path):
    files = write_vg(tmp_path)
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert (
            main([*args_of(files, out, splits=False), "--val-fraction", "0.34", "--test-fraction", "0.34"])
            == 0
        )
        runs.append({s: [i["image_id"] for i in json.loads((out / f"detection_{s}.json").read_text())["images"]]
                     for s in ("train", "val", "test")})  # fmt: skip
    assert runs[0] == runs[1]
    assert sorted(sum(runs[0].values(), [])) == [1, 5, 6]
    assert [len(runs[0][s]) for s in ("train", "val", "test")] == [1, 1, 1]


def test_a_complete_folder_is_left_alone_and_changed_inputs_rebuild_it(tmp_path, capsys):
    files, out = write_vg(tmp_path), tmp_path / "detection"
    assert main(args_of(files, out)) == 0
    stamp = (out / "detection_train.json").stat().st_mtime_ns
    assert main(args_of(files, out)) == 0
    assert "up to date" in capsys.readouterr().out
    assert (out / "detection_train.json").stat().st_mtime_ns == stamp
    (files["vocab"] / "objects_vocab.txt").write_text("plate\n")
    assert main(args_of(files, out)) == 0
    train = json.loads((out / "detection_train.json").read_text())
    assert train["classes"] == ["__background__", "plate"]
    assert [i["image_id"] for i in train["images"]] == [1]  # image 5 holds only a man


@pytest.mark.parametrize(
    "swap, message",
    [
        ({"objects": "attributes"}, "is a Visual Genome attributes file, given as --objects"),
        ({"image_data": "objects"}, "is a Visual Genome objects file, given as --image-data"),
        ({"attributes": "objects"}, "is a Visual Genome objects file, given as --attributes"),
    ],
)
def test_files_of_the_wrong_kind_get_one_line_naming_the_file(tmp_path, capsys, swap, message):
    files = write_vg(tmp_path)
    ((option, given),) = swap.items()
    files = {**files, option: files[given]}
    assert main(args_of(files, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert err == f"error: {files[option]}: {message}\n"


def test_bad_vocabularies_and_records_get_one_line_errors(tmp_path, capsys):
    files = write_vg(tmp_path)
    (files["vocab"] / "attributes_vocab.txt").write_text("")
    assert main(args_of(files, tmp_path / "a")) == 2
    assert capsys.readouterr().err == f"error: {files['vocab'] / 'attributes_vocab.txt'}: empty vocabulary " \
        "(expected one class per line)\n"  # fmt: skip
    (files["vocab"] / "attributes_vocab.txt").write_text("red\n\nblue\n")
    assert main(args_of(files, tmp_path / "b")) == 2
    assert (
        capsys.readouterr().err == f"error: {files['vocab'] / 'attributes_vocab.txt'}:2: empty class name\n"
    )
    (files["vocab"] / "attributes_vocab.txt").write_text("red\n")
    objects = json.loads(files["objects"].read_text())
    del objects[4]["objects"][0]["w"]
    files["objects"].write_text(json.dumps(objects))
    assert main(args_of(files, tmp_path / "c")) == 2
    assert (
        capsys.readouterr().err
        == f"error: {files['objects']}: image 5 object 51: lacks a numeric x, y, w or h\n"
    )
    files["objects"].write_text('[{"image_id": 1, "objects": []}, {"image_id": 2, "obj')
    assert main(args_of(files, tmp_path / "d")) == 2
    assert capsys.readouterr().err.startswith(f"error: {files['objects']}: not valid JSON (")


def test_a_folder_of_the_users_is_refused_and_left_untouched(tmp_path, capsys):
    files, out = write_vg(tmp_path), tmp_path / "mine"
    out.mkdir()
    (out / "regions.h5").write_bytes(b"my features")
    (out / "detection_train.json").write_text("my annotations")
    assert main(args_of(files, out)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out}: refusing to write into a non-empty folder") and err.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == ["detection_train.json", "regions.h5"]
    assert (out / "regions.h5").read_bytes() == b"my features"
    assert (out / "detection_train.json").read_text() == "my annotations"


def test_streamed_lists_equal_json_load_at_any_chunk_size(tmp_path):
    path = tmp_path / "list.json"
    data = [{"image_id": i, "objects": [{"names": ["a, b]"] * i, "x": 1.5e3}]} for i in range(30)]
    path.write_text(" \n" + json.dumps(data, indent=1) + "\n")
    for chunk in (1, 7, 64, 1 << 20):
        assert list(iter_json_list(path, chunk_chars=chunk)) == data
    path.write_text('{"images": []}')
    with pytest.raises(PrepareError, match="expected a JSON list"):
        list(iter_json_list(path))


def test_a_run_killed_mid_stream_leaves_nothing_that_looks_complete_and_the_rerun_rebuilds(tmp_path):
    """The objects file is a pipe: the run is SIGKILLed while it waits for the rest of it, at a known point."""
    files, out = write_vg(tmp_path), tmp_path / "detection"
    assert main(args_of(files, out)) == 0  # a complete earlier version
    records = json.loads(files["objects"].read_text())
    fifo = tmp_path / "objects.fifo"
    os.mkfifo(fifo)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    # The rerun is forced by a changed input (the objects file is now another path).
    cmd = [*VQACAP, *args_of({**files, "objects": fifo}, out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while True:  # open the pipe's writing end once the run has opened its reading end
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.02)
    os.set_blocking(fd, True)
    with os.fdopen(fd, "w") as pipe:
        # By now the run has dropped COMPLETE.json and is streaming: give it image 1, then kill it mid-list.
        assert (out / "images.jsonl.tmp").exists() and not (out / "COMPLETE.json").exists()
        pipe.write("[" + json.dumps(records[0]) + ",")
        pipe.flush()
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "COMPLETE.json").exists()
    assert main(args_of(files, out)) == 0
    assert json.loads((out / "detection_train.json").read_text())["images"] == EXPECTED_TRAIN
    assert json.loads((out / "COMPLETE.json").read_text())["counts"]["objects"] == 7


def test_boxes_that_are_not_finite_or_empty_in_float32_are_reported_and_skipped(tmp_path, capsys):
    """NaN and inf coordinates used to become full-width boxes (min/max swallow NaN); w = 1e-9 passed, then stopped
    detector training with torchvision's assertion."""
    files, out = write_vg(tmp_path), tmp_path / "detection"
    objects = json.loads(files["objects"].read_text())
    bad = {91: {"x": float("nan")}, 92: {"w": float("inf")}, 93: {"y": float("-inf")}, 94: {"w": 1e-9}}
    for object_id, change in bad.items():
        record = {"object_id": object_id, "x": 10, "y": 5, "w": 20, "h": 30, "names": ["man"], "synsets": []}
        objects[0]["objects"].append({**record, **change})
    files["objects"].write_text(json.dumps(objects))  # NaN and Infinity, as Python's json writes them
    files.pop("attributes")
    assert main(args_of(files, out)) == 0
    report = capsys.readouterr().out
    assert (
        "skipped 3 boxes with a coordinate that is not a finite number (e.g. image 1 object 91, image 1 object "
        in report
    )
    assert "skipped 1 boxes of zero width or height in float32 (e.g. image 1 object 94)" in report
    boxes = [o["box"] for o in json.loads((out / "detection_train.json").read_text())["images"][0]["objects"]]
    assert boxes == [o["box"] for o in EXPECTED_TRAIN[0]["objects"]]
    load_detection_split(out / "detection_train.json")  # what training reads


@pytest.mark.parametrize(
    ("image_id", "message"),
    [(10**25, f"image_id {10**25} is not an integer id in 0 .. 2^63 - 1"),
     ("\u00b2", "image_id '\u00b2' is not an integer id in 0 .. 2^63 - 1"),
     (None, "JSON nested too deeply to read")],
    ids=["10^25", "superscript_two", "deep_nesting"],
)  # fmt: skip
def test_ids_out_of_range_and_deep_nesting_are_one_line(tmp_path, capsys, image_id, message):
    """OverflowError, ValueError and RecursionError tracebacks before."""
    files, out = write_vg(tmp_path), tmp_path / "detection"
    objects = json.loads(files["objects"].read_text())
    if image_id is None:
        text = json.dumps(objects)[:-1] + ", " + "[" * 100_000 + "]" * 100_000 + "]"
    else:
        objects[0]["image_id"] = image_id
        text = json.dumps(objects)
    files["objects"].write_text(text)
    assert main(args_of(files, out)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {files['objects']}") and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("vocab", "message"),
    [("man\nplate\nman\n", "objects_vocab.txt:3: 'man' is a class of line 1 already"),
     ("man\n__background__\n", "objects_vocab.txt:2: __background__ is class 0 already (the file lists the other classes)")],
    ids=["duplicate_line", "background_line"],
)  # fmt: skip
def test_duplicate_and_reserved_vocabulary_lines_are_refused(tmp_path, capsys, vocab, message):
    """Both were accepted silently: a duplicate line is a class no box can get, __background__ a second class 0."""
    files = write_vg(tmp_path)
    (files["vocab"] / "objects_vocab.txt").write_text(vocab)
    assert main(args_of(files, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.strip().endswith(message) and err.count("\n") == 1, err


def test_an_objects_list_that_keeps_no_image_is_refused(tmp_path, capsys):
    """An empty objects list ended with exit 0 and detection files of 0 images."""
    files, out = write_vg(tmp_path), tmp_path / "out"
    files["objects"].write_text("[]")
    files.pop("attributes")
    assert main(args_of(files, out)) == 2
    err = capsys.readouterr().err
    assert err == f"error: {files['objects']}: no image kept (the list holds no images)\n"
    assert not (out / "COMPLETE.json").exists() and not list(out.glob("detection_*.json"))


def test_an_image_listed_twice_in_image_data_is_refused(tmp_path, capsys):
    """The second record silently replaced the first one's url."""
    files = write_vg(tmp_path)
    image_data = json.loads(files["image_data"].read_text())
    files["image_data"].write_text(json.dumps([*image_data, {**image_data[0], "url": "elsewhere/1.jpg"}]))
    assert main(args_of(files, tmp_path / "out")) == 2
    assert capsys.readouterr().err == (
        f"error: {files['image_data']}: image 1 appears twice (image record {len(image_data)})\n"
    )


def test_a_random_split_of_images_coco_shares_is_refused_unless_asked_for(tmp_path, capsys):
    files, out = write_vg(tmp_path), tmp_path / "detection"
    records = json.loads(files["image_data"].read_text())
    records[0]["coco_id"] = 139  # Visual Genome's image_data.json names the COCO images
    files["image_data"].write_text(json.dumps(records))
    assert main(args_of(files, out, splits=False)) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "1 images are also COCO images" in error
    assert "--split train=data/genome/train.txt" in error and not out.exists()
    assert main([*args_of(files, out, splits=False), "--random-split"]) == 0
    assert main(args_of(files, tmp_path / "with_splits")) == 0  # split files: no question


def test_zero_area_boxes_are_skipped_apart_from_inverted_ones():
    """vg.py keeps x2 == x1 (a 1-pixel box in its +1 convention) and replaces x2 < x1 by the whole image; both are
    skipped here, reported under their own reasons."""
    assert clean_box(10, 20, 30, 40, 100, 100) == [10, 20, 40, 60]
    assert clean_box(10, 20, 0, 40, 100, 100) == EMPTY  # w = 0
    assert clean_box(10, 99, 5, 7, 100, 100) == EMPTY  # clipped to y2 = 99 = y1
    assert clean_box(120, 20, 5, 5, 100, 100) == OUTSIDE  # x1 = 120 > x2 = 99
    assert clean_box(float("nan"), 20, 5, 5, 100, 100) == NOT_FINITE

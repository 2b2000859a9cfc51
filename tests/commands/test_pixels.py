"""From pixels to words: a detector trained for a few steps on rendered Shapes, its regions extracted, a captioner and a
VQA model trained for a few steps on them, then `vqacap caption` / `vqacap answer` on image files, all real."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from tests.helpers.configs import TINY_CAPTIONER, compose_train
from tests.helpers.pixels import PIXEL_SIZES as SIZES
from tests.helpers.pixels import PIXEL_STEPS as FEW_STEPS
from tests.helpers.pixels import pixel_chain
from tests.helpers.references import import_reference
from vqacap.cli import main as vqacap
from vqacap.data.captions import CaptionDataModule
from vqacap.data.pixels import PixelDataModule, RegionChoice
from vqacap.data.store import RegionStore
from vqacap.data.vocab import Vocabulary
from vqacap.lightning.common import region_inputs
from vqacap.lightning.loading import load_detector, load_module
from vqacap.train import run

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Render -> detector (3 steps) -> extract -> captioner and VQA model (3 steps each) on the detected regions."""
    torch.set_num_threads(1)
    return pixel_chain(tmp_path_factory.mktemp("pixels"))


def test_caption_an_image_end_to_end_matches_the_extracted_store(chain, tmp_path, capsys):
    """The caption `vqacap caption` prints for a test PNG is the one the same captioner decodes from the regions that
    `vqacap extract` stored for that image: detecting on the fly and reading the store give the same regions."""
    image = chain["shapes"] / "images" / "test" / "000031.png"
    out = tmp_path / "maps"
    assert vqacap(["caption", str(image), "--detector", chain["detector"], "--captioner", chain["captioner"],
                   "--beam", "3", "--out", str(out)]) == 0  # fmt: skip
    path, caption, map_path = capsys.readouterr().out.strip().split("\t")
    assert path == str(image) and map_path == str(out / "000031_caption.png")

    module = load_module(chain["captioner"])
    module.decoding = dataclasses.replace(module.decoding, beam_size=3)
    data = CaptionDataModule(str(chain["shapes"]), store=str(chain["store"]), generator=None)
    data.setup("test")
    decoded = module(data.examples("test", [31]).to(module.device), module.decoding)
    assert caption == module.vocab.decode(decoded.tokens[0, 0].tolist())

    with Image.open(map_path) as figure:  # the caption over one panel (160 pixels) per word, 4 to a row
        rows = -(-len(caption.split()) // 4)
        assert figure.mode == "RGB" and figure.height > rows * 160


def test_the_attention_map_names_the_boxes_with_the_detectors_labels(chain):
    detector = load_detector(chain["detector"])
    image = chain["shapes"] / "images" / "test" / "000031.png"
    module = load_module(chain["captioner"])
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    [[item]] = trainer.predict(module, datamodule=PixelDataModule([image], detector))
    store = RegionStore(chain["store"])
    classes, attributes = store.field_names("object_labels"), store.field_names("attribute_labels")
    expected = [
        f"{attributes[a]} {classes[c]}"
        for c, a in zip(store.read_field(31, "object_labels"), store.read_field(31, "attribute_labels"))
    ]
    assert item["labels"] == expected
    assert torch.allclose(item["boxes"], torch.from_numpy(store.read_batch([31]).boxes[0].numpy()), atol=1e-4)
    assert item["attention"].shape == (len(item["words"]), len(expected))


def test_trainer_predict_over_a_folder_gives_what_the_command_prints(chain, tmp_path, capsys):
    folder = sorted((chain["shapes"] / "images" / "val").glob("*.png"))
    detector = load_detector(chain["detector"])
    module = load_module(chain["captioner"])
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    batches = trainer.predict(module, datamodule=PixelDataModule(folder, detector, batch_size=4))
    captions = [item["caption"] for batch in batches for item in batch]
    assert [len(b) for b in batches] == [4, 2]
    assert (
        vqacap(
            ["caption", *map(str, folder), "--detector", chain["detector"], "--captioner", chain["captioner"]]
        )
        == 0
    )
    printed = [line.split("\t") for line in capsys.readouterr().out.splitlines()]  # a caption may be empty
    assert printed == [[str(p), c] for p, c in zip(folder, captions)]


def test_grey_rgba_and_jpeg_images_are_captioned_as_their_rgb_pixels(chain, tmp_path, capsys):
    source = chain["shapes"] / "images" / "test" / "000032.png"
    rgb = Image.open(source).convert("RGB")
    grey = rgb.convert("L")
    rgba = rgb.copy()
    rgba.putalpha(255)
    files = {"grey.png": grey, "rgba.png": rgba, "rgb.jpg": rgb, "grey_rgb.png": grey.convert("RGB")}
    for name, im in files.items():
        im.save(tmp_path / name, **({"quality": 95} if name.endswith(".jpg") else {}))
    args = ["--detector", chain["detector"], "--captioner", chain["captioner"]]
    assert vqacap(["caption", str(source), *(str(tmp_path / n) for n in files), *args]) == 0
    captions = dict(line.split("\t") for line in capsys.readouterr().out.splitlines())
    assert captions[str(tmp_path / "rgba.png")] == captions[str(source)]  # opaque alpha: the same pixels
    assert (
        captions[str(tmp_path / "grey.png")] == captions[str(tmp_path / "grey_rgb.png")]
    )  # grey read as RGB
    assert len(captions) == 5


def test_a_photograph_is_captioned_and_answered(chain, tmp_path, capsys):
    """A real photograph (scikit-image's astronaut, 512 x 512 RGB, stored as JPEG): the detector rescales it as any
    image; the caption is made of the captioner's words and both maps are written."""
    photo = tmp_path / "astronaut.jpg"
    Image.fromarray(import_reference("skimage.data").astronaut()).save(photo, quality=90)
    out = tmp_path / "maps"
    assert vqacap(["caption", str(photo), "--detector", chain["detector"], "--captioner", chain["captioner"],
                   "--out", str(out)]) == 0  # fmt: skip
    path, caption, map_path = capsys.readouterr().out.strip().split("\t")
    assert path == str(photo) and map_path == str(out / "astronaut_caption.png")
    # a captioner of three steps may end at once: the words, if any, are its own
    assert set(caption.split()) <= set(load_module(chain["captioner"]).vocab.words)
    assert vqacap(["answer", str(photo), "--question", "What color is the circle?", "--detector", chain["detector"],
                   "--vqa", chain["vqa"], "--out", str(out)]) == 0  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"{photo}\t{out / 'astronaut_answer.png'}" and len(lines) == 1 + min(
        5, len(load_module(chain["vqa"]).answers)
    )
    for figure_path in (map_path, out / "astronaut_answer.png"):
        with Image.open(figure_path) as figure:
            assert figure.mode == "RGB" and figure.width >= 160


def test_answer_prints_the_top_answers_and_draws_the_question_map(chain, tmp_path, capsys):
    image = chain["shapes"] / "images" / "test" / "000033.png"
    asked = json.loads((chain["shapes"] / "vqa_test_questions.json").read_text())["questions"]
    question = next(q["question"] for q in asked if q["image_id"] == 33)
    out = tmp_path / "maps"
    assert vqacap(["answer", str(image), "--question", question, "--detector", chain["detector"],
                   "--vqa", chain["vqa"], "--out", str(out)]) == 0  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"{image}\t{out / '000033_answer.png'}"
    top = [line.split() for line in lines[1:]]
    module = load_module(chain["vqa"])
    assert len(top) == min(5, len(module.answers))
    scores = [float(s) for s, _ in top]
    assert scores == sorted(scores, reverse=True) and all(a in module.answers for _, a in top)

    # the same scores from the model on the regions `vqacap extract` stored for the image
    ids = torch.tensor([Vocabulary(module.hparams.words[4:], max_length=14).encode(question)])
    regions = RegionStore(chain["store"]).read_batch([33])
    logits = module.net(region_inputs(regions, module.use_spatial), regions.mask, ids).logits[0]
    expected = torch.sigmoid(logits).topk(len(top))
    assert [a for _, a in top] == [module.answers[i] for i in expected.indices.tolist()]
    assert scores == pytest.approx(expected.values.tolist(), abs=1e-3)
    with Image.open(out / "000033_answer.png") as figure:
        assert figure.mode == "RGB"


def test_bad_inputs_are_one_line_errors(chain, tmp_path, capsys):
    image = chain["shapes"] / "images" / "test" / "000031.png"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    cases = {
        "broken.png: unreadable image": ["caption", str(broken), "--captioner", chain["captioner"]],
        "missing.jpg: image file not found": ["caption", str(tmp_path / "missing.jpg"), "--captioner", chain["captioner"]],
        "a VQA checkpoint, but --captioner needs a captioning one": ["caption", str(image), "--captioner", chain["vqa"]],
        "not a checkpoint of the bottom-up detector": ["caption", str(image), "--captioner", chain["captioner"],
                                                       "--detector", chain["captioner"]],
        "is in the VQA model's vocabulary": ["answer", str(image), "--vqa", chain["vqa"], "--question", "zzz qqq"],
    }  # fmt: skip
    for expected, argv in cases.items():
        if "--detector" not in argv:
            argv = [*argv, "--detector", chain["detector"]]
        assert vqacap(argv) == 2, expected
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1, err


def test_a_captioner_of_other_features_does_not_fit_the_detector(chain, tmp_path, capsys):
    """A captioner trained on the ideal store (2048-d features) with this detector (64-d)."""
    cfg = compose_train(["experiment=caption_shapes", SIZES, *FEW_STEPS, *TINY_CAPTIONER, "test=false",
                         "callbacks.attention_maps=null"], tmp_path / "ideal", chain["root"] / "data")  # fmt: skip
    run(cfg)
    ideal = next((tmp_path / "ideal" / "checkpoints").glob("epoch*.ckpt"))
    image = chain["shapes"] / "images" / "test" / "000031.png"
    assert vqacap(["caption", str(image), "--detector", chain["detector"], "--captioner", str(ideal)]) == 2
    err = capsys.readouterr().err.strip()
    assert "reads 2048-d region features" in err and "writes 64-d ones" in err and len(err.splitlines()) == 1


def test_region_choice_rejects_impossible_limits():
    with pytest.raises(ValueError, match="min_boxes <= max_boxes"):
        RegionChoice(min_boxes=10, max_boxes=5)
    with pytest.raises(ValueError, match="grid must be at least 1"):
        RegionChoice(grid=0)


def test_grid_choice_gives_the_grid_stores_regions(chain, tmp_path):
    """--grid N on the fly equals `vqacap extract --grid N` for the same image (the grid-trained models' input)."""
    store = tmp_path / "grid.h5"
    folder = chain["shapes"] / "images" / "test"
    assert vqacap(["extract", "--detector", chain["detector"], "--images", str(folder), "--out", str(store), "--grid",
                   "2", "--dtype", "float32", "--no-progress"]) == 0  # fmt: skip
    detector = load_detector(chain["detector"])
    data = PixelDataModule([folder / "000031.png"], detector, RegionChoice(grid=2))
    batch = next(iter(data.predict_dataloader()))
    stored = RegionStore(store).read_batch([31])
    assert torch.allclose(batch.regions.features, stored.features, atol=1e-5)
    assert torch.equal(batch.regions.boxes, stored.boxes) and batch.region_labels == [[]]
    assert np.array_equal(batch.regions.image_size.numpy(), stored.image_size.numpy())
    assert Path(folder / "000031.png").is_file()


@pytest.mark.parametrize("task", ["caption", "vqa"])
def test_the_comparison_rows_differ_only_in_their_features(task, tmp_path):
    """Every row of a `python -m vqacap.pixels` table is the same recipe; only the region store (or the blind zeroing)
    changes, so the rows compare features and nothing else."""
    from omegaconf import OmegaConf

    from vqacap.pixels import parse_args, training_jobs

    args = parse_args(["--data", "shapes_cluttered", "--caption-epochs", "2", "--vqa-epochs", "3"])
    configs = {}
    for job in training_jobs(args, task, tmp_path):
        overrides = job.command[3:]  # after python -m vqacap.train
        assert f"name={job.name}" in overrides and job.name.endswith("-shapes_cluttered")
        cfg = compose_train(overrides, tmp_path / job.name, tmp_path / "data")
        configs[job.name] = OmegaConf.to_container(cfg, resolve=False)
    base = configs.pop(f"{task}_shapes-shapes_cluttered")
    assert "store" not in base["data"]  # the DataModule's default, regions.h5: the ideal detector's store
    assert base["trainer"]["max_epochs"] == (2 if task == "caption" else 3)
    expected = {
        f"{task}_shapes_detected-shapes_cluttered": {"store": "detected.h5"},
        f"{task}_shapes_detected36-shapes_cluttered": {"store": "detected36.h5"},
        f"{task}_shapes_grid-shapes_cluttered": {"store": "grid.h5"},
        f"{task}_shapes_blind-shapes_cluttered": {"zero_regions": True},
    }
    assert set(configs) == set(expected)
    for name, cfg in configs.items():
        changed = {k: v for k, v in cfg["data"].items() if base["data"].get(k) != v}
        assert changed == expected[name]
        assert cfg["data"]["data_dir"].endswith("/shapes_cluttered")
        for group in ("model", "trainer"):
            assert cfg[group] == base[group]


def test_the_table_scores_meteor_of_a_captioning_run_once(chain, capsys):
    """The recipes leave METEOR out; the table computes it from the run's test captions, as `vqacap evaluate` does."""
    import_reference("pycocoevalcap.meteor.meteor")
    from vqacap.pixels import meteor_of

    run, references = chain["root"] / "captioner", chain["shapes"] / "captions_test.json"
    assert vqacap(["evaluate", "captions", "--annotations", str(references),
                   "--results", str(run / "test_captions.json"), "--metrics", "METEOR", "--json"]) == 0  # fmt: skip
    expected = json.loads(capsys.readouterr().out)["METEOR"]
    assert meteor_of(run, references) == expected
    cached = run / "test_meteor.json"
    assert json.loads(cached.read_text())["METEOR"] == expected
    assert meteor_of(run, references) == expected  # read back, not recomputed


def test_the_show_attend_tell_rows_compose_with_each_store(tmp_path):
    """`--sat` rows use the SAT recipe, which names no region store: the store is added, and every row composes."""
    from vqacap.pixels import parse_args, training_jobs

    args = parse_args(["--sat", "--features", "ideal", "detected", "grid"])
    stores = {}
    for job in training_jobs(args, "caption", tmp_path):
        overrides = job.command[3:]
        if "experiment=caption_shapes_sat" in overrides:
            cfg = compose_train(overrides, tmp_path / job.name, tmp_path / "data")
            stores[job.name] = cfg.data.get("store")
            assert cfg.model.net._target_.endswith("ShowAttendTell")
    assert stores == {"caption_shapes_sat": None, "caption_shapes_sat_detected": "detected.h5",
                      "caption_shapes_sat_grid": "grid.h5"}  # fmt: skip


@pytest.mark.parametrize("command", ["caption", "answer"])
def test_an_image_of_extreme_aspect_ratio_or_a_grid_too_fine_is_refused_up_front(
    chain, tmp_path, capsys, command
):
    """A 10000 x 10 image stopped caption and answer with torchvision's traceback."""
    strip = tmp_path / "strip.png"
    Image.new("RGB", (10000, 10), (200, 30, 30)).save(strip)
    image = chain["shapes"] / "images" / "test" / "000031.png"
    model = (
        ["--captioner", chain["captioner"]]
        if command == "caption"
        else ["--vqa", chain["vqa"], "--question", "what"]
    )
    base = [command, str(image), *model, "--detector", chain["detector"]]
    assert vqacap([*base[:2], str(strip), *base[2:]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vqacap {command}: {strip}: 10000x10 pixels is ") and len(err.splitlines()) == 1, (
        err
    )
    assert "less than one 16-pixel cell of its feature map" in err
    assert vqacap([*base, "--grid", "1000"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith(f"vqacap {command}: --grid 1000: the detector's feature map has at most ")
        and "\n" not in err
    )


def test_a_folder_on_two_processes_gives_the_results_file_of_one(chain, tmp_path, capsys):
    """`vqacap caption DIR --devices 2` (two CPU processes over gloo, one image per pass): every image captioned once,
    the lines and the COCO results file of one process, which `vqacap evaluate captions` scores."""
    folder = chain["shapes"] / "images" / "test"
    base = ["caption", str(folder), "--detector", chain["detector"], "--captioner", chain["captioner"],
            "--accelerator", "cpu", "--batch-size", "1"]  # fmt: skip
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    assert vqacap([*base, "--results", str(one)]) == 0
    printed = capsys.readouterr().out
    command = [sys.executable, "-m", "vqacap.cli", *base, "--devices", "2", "--results", str(two)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == printed
    results = json.loads(two.read_text())
    assert results == json.loads(one.read_text())
    assert [r["image_id"] for r in results] == [int(p.stem) for p in sorted(folder.glob("*.png"))]
    annotations = chain["shapes"] / "captions_test.json"
    assert vqacap(["evaluate", "captions", "--annotations", str(annotations), "--results", str(two),
                   "--metrics", "Bleu_1", "--no-tokenize"]) == 0  # fmt: skip


def test_answer_over_a_folder_writes_vqa_results_under_the_image_ids(chain, tmp_path, capsys):
    folder = chain["shapes"] / "images" / "val"
    question = json.loads((chain["shapes"] / "vqa_test_questions.json").read_text())["questions"][0][
        "question"
    ]
    results = tmp_path / "answers.json"
    assert vqacap(["answer", str(folder), "--question", question, "--detector", chain["detector"],
                   "--vqa", chain["vqa"], "--results", str(results)]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    best = [lines[n + 1].split()[1] for n, line in enumerate(lines) if not line.startswith(" ")]
    rows = json.loads(results.read_text())
    assert [r["question_id"] for r in rows] == [int(p.stem) for p in sorted(folder.glob("*.png"))]
    assert [r["answer"] for r in rows] == best  # each image's top answer

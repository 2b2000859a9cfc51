"""Attention-map drawing, and `vqacap visualize` end to end on checkpoints of tiny Shapes runs."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image, ImageDraw

from tests.helpers.configs import TINY_CAPTIONER
from tests.helpers.runs import train_tiny
from vqacap.cli import main as vqacap
from vqacap.draw import (
    PANEL,
    VQA_PANEL,
    caption_figure,
    heat_overlay,
    label_font,
    label_layout,
    top_boxes_text,
    vqa_figure,
)

TINY_VQA = ["model.net.hidden_size=32", "model.net.embedding_dim=16"]
BOXES = torch.tensor([[0.0, 0, 50, 50], [50, 0, 100, 50]])  # the two halves of a 100 x 50 image


def test_heat_overlay_lights_the_attended_boxes_and_dims_the_rest():
    white = Image.new("RGB", (100, 50), (255, 255, 255))
    attention = torch.tensor([0.9, 0.1])
    panel = heat_overlay(white, BOXES, attention, top_k=1)
    assert panel.size == (PANEL, PANEL // 2)  # scaled so the longer side is PANEL
    left, right = panel.getpixel((PANEL // 4, PANEL // 4)), panel.getpixel((3 * PANEL // 4, PANEL // 4))
    assert left == (255, 255, 255) and right == (76, 76, 76)  # outside the top box: 30% of the image
    # With both boxes, the second is lit in proportion to its weight: 0.3 + 0.7 * 0.1 / 0.9 of the image.
    right = heat_overlay(white, BOXES, attention, top_k=2).getpixel((3 * PANEL // 4, PANEL // 4))
    assert right[0] == pytest.approx(255 * (0.3 + 0.7 / 9), abs=1)


def test_caption_figure_has_one_panel_per_word_under_the_caption():
    image = Image.new("RGB", (100, 100), (0, 0, 0))
    words = ["a", "red", "circle", "above", "squares"]
    item = {"image_id": 7, "boxes": BOXES, "words": words, "attention": torch.rand(5, 2).softmax(-1)}
    figure = caption_figure(image, item, top_k=1, columns=4)
    assert figure.width == 4 * (PANEL + 4)  # two rows: four panels, then one
    assert 2 * PANEL < figure.height < 3 * PANEL
    empty = caption_figure(image, {**item, "words": [], "attention": torch.zeros(0, 2)})
    assert empty.width == PANEL  # the caption line alone


def test_vqa_figure_gives_the_question_and_each_answer_a_line_of_its_own():
    """The map was 160 pixels wide with "predicted: yes ground / truth: purple" wrapped across lines: now the panel is
    VQA_PANEL pixels and every line of text fits on one line of the figure."""
    item = {"question": "what color is the large circle on the left?", "answer": "yes", "gt_answer": "purple",
            "boxes": BOXES, "attention": torch.tensor([0.7, 0.3]),
            "top_answers": [("yes", 0.91), ("purple", 0.05), ("no", 0.02)]}  # fmt: skip
    figure = vqa_figure(Image.new("RGB", (100, 100)), item, image_found=False)
    lines = 5  # question, predicted, ground truth, top answers, the blank-canvas note
    line_height = round(label_font(13).size * 1.3)
    assert figure.size == (VQA_PANEL, 6 + lines * line_height + VQA_PANEL)  # no line wrapped
    without_truth = vqa_figure(Image.new("RGB", (200, 100)), {**item, "gt_answer": None})
    assert without_truth.size == (VQA_PANEL, 6 + 3 * line_height + VQA_PANEL // 2)  # the image scaled, 2:1
    assert top_boxes_text(BOXES, item["attention"], 2) == "0.70 [0, 0, 50, 50]; 0.30 [50, 0, 100, 50]"


def test_box_labels_do_not_overlap_one_another():
    """Three boxes sharing a corner put their weight labels on one spot ("0.62 large square" over "0.21 ..."); the
    layout moves each label to where it covers no earlier one, inside the panel, and as large as its text."""
    font = label_font(11)
    texts = [
        "0.62 large square",
        "0.21 small red circle",
        "0.09 large triangle",
        "0.05 blue",
        "0.03 green square",
    ]
    boxes = [[20, 30, 90, 100], [20, 30, 80, 90], [22, 32, 60, 70], [21, 31, 120, 140], [20, 30, 150, 150]]
    placed = label_layout(texts, boxes, (PANEL, PANEL), font)
    draw = ImageDraw.Draw(Image.new("RGB", (PANEL, PANEL)))
    for n, (text, (x0, y0, x1, y1)) in enumerate(zip(texts, placed)):
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        assert x1 - x0 >= right - left and y1 - y0 >= bottom - top, text
        assert x0 >= 0 and y0 >= 0 and x1 <= PANEL and y1 <= PANEL, text
        for other in placed[:n]:
            assert not (x0 < other[2] and other[0] < x1 and y0 < other[3] and other[1] < y1), (text, placed)
    assert placed[0][3] <= boxes[0][1]  # the most attended box keeps its label right above it


def test_the_caption_panels_write_labels_where_the_layout_puts_them():
    """The labels drawn on a word's panel are the layout's boxes: the backing of each label is black there."""
    image = Image.new("RGB", (PANEL, PANEL), (255, 255, 255))
    boxes = torch.tensor([[20.0, 30, 90, 100], [20, 30, 80, 90], [22, 32, 60, 70]])
    panel = heat_overlay(image, boxes, torch.tensor([0.6, 0.3, 0.1]), top_k=3, labels=["a b", "c d", "e f"])
    texts = ["0.60 a b", "0.30 c d", "0.10 e f"]
    for x0, y0, x1, y1 in label_layout(texts, boxes.round().int().tolist(), panel.size, label_font(11)):
        assert panel.getpixel((x1 - 1, y0)) == (0, 0, 0) and panel.getpixel((x0, y1 - 1)) == (0, 0, 0)


def test_cli_draws_captions_of_a_run_folder(make_cfg, tmp_path, capsys):
    run_dir = train_tiny(make_cfg, "experiment=caption_shapes", *TINY_CAPTIONER)
    maps = tmp_path / "maps"
    capsys.readouterr()  # the training run's output
    assert vqacap(["visualize", "--run", str(run_dir), "--image-ids", "61", "70", "--out", str(maps)]) == 0
    assert sorted(p.name for p in maps.iterdir()) == ["61.png", "70.png"]
    with Image.open(maps / "61.png") as figure:
        assert figure.width >= PANEL and figure.height > PANEL
    assert capsys.readouterr().out.splitlines()[0].startswith(f"{maps / '61.png'}\t")

    # A captioning model has no questions; an unknown image is a one-line error.
    assert vqacap(["visualize", "--run", str(run_dir), "--question-ids", "6100", "--out", str(maps)]) == 2
    assert "--question-ids given for a captioning checkpoint" in capsys.readouterr().err
    assert vqacap(["visualize", "--run", str(run_dir), "--image-ids", "1", "--out", str(maps)]) == 2
    assert "no image with id 1" in capsys.readouterr().err


def test_cli_draws_answers_from_a_checkpoint_and_a_data_folder(make_cfg, data_root, tmp_path, capsys):
    run_dir = train_tiny(make_cfg, "experiment=vqa_shapes", *TINY_VQA)
    checkpoint = tmp_path / "model.ckpt"  # outside its run folder: the data folder must be given
    shutil.copy(run_dir / "checkpoints" / "last.ckpt", checkpoint)
    maps = tmp_path / "maps"
    args = ["visualize", "--checkpoint", str(checkpoint), "--out", str(maps)]
    capsys.readouterr()  # the training run's output
    assert vqacap(args) == 2
    assert "give --data-dir" in capsys.readouterr().err

    args += ["--data-dir", str(data_root / "shapes"), "--question-ids", "6100", "6201", "--top-k", "2"]
    assert vqacap(args) == 0
    assert sorted(p.name for p in maps.iterdir()) == ["6100.png", "6201.png"]
    with Image.open(maps / "6100.png") as figure:
        assert figure.width == VQA_PANEL and figure.height > VQA_PANEL
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("ground truth" in line for line in lines)


def test_cli_works_from_any_directory_and_skips_bad_images(
    make_cfg, data_root, tmp_path, capsys, monkeypatch
):
    import json

    run_dir = train_tiny(make_cfg, "experiment=caption_shapes", *TINY_CAPTIONER)
    # The run as `vqacap-train` run from a project folder leaves it: paths relative to that folder, which Hydra records.
    project = tmp_path / "project"
    shutil.copytree(data_root, project / "data")
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    config.paths.root_dir, config.paths.data_dir = ".", "${paths.root_dir}/data"
    OmegaConf.save(config, run_dir / ".hydra" / "config.yaml")
    OmegaConf.save({"hydra": {"runtime": {"cwd": str(project)}}}, run_dir / ".hydra" / "hydra.yaml")
    shapes = project / "data" / "shapes"
    files = {
        i["id"]: shapes / i["file_name"]
        for i in json.loads((shapes / "captions_val.json").read_text())["images"]
    }
    files[61].write_bytes(files[61].read_bytes()[:100])  # truncated
    files[62].write_bytes(b"")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    maps = tmp_path / "maps"
    capsys.readouterr()  # the training run's output
    assert (
        vqacap(["visualize", "--run", str(run_dir), "--image-ids", "61", "62", "63", "--out", str(maps)]) == 0
    )
    assert sorted(p.name for p in maps.iterdir()) == ["61.png", "62.png", "63.png"]
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2
    assert errors[0].startswith(f"vqacap visualize: {files[61]}: unreadable image (OSError: ")
    assert errors[1].startswith(f"vqacap visualize: {files[62]}: unreadable image (UnidentifiedImageError: ")
    assert errors[1].endswith(f"; {maps / '62.png'} has the boxes on a blank canvas")


def test_16_bit_images_are_drawn_scaled(tmp_path):
    from vqacap.draw import load_image

    Image.fromarray(np.full((3, 4), 32896, dtype=np.uint16)).save(tmp_path / "depth.png")
    image, found, problem = load_image(tmp_path / "depth.png", (4, 3))
    assert found and problem is None
    assert image.getextrema() == ((128, 128), (128, 128), (128, 128))  # convert("RGB") alone gives 255: white


def test_a_map_drawn_without_its_image_says_why(tmp_path, monkeypatch):
    """An image that is there but refused (too large) was drawn under "image file not found"."""
    import functools

    from vqacap import draw
    from vqacap.images import open_rgb

    written = []
    real = draw._text_block
    monkeypatch.setattr(draw, "_text_block", lambda lines, *rest: written.append(lines) or real(lines, *rest))
    monkeypatch.setattr(draw, "open_rgb", functools.partial(open_rgb, max_pixels=100))  # a smaller limit
    big = tmp_path / "big.png"
    Image.new("L", (60, 10)).save(big)
    image, found, problem = draw.load_image(big, (60, 10))
    assert not found and problem == f"{big}: 60x10 pixels is more than the 100 an image may have"
    item = {"question": "what is it", "answer": "red", "gt_answer": None, "boxes": BOXES,
            "attention": torch.tensor([0.7, 0.3])}  # fmt: skip
    vqa_figure(image, item, image_found=found, image_problem=problem)
    assert written[-1][-1] == f"(image not used: {problem}; boxes on a blank canvas)"
    words = {"image_id": 7, "boxes": BOXES, "words": ["a"], "attention": torch.ones(1, 2) / 2}
    caption_figure(image, words, image_found=False, image_problem=problem)
    assert written[-1][-1] == f"(image not used: {problem}; boxes on a blank canvas)"
    caption_figure(image, words, image_found=False)
    assert written[-1][-1] == "(image file not found: boxes on a blank canvas)"

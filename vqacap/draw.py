"""Attention maps drawn with PIL: which regions a model looked at, over the image.

For captioning, one panel per generated word shows the image lit by the word's most attended boxes (heat proportional to
the attention weight) under the caption; for VQA, one panel shows the question, the predicted and human answers and the
attention over the boxes. When the image file is absent (real data without an image root), the boxes are drawn on a
blank canvas of the image's size. What to draw comes from the LightningModules' `explain(batch)`. Used by the
`AttentionMaps` callback, `vqacap visualize`, `vqacap caption` / `answer` and the detection-image callback (`label_font`).
See docs/attention.md.

Dims: K regions of an image (real ones only), T words of a caption.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from vqacap.images import ImageError, open_rgb

PANEL = 160  # longer side of a caption word's panel, pixels
# Longer side of the one panel of a VQA map: room for its question and answers on lines of their own.
VQA_PANEL = 320
HIGHLIGHT = (255, 64, 32)  # outline of the most attended box; the others get a fainter colour
OUTLINE = (255, 200, 40)
BLANK = (255, 255, 255)


@dataclass
class AttentionMap:
    item: dict  # one record of `explain(batch)`
    image: Image.Image  # the image, or a blank canvas of its size
    image_found: bool
    figure: Image.Image  # the rendered attention map
    image_problem: str | None = None  # why an image file that is there was not used


# -- drawing --------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def label_font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the small bitmap font
        return ImageFont.load_default()


def load_image(path: Path | None, size: tuple[int, int]) -> tuple[Image.Image, bool, str | None]:
    """(image, found, problem): the RGB image at `path`; else a blank canvas of `size` (width, height), with the reason
    when the file is there but unusable (empty, truncated, too large: `vqacap.images`)."""
    blank = Image.new("RGB", (int(size[0]), int(size[1])), BLANK)
    if path is None or not Path(path).is_file():
        return blank, False, None
    try:
        return open_rgb(path), True, None
    except ImageError as err:
        return blank, False, str(err)


def top_regions(attention: torch.Tensor, top_k: int) -> list[tuple[int, float]]:
    """(region index, weight) of the `top_k` largest weights of attention (K,), largest first."""
    weights, index = attention.float().topk(min(top_k, attention.numel()))
    return list(zip(index.tolist(), weights.tolist()))


def top_boxes_text(boxes: torch.Tensor, attention: torch.Tensor, top_k: int) -> str:
    """'0.62 [12, 30, 40, 58]; 0.21 [...]': the top boxes (K, 4) by attention (K,), for tables."""
    return "; ".join(
        f"{w:.2f} [{', '.join(str(round(c)) for c in boxes[i].tolist())}]"
        for i, w in top_regions(attention, top_k)
    )


def heat_overlay(
    image: Image.Image,
    boxes: torch.Tensor,
    attention: torch.Tensor,
    top_k: int = 3,
    size: int = PANEL,
    labels: list[str] | None = None,
) -> Image.Image:
    """The image scaled to `size` and lit by its `top_k` most attended boxes (K, 4), dimmed elsewhere.

    Each pixel's heat is the summed weight of the top boxes covering it, relative to the hottest pixel; the boxes are
    outlined, the most attended one in red, with their weights (and `labels[k]`, the detector's name of box k, if given).
    """
    panel, scale = _scale(image, size)
    return _light(panel, _dim(panel), boxes * scale, attention, top_k, labels)


def _scale(image: Image.Image, size: int) -> tuple[Image.Image, float]:
    scale = size / max(image.size)
    shape = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(shape, Image.BILINEAR), scale


def _dim(panel: Image.Image) -> Image.Image:
    return panel.point(lambda v: int(0.3 * v))  # what no attention leaves of the image


def _light(
    panel: Image.Image,
    dim: Image.Image,
    boxes: torch.Tensor,
    attention: torch.Tensor,
    top_k: int,
    labels: list[str] | None = None,
) -> Image.Image:
    """`panel` where heat is 1, `dim` where it is 0, in proportion between; boxes (K, 4) in panel pixels."""
    top = [(i, w, [round(c) for c in boxes[i].tolist()]) for i, w in top_regions(attention, top_k)]
    heat = np.zeros((panel.height, panel.width), dtype=np.float32)
    for _, w, (x1, y1, x2, y2) in top:
        heat[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)] += w
    heat *= 255 / max(float(heat.max()), 1e-12)
    lit = Image.composite(panel, dim, Image.fromarray(heat.round().astype(np.uint8), mode="L"))
    texts = [f"{w:.2f} {labels[i]}" if labels else f"{w:.2f}" for i, w, _ in top]
    colours = [HIGHLIGHT if rank == 0 else OUTLINE for rank in range(len(top))]
    _outline_and_label(lit, [box for _, _, box in top], texts, colours)
    return lit


def label_size(size: tuple[int, int]) -> int:
    """The font size of box labels on an image of `size` (width, height): 11 pixels on the small panels of the maps,
    growing with larger images (13 at the demo's 480)."""
    return max(11, round(max(size) / 36))


def label_layout(
    texts: list[str], boxes: list[list[int]], size: tuple[int, int], font: ImageFont.ImageFont
) -> list[tuple[int, int, int, int]]:
    """Where each box's label goes, (x0, y0, x1, y1) in pixels of an image of `size` (width, height): above the box's
    top-left corner if there is room, else just inside it, else below the box, else the nearest free row; no label
    covers an earlier one (the first, the most attended, gets the best place) unless the image has no room left."""
    width, height = size
    placed: list[tuple[int, int, int, int]] = []
    draw = ImageDraw.Draw(Image.new("L", (1, 1)))
    for text, (x1, y1, _, y2) in zip(texts, boxes):
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        w, h = right - left + 2, bottom - top + 2  # the dark backing reaches one pixel around the text
        x = min(max(x1, 0), max(width - w, 0))
        first = next(iter(_label_places(x, y1, y2, w, h, width, height)), (x, max(y1, 0)))
        free = (
            c
            for c in _label_places(x, y1, y2, w, h, width, height)
            if not any(_overlap((*c, c[0] + w, c[1] + h), p) for p in placed)
        )
        x, y = next(free, first)
        placed.append((x, y, x + w, y + h))
    return placed


def _label_places(x: int, y1: int, y2: int, w: int, h: int, width: int, height: int):
    """Top-left corners for a w x h label of the box whose left edge is x, top y1 and bottom y2, best first: above,
    inside the top, below, then the rows nearest the box at its left edge, then anywhere on a coarse grid."""
    last = height - h
    rows = sorted(range(0, max(last, 0) + 1, 2), key=lambda y: abs(y - y1))
    for y in [y1 - h - 1, y1 + 1, y2 + 2, *rows]:
        if 0 <= y <= last:
            yield x, y
    for y in sorted(range(0, max(last, 0) + 1, h), key=lambda y: abs(y - y1)):
        for cx in range(0, max(width - w, 0) + 1, max(w // 2, 1)):
            yield cx, y


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _outline_and_label(
    image: Image.Image, boxes: list[list[int]], texts: list[str], colours: list[tuple]
) -> None:
    """Outline each box (panel pixels) in its colour, the first one thicker, and write its label where `label_layout`
    places it, on a dark backing."""
    draw, font = ImageDraw.Draw(image), label_font(label_size(image.size))
    for rank in reversed(range(len(boxes))):  # the first box on top
        box, width = boxes[rank], 2 if rank == 0 else 1
        # A dark rim keeps the outline and its label readable on objects of the outline's own colour.
        draw.rectangle([box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1], outline=(0, 0, 0), width=width + 2)
        draw.rectangle(box, outline=colours[rank], width=width)
    for text, colour, (x0, y0, x1, y1) in zip(texts, colours, label_layout(texts, boxes, image.size, font)):
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=(0, 0, 0))
        left, top, _, _ = draw.textbbox((0, 0), text, font=font)
        draw.text((x0 + 1 - left, y0 + 1 - top), text, fill=colour, font=font)


def boxes_figure(image: Image.Image, boxes: torch.Tensor, labels: list[str], size: int) -> Image.Image:
    """The image scaled to `size` with every box (K, 4) outlined and named by `labels` (the detector's "red circle");
    grid cells, which have no names, are outlined only."""
    panel, scale = _scale(image, size)
    scaled = [[round(c) for c in box] for box in (boxes * scale).tolist()]
    _outline_and_label(panel, scaled, list(labels) if labels else [], [OUTLINE] * len(scaled))
    return panel


def _wrap(text: str, width: int, font: ImageFont.ImageFont) -> list[str]:
    lines: list[str] = []
    for word in text.split():
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines or [""]


def _text_block(lines: list[str], width: int, font: ImageFont.ImageFont) -> Image.Image:
    wrapped = [w for line in lines for w in _wrap(line, width - 8, font)]
    line_height = round(font.size * 1.3) if hasattr(font, "size") else 12
    block = Image.new("RGB", (width, 6 + line_height * len(wrapped)), (255, 255, 255))
    draw = ImageDraw.Draw(block)
    for n, line in enumerate(wrapped):
        draw.text((4, 3 + n * line_height), line, fill=(0, 0, 0), font=font)
    return block


def _stack(parts: list[Image.Image]) -> Image.Image:
    out = Image.new("RGB", (max(p.width for p in parts), sum(p.height for p in parts)), (255, 255, 255))
    y = 0
    for p in parts:
        out.paste(p, (0, y))
        y += p.height
    return out


def _blank_canvas_note(image_found: bool, image_problem: str | None) -> list[str]:
    """The header line of a map drawn without its image: why (a file that is there but unusable says so)."""
    if image_found:
        return []
    if image_problem:
        return [f"(image not used: {image_problem}; boxes on a blank canvas)"]
    return ["(image file not found: boxes on a blank canvas)"]


def caption_figure(
    image: Image.Image,
    item: dict,
    top_k: int = 3,
    columns: int = 4,
    image_found: bool = True,
    image_problem: str | None = None,
) -> Image.Image:
    """The caption above a grid of panels, one per word: the word under the image lit by its attention (T, K)."""
    font = label_font(13)
    panel, scale = _scale(image, PANEL)
    dim, boxes = _dim(panel), item["boxes"] * scale
    panels = [
        _stack(
            [
                _light(panel, dim, boxes, item["attention"][t], top_k, item.get("labels")),
                _text_block([word], PANEL, font),
            ]
        )
        for t, word in enumerate(item["words"])
    ]
    columns = max(1, min(columns, len(panels)))
    rows = [panels[i : i + columns] for i in range(0, len(panels), columns)]
    grid = []
    for row in rows:
        strip = Image.new("RGB", (columns * (PANEL + 4), max(p.height for p in row)), (255, 255, 255))
        for n, p in enumerate(row):
            strip.paste(p, (n * (PANEL + 4), 0))
        grid.append(strip)
    width = max([g.width for g in grid] + [PANEL])
    header = [f"image {item['image_id']}: {' '.join(item['words']) or '(empty caption)'}"]
    header += _blank_canvas_note(image_found, image_problem)
    return _stack([_text_block(header, width, font), *grid])


def vqa_figure(
    image: Image.Image, item: dict, top_k: int = 3, image_found: bool = True, image_problem: str | None = None
) -> Image.Image:
    """The question, the predicted and human answers and the top answers, each on its own line, above the image lit
    by the attention (K,), VQA_PANEL pixels on its longer side."""
    lines = [f"Q: {item['question']}", f"predicted: {item['answer']}"]
    if item.get("gt_answer"):
        lines.append(f"ground truth: {item['gt_answer']}")
    if item.get("top_answers"):
        lines.append(
            "top answers: " + ", ".join(f"{answer} {score:.2f}" for answer, score in item["top_answers"])
        )
    lines += _blank_canvas_note(image_found, image_problem)
    panel = heat_overlay(image, item["boxes"], item["attention"], top_k, VQA_PANEL, item.get("labels"))
    return _stack([_text_block(lines, max(panel.width, VQA_PANEL), label_font(13)), panel])


def text_of(item: dict) -> str:
    """One line naming what a map shows: the caption, or the question with its answers."""
    if "words" in item:
        return " ".join(item["words"])
    return f"{item['question']} -> {item['answer']} (ground truth: {item['gt_answer'] or '-'})"


def attention_maps(
    module, datamodule, split: str, ids: list[int], image_root: str | Path | None = None, top_k: int = 3
) -> list[AttentionMap]:
    """Attention maps of these examples (image ids for captioning, question ids for VQA) of a split."""
    maps = []
    for item in module.explain(datamodule.examples(split, ids)):
        path = datamodule.image_path(split, item["image_id"], image_root)
        image, found, problem = load_image(path, item["image_size"])
        if "words" in item:
            figure = caption_figure(image, item, top_k, image_found=found, image_problem=problem)
        else:
            figure = vqa_figure(image, item, top_k, image_found=found, image_problem=problem)
        maps.append(AttentionMap(item, image, found, figure, problem))
    return maps


def save_maps(maps: list[AttentionMap], folder: str | Path) -> list[Path]:
    """Write each map as `<folder>/<id>.png`; returns the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for m in maps:
        path = folder / f"{m.item['id']}.png"
        m.figure.save(path, compress_level=1)  # fast: maps are drawn every validation epoch
        paths.append(path)
    return paths


# -- the `vqacap visualize` command ----------------------------------------------------------------------------------

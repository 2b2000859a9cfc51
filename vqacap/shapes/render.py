"""Drawing one Shapes object: its outline filled in one colour, from its box."""

from __future__ import annotations

import math

from PIL import ImageDraw


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: list[float], fill) -> None:
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

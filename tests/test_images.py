"""vqacap.images.open_rgb, the one reader of user images: bad files are one-line errors, sizes are capped before
decoding, 16-bit images are scaled to 8 bits."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vqacap.images import MAX_PIXELS, ImageError, open_rgb


def test_a_good_image_comes_back_as_8_bit_rgb(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, (6, 9, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    image = open_rgb(tmp_path / "a.png")
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), pixels)


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)  # 0, 1, 128, 255 in 8 bits
    Image.fromarray(values).save(tmp_path / "depth.png")
    with Image.open(tmp_path / "depth.png") as raw:
        assert raw.mode == "I;16"  # what Pillow makes of a 16-bit greyscale PNG
        assert np.asarray(raw.convert("RGB"))[0, :, 0].tolist() == [0, 255, 255, 255]  # the clipping avoided
    assert np.asarray(open_rgb(tmp_path / "depth.png"))[0, :, 0].tolist() == [0, 1, 128, 255]


def test_empty_truncated_and_oversized_files_are_one_line_errors(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    # 1-bit: 60 megapixels in a few kilobytes of PNG, well over the cap, refused before decoding.
    Image.new("1", (10_000, 6_000)).save(tmp_path / "huge.png")
    expected = {
        "truncated.png": "unreadable image (OSError: image file is truncated",
        "empty.png": "unreadable image (UnidentifiedImageError: cannot identify image file",
        "huge.png": f"10000x6000 pixels is more than the {MAX_PIXELS:,} an image may have",
    }
    for name, message in expected.items():
        with pytest.raises(ImageError) as err:
            open_rgb(tmp_path / name)
        assert str(err.value).startswith(f"{tmp_path / name}: {message}") and "\n" not in str(err.value)

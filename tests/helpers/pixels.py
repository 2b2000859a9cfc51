"""From pixels to words in tiny real runs: a detector trained on rendered Shapes, its regions extracted, a captioner and
a VQA model trained on them; what the pixel and demo tests start from."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers.configs import TINY_CAPTIONER, compose_train, tiny_detector

PIXEL_DETECTOR = tiny_detector(pool_size=4, rpn_post_nms_top_n_test=30)
PIXEL_SIZES = "data.generator.sizes={train:24,val:6,test:6}"
PIXEL_STEPS = ["trainer.max_epochs=1", "+trainer.limit_train_batches=3", "logger=csv"]
TINY_VQA = ["model.net.hidden_size=32", "model.net.embedding_dim=16"]


def pixel_chain(root: Path, captioner: list[str] = ()) -> dict:
    """From pixels to words in tiny real runs under `root` (about 20 s on 2 cores): Shapes rendered, a detector
    trained 3 steps, its regions extracted, a captioner (with the overrides `captioner`) and a VQA model trained 3
    steps each on them. Returns the paths: root, shapes (the data folder), store, detector, captioner, vqa (the tested
    checkpoints)."""
    from vqacap.cli import main as vqacap
    from vqacap.train import run

    data_root = root / "data"
    detector_cfg = compose_train(
        ["experiment=detector_shapes", PIXEL_SIZES, *PIXEL_DETECTOR, *PIXEL_STEPS, "data.batch_size=4", "data.eval_batch_size=6",
         "callbacks.detection_images=null"],
        root / "detector", data_root,
    )  # fmt: skip
    run(detector_cfg)
    detector = json.loads((root / "detector" / "test_metrics.json").read_text())["checkpoint"]
    shapes = data_root / "shapes"
    store = root / "detected.h5"
    images = [str(shapes / "images" / split) for split in ("train", "val", "test")]
    assert vqacap(["extract", "--detector", detector, "--images", *images, "--out", str(store),
                   "--dtype", "float32", "--no-progress"]) == 0  # fmt: skip
    common = [
        PIXEL_SIZES,
        f"data.store={store}",
        *PIXEL_STEPS,
        "data.batch_size=4",
        "callbacks.attention_maps=null",
    ]
    run(
        compose_train(
            ["experiment=caption_shapes_detected", *common, *TINY_CAPTIONER, *captioner],
            root / "captioner",
            data_root,
        )
    )
    run(compose_train(["experiment=vqa_shapes_detected", *common, *TINY_VQA], root / "vqa", data_root))
    return {
        "root": root,
        "shapes": shapes,
        "store": store,
        "detector": detector,
        "captioner": json.loads((root / "captioner" / "test_metrics.json").read_text())["checkpoint"],
        "vqa": json.loads((root / "vqa" / "test_metrics.json").read_text())["checkpoint"],
    }

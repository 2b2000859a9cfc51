"""Feature extraction speed, stage by stage and end to end, for the Shapes recipe and ResNet-101 at 600 x 1000.

Rows per size (shapes: conf/experiment/detector_shapes.yaml on 128 x 128 images; r101: detector_vg_r101.yaml, 1600
classes and 400 attributes, on 600 x 1000 images; random weights, as the speed does not depend on them):

    decode        JPEG file -> (3, H, W) uint8 tensor (what a DataLoader worker does per image)
    resize        the detector's transform: resize to min_size/max_size, normalise, pad the batch
    trunk         conv1 .. res4
    rpn           anchors, objectness, box deltas, NMS -> 300 proposals
    box head      RoIAlign, res5, pool5, class and box predictors, attribute head (and the box decoding around them)
    region choice generate_tsv's choice for the batch on the device, as extraction runs it
                  (`vqacap.models.regions.bottom_up_regions`: NMS over all classes, threshold, 10-100), and the one
                  copy of the batch's regions to the host (`vqacap.extraction.module.HostCopy`)
    write         `RegionStoreWriter.add` of every image of the batch, then one flush (float16 store)
    end to end    `vqacap.extraction.module.extract_folders` over a folder of the images, one process: Trainer.predict,
                  DataLoader workers, the store committed; `images/s` is what a user gets, start-up included

`ms/image` is the best of --repeats batches over the batch size (end to end: one run); `share %` its part of the sum of
the stages. `% peak` (network rows) is the GFLOP/s of the convolutions and matrix products FlopCounterMode counts over
the matmul peak of the machine (`vqacap.bench.peak`), for trunk to box head together ("network").
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from vqacap.bench import peak
from vqacap.bench.detector import RECIPES, SHAPES_IMAGE_SIZE, VG_ATTRIBUTES, VG_CLASSES, recipe
from vqacap.bench.models import count_flops
from vqacap.data.pixels import RegionChoice
from vqacap.data.store import RegionStoreWriter
from vqacap.extraction.module import HostCopy, extract_folders
from vqacap.images import open_rgb
from vqacap.models.detector import BottomUpDetector
from vqacap.models.regions import DETECTOR_FIELDS, bottom_up_regions
from vqacap.shapes import COLOURS, SHAPES, SIZES

STAGES = ("decode", "resize", "trunk", "rpn", "box head", "region choice", "write")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", nargs="+", default=["shapes", "r101"], choices=["shapes", "r101"])
    parser.add_argument("--shapes-images", type=int, default=16, help="Shapes images per run")
    parser.add_argument("--shapes-batch", type=int, default=8, help="Shapes images per forward pass")
    parser.add_argument("--r101-images", type=int, default=2, help="600 x 1000 images per run")
    parser.add_argument("--r101-batch", type=int, default=1, help="600 x 1000 images per forward pass")
    parser.add_argument("--r101-size", type=int, nargs=2, default=[600, 1000], metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=2, help="timed batches per stage (after one untimed)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the end-to-end run")
    parser.add_argument(
        "--precision", default="32-true", help="end-to-end run: 32-true, tf32, bf16-mixed, 16-mixed"
    )
    parser.add_argument("--peak-sizes", type=int, nargs="+", default=[2048, 4096])


class _Given:
    """A detector whose `regions` returns outputs computed before: `bottom_up_regions` then times the choice alone."""

    def __init__(self, outputs: list) -> None:
        self.outputs = outputs

    def regions(self, images: list[torch.Tensor]) -> list:
        return self.outputs


def _stage_hooks(model: BottomUpDetector, dev: torch.device, spent: dict[str, float]) -> list:
    """Forward hooks adding each stage's seconds to `spent` (synchronising a GPU at both ends)."""
    heads = model.roi_heads
    stages = {
        "resize": [model.transform],
        "trunk": [model.backbone],
        "rpn": [model.rpn],
        "box head": [heads.box_roi_pool, heads.box_head, heads.box_predictor, heads.attribute_head],
    }
    handles = []
    for name, modules in stages.items():
        for module in modules:

            def start(mod, args, _name=name) -> None:
                peak.synchronize(dev)
                mod._bench_start = time.perf_counter()

            def stop(mod, args, output, _name=name) -> None:
                peak.synchronize(dev)
                spent[_name] += time.perf_counter() - mod._bench_start

            handles += [module.register_forward_pre_hook(start), module.register_forward_hook(stop)]
    return handles


def _best(call: Callable[[], dict[str, float]], repeats: int) -> dict[str, float]:
    """Per stage, the least seconds over `repeats` calls (after one untimed)."""
    call()
    runs = [call() for _ in range(repeats)]
    return {k: min(r[k] for r in runs) for k in runs[0]}


def size_rows(
    name: str,
    model: BottomUpDetector,
    files: list[Path],
    batch: int,
    args: argparse.Namespace,
    dev,
    top: float,
) -> list[dict]:
    model = model.to(dev).eval()
    images = [pil_to_tensor(open_rgb(f)) for f in files[:batch]]
    floats = [im.to(dev).float().div(255) for im in images]

    def one_batch() -> dict[str, float]:
        spent: dict[str, float] = defaultdict(float)
        start = time.perf_counter()
        for f in files[:batch]:
            pil_to_tensor(open_rgb(f))
        spent["decode"] = time.perf_counter() - start
        handles = _stage_hooks(model, dev, spent)
        try:
            with torch.no_grad():
                peak.synchronize(dev)
                start = time.perf_counter()
                outputs = model.regions(floats)
                peak.synchronize(dev)
                network = time.perf_counter() - start
        finally:
            for handle in handles:
                handle.remove()
        spent["box head"] += network - sum(spent[s] for s in ("resize", "trunk", "rpn", "box head"))
        start = time.perf_counter()
        found = HostCopy(bottom_up_regions(_Given(outputs), floats)).wait().unpadded()
        found = [(f.numpy(), b.numpy(), {k: v.numpy() for k, v in x.items()}) for f, b, x in found]
        spent["region choice"] = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            with RegionStoreWriter(
                Path(folder) / "s.h5", model.feature_dim, region_fields=DETECTOR_FIELDS
            ) as writer:
                for n, (features, boxes, fields) in enumerate(found):
                    writer.add(n, features, boxes, images[n].shape[-1], images[n].shape[-2], fields)
                writer.flush()
                spent["write"] = time.perf_counter() - start
        spent["network"] = network - spent["resize"]
        return dict(spent)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-deterministic.*")
        best = _best(one_batch, args.repeats)
        with torch.no_grad():
            flops = count_flops(lambda: model.regions(floats))
    total = sum(best[s] for s in STAGES)
    rows = [
        {
            "model": name,
            "stage": s,
            "batch": batch,
            "ms/image": 1000 * best[s] / batch,
            "share %": 100 * best[s] / total,
        }
        for s in STAGES
    ]
    network = best["network"]
    rows.append({
        "model": name, "stage": "network", "batch": batch, "ms/image": 1000 * network / batch,
        "share %": 100 * network / total, "GFLOP/image": flops / batch / 1e9,
        "% peak": 100 * flops / network / 1e9 / top,
    })  # fmt: skip
    rows.append({
        "model": name, "stage": "stages", "batch": batch, "ms/image": 1000 * total / batch, "share %": 100.0,
        "images/s": batch / total,
    })  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        result = extract_folders(
            files[0].parent, model, Path(folder) / "store.h5", RegionChoice(), batch_size=batch,
            workers=args.workers, accelerator="gpu" if dev.type == "cuda" else "cpu", precision=args.precision,
            progress=False,
        )  # fmt: skip
        seconds = time.perf_counter() - start
    assert result.extracted == len(files), result.problems
    rows.append({
        "model": name, "stage": "end to end", "batch": batch, "ms/image": 1000 * seconds / len(files),
        "images/s": len(files) / seconds, "images": len(files), "precision": args.precision,
        "threads": torch.get_num_threads(), "load_avg_1min": round(os.getloadavg()[0], 1),
    })  # fmt: skip
    return rows


def _images(folder: Path, count: int, height: int, width: int) -> list[Path]:
    """Random-content JPEG files named by id (a photograph's size on disk, roughly)."""
    rng = np.random.default_rng(0)
    files = []
    for n in range(count):
        pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        path = folder / f"{n + 1:06d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        files.append(path)
    return files


def run(args: argparse.Namespace) -> list[dict]:
    dev = peak.device()
    top = peak.measure(args.peak_sizes, 5)["gflops"]
    print(
        f"{dev.type} matmul peak float32: {top:.1f} GFLOP/s ({torch.get_num_threads()} threads)", flush=True
    )
    rows = []
    for name in args.sizes:
        options, _ = recipe(RECIPES[name])
        if name == "shapes":
            classes, attributes = ["__background__", *SHAPES], ["__no_attribute__", *COLOURS, *SIZES]
            count, batch, (h, w) = (
                args.shapes_images,
                args.shapes_batch,
                (SHAPES_IMAGE_SIZE, SHAPES_IMAGE_SIZE),
            )
        else:
            classes = ["__background__", *(f"class{i}" for i in range(1, VG_CLASSES + 1))]
            attributes = ["__no_attribute__", *(f"attribute{i}" for i in range(1, VG_ATTRIBUTES + 1))]
            count, batch, (h, w) = args.r101_images, args.r101_batch, tuple(args.r101_size)
        torch.manual_seed(0)
        model = BottomUpDetector(classes, attributes, options)
        with tempfile.TemporaryDirectory() as folder:
            files = _images(Path(folder), count, h, w)
            found = size_rows(name, model, files, batch, args, dev, top)
        for row in found:
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        rows += found
    return rows

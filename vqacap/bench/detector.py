"""Bottom-up detector speed: training step and feature extraction, at the Shapes size and at 600 x 1000 with ResNet-101.

One row per (size, path), on the machine at hand (fp32):

    shapes  train    B images: the detector and optimiser of conf/experiment/detector_shapes.yaml on 128 x 128 images
                     (Shapes' size; the recipe upsamples them): RPN, RoI heads and attribute losses summed, backward,
                     optimiser step
    shapes  extract  B images in one forward pass: proposals, pool5 features, class and attribute scores, then
                     generate_tsv's region choice (`vqacap.models.regions.bottom_up_batch`)
    r101    train    the paper's model and solver (conf/experiment/detector_vg_r101.yaml: ResNet-101 C4, res5 head at
                     14 x 14 over 64 sampled RoIs, 1600 classes, 400 attributes, SGD) on 600 x 1000 images, random
                     initialisation instead of ImageNet weights
    r101    extract  the same model, 300 proposals per 600 x 1000 image
    published extract  the published model as Caffe computes it (vqacap.models.caffe_detector with the shipped
                     ResNet-101 test.prototxt: BGR blob and resize, proposal layer, ROIPooling, 1601 classes, 401
                     attributes) on one 600 x 1000 image at a time, with generate_tsv's region choice

Inputs are random images with random ground-truth objects (the training path needs targets); the speed of a Faster
R-CNN does not depend on what the pixels show, except through the number of proposals, which the RPN caps.

FLOPs are those FlopCounterMode counts on one call (convolutions, matrix products; RoIAlign, NMS, the optimiser and
elementwise work count none). `% peak` is GFLOP/s over the machine's matmul peak (`vqacap.bench.peak`, measured just
before and after each path; the higher counts), as `vqacap.bench.models` reports it. Targets (fp32 on the CPU) are the
project's for the 2-core CPU at 600 x 1000: extraction >= 50%, training >= 40%. `--profile` prints where the time of
the Shapes paths goes (torch.profiler, operators by self time).
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vqacap.bench import peak
from vqacap.bench.models import Path, judge, measure
from vqacap.configs import CONFIG_DIR
from vqacap.models.detector import BottomUpDetector, DetectorOptions
from vqacap.models.regions import bottom_up_batch
from vqacap.shapes import COLOURS, SHAPES, SIZES

# % of the matmul peak asked for on the project's 2-core CPU machine, fp32: (model, path).
TARGETS = {("r101", "train"): 40, ("r101", "extract"): 50, ("published", "extract"): 50}
VG_CLASSES, VG_ATTRIBUTES = 1600, 400
RECIPES = {"shapes": "detector_shapes", "r101": "detector_vg_r101"}
SHAPES_IMAGE_SIZE = 128  # the Shapes generator's default


def recipe(experiment: str) -> tuple[DetectorOptions, Callable]:
    """The detector options (without ImageNet weights) and the optimiser (a partial taking the parameters) of
    conf/experiment/<experiment>.yaml."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}"])
    GlobalHydra.instance().clear()
    cfg.model.detector.pretrained = None  # random initialisation: the speed does not depend on the weights
    options = DetectorOptions(**OmegaConf.to_container(cfg.model.detector, resolve=True))
    return options, instantiate(cfg.model.optimizer)


def random_targets(
    batch: int, height: int, width: int, objects: int, classes: int, attributes: int, gen: torch.Generator
) -> list[dict]:
    """Random ground truth: boxes of 1/8 to 1/2 of the image side, classes, up to 3 attributes padded with -1."""
    targets = []
    for _ in range(batch):
        size = torch.rand(objects, 2, generator=gen) * 3 / 8 + 1 / 8
        corner = torch.rand(objects, 2, generator=gen) * (1 - size)
        scale = torch.tensor([width, height], dtype=torch.float32)
        boxes = torch.cat([corner * scale, (corner + size) * scale], 1)
        attrs = torch.randint(1, attributes, (objects, 3), generator=gen)
        attrs[torch.rand(objects, 3, generator=gen) < 0.5] = -1
        targets.append(
            {
                "boxes": boxes,
                "labels": torch.randint(1, classes, (objects,), generator=gen),
                "attributes": attrs,
            }
        )
    return targets


def detector_paths(
    name: str,
    options: DetectorOptions,
    optimizer: Callable,
    classes: list[str],
    attributes: list[str],
    image_size: tuple[int, int],
    objects: int,
    train_batch: int,
    extract_batch: int,
    dev: torch.device,
) -> list[Path]:
    """The training step and the extraction of one detector configuration, on random images of `image_size` (h, w)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = BottomUpDetector(classes, attributes, options).to(dev)
    h, w = image_size
    images = [torch.rand(3, h, w, generator=gen).to(dev) for _ in range(max(train_batch, extract_batch))]
    targets = [
        {k: v.to(dev) for k, v in t.items()}
        for t in random_targets(train_batch, h, w, objects, len(classes), len(attributes), gen)
    ]
    optimizer = optimizer([p for p in model.parameters() if p.requires_grad])

    def train() -> torch.Tensor:
        model.train()
        losses = model(images[:train_batch], targets)
        loss = sum(losses.values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def extract() -> list:
        model.eval()
        return bottom_up_batch(model, images[:extract_batch])

    return [
        Path(name, "train", train_batch, "image", train, flops=-1),
        Path(name, "extract", extract_batch, "image", extract, flops=-1),
    ]


def published_path(
    image_size: tuple[int, int], batch: int, dev: torch.device, prototxt: str | None = None
) -> Path:
    """Extraction with the Caffe-exact published detector (random weights, the shape of the shipped ResNet-101
    prototxt or of `prototxt`)."""
    from vqacap.models.caffe_detector import CaffeBottomUpDetector
    from vqacap.published.detector import genome_names, published_prototxt, spec_from_prototxt

    torch.manual_seed(0)
    spec = spec_from_prototxt(prototxt or published_prototxt())
    model = CaffeBottomUpDetector(spec, *genome_names(spec.num_classes, spec.num_attributes))
    for name, buffer in model.named_buffers():
        if name.endswith(".weight"):  # frozen affine scales below 1 keep 100 random layers finite
            buffer.fill_(0.3)
    model = model.to(dev).eval()
    gen = torch.Generator().manual_seed(0)
    h, w = image_size
    images = [(torch.randint(0, 256, (3, h, w), generator=gen).float() / 255).to(dev) for _ in range(batch)]
    return Path("published", "extract", batch, "image", lambda: bottom_up_batch(model, images), flops=-1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per path (after one untimed)")
    parser.add_argument(
        "--sizes", nargs="+", default=["shapes", "r101", "published"], choices=["shapes", "r101", "published"]
    )
    parser.add_argument("--shapes-train-batch", type=int, default=8, help="images per Shapes training step")
    parser.add_argument(
        "--shapes-extract-batch", type=int, default=16, help="images per Shapes extraction pass"
    )
    parser.add_argument(
        "--r101-train-batch", type=int, default=1, help="images per R101 step (the paper: 1 per GPU)"
    )
    parser.add_argument("--r101-extract-batch", type=int, default=2, help="images per R101 extraction pass")
    parser.add_argument("--r101-size", type=int, nargs=2, default=[600, 1000], metavar=("H", "W"))
    parser.add_argument("--peak-sizes", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument(
        "--published-prototxt",
        metavar="FILE",
        help="published row: another network than the shipped ResNet-101",
    )
    parser.add_argument(
        "--profile", action="store_true", help="print where the time of the Shapes paths goes"
    )


def paths(args: argparse.Namespace, dev: torch.device) -> list[Path]:
    chosen = []
    if "shapes" in args.sizes:
        classes = ["__background__", *SHAPES]
        attributes = ["__no_attribute__", *COLOURS, *SIZES]
        size = (SHAPES_IMAGE_SIZE, SHAPES_IMAGE_SIZE)
        chosen += detector_paths(
            "shapes", *recipe(RECIPES["shapes"]), classes, attributes, size, 5,
            args.shapes_train_batch, args.shapes_extract_batch, dev,
        )  # fmt: skip
    if "r101" in args.sizes:
        classes = ["__background__", *(f"class{i}" for i in range(1, VG_CLASSES + 1))]
        attributes = ["__no_attribute__", *(f"attribute{i}" for i in range(1, VG_ATTRIBUTES + 1))]
        chosen += detector_paths(
            "r101", *recipe(RECIPES["r101"]), classes, attributes, tuple(args.r101_size), 20,
            args.r101_train_batch, args.r101_extract_batch, dev,
        )  # fmt: skip
    if "published" in args.sizes:
        chosen.append(published_path(tuple(args.r101_size), 1, dev, args.published_prototxt))
    return chosen


def profile(call: Callable, label: str) -> None:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        call()
    print(f"-- profile: {label}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def run(args: argparse.Namespace) -> list[dict]:
    dev = peak.device()
    rows = []
    top = peak.measure(args.peak_sizes, 5)
    print(
        f"{dev.type} matmul peak float32: {top['gflops']:.1f} GFLOP/s (n={top['n']}, {top['threads']} threads)",
        flush=True,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*non-deterministic.*")
        for path in paths(args, dev):
            before = peak.measure([top["n"]], 5)["gflops"]
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            row = measure(path, args.repeats, before, torch.float32, dev)
            if dev.type == "cuda":  # all models of the run are resident: run one size for its own figure
                row["peak GiB"] = torch.cuda.max_memory_allocated(dev) / 2**30
            local = max(before, peak.measure([top["n"]], 5)["gflops"])
            del row["flops ok"]  # no analytic count here: the counter's is the figure
            row["target %"] = TARGETS.get((path.model, path.path)) if dev.type == "cpu" else None
            judge(row, local)
            rows.append(row)
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
            if args.profile and path.model == "shapes":
                profile(path.call, f"{path.model} {path.path}")
    return rows

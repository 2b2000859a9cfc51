"""`vqacap prepare STEP`: turn public downloads into the files training reads. Each step is idempotent.

vqacap prepare features       bottom-up features (TSV, bottom-up-attention-vqa HDF5, npz dirs) -> region store
vqacap prepare coco-captions  Karpathy split JSON -> COCO-format caption files per split + caption vocabulary
vqacap prepare vqa2           VQA v2 questions/annotations -> per-split files + answer and question vocabularies
"""

from __future__ import annotations

import argparse
import importlib

# Step -> (module providing `add_arguments(parser)` and `run(args) -> int`, help line).
STEPS = {
    "features": (
        "vqacap.prepare.features",
        "convert bottom-up region features into the region-feature store",
    ),
    "coco-captions": (
        "vqacap.prepare.captions",
        "Karpathy splits -> COCO-format caption files and vocabulary",
    ),
    "vqa2": ("vqacap.prepare.vqa2", "VQA v2 questions/annotations -> per-split files and vocabularies"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    for name, (module_name, help_text) in STEPS.items():
        step = sub.add_parser(name, help=help_text, description=help_text)
        step.set_defaults(step_module=module_name)
        importlib.import_module(module_name).add_arguments(step)


def run(args: argparse.Namespace) -> int:
    return importlib.import_module(args.step_module).run(args)

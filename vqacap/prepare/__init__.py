"""`vqacap prepare STEP`: turn public downloads into the files training reads. Each step is idempotent.

vqacap prepare features       bottom-up features (TSV, bottom-up-attention-vqa HDF5, npz dirs) -> region store
vqacap prepare coco-captions  Karpathy split JSON -> COCO-format caption files per split + caption vocabulary
vqacap prepare vqa2           VQA v2 questions/annotations -> per-split files + answer and question vocabularies
vqacap prepare questions      question/answer records of any VQA dataset, split by split -> the same files
vqacap prepare captions       caption records of any dataset, split by split -> COCO-format caption files + vocabulary
vqacap prepare vg             Visual Genome objects/attributes -> per-split detection annotations (bottom-up cleaning)
vqacap prepare merge          shard stores of a distributed extraction -> one region store
"""

from __future__ import annotations

import argparse

from vqacap.dispatch import add_dispatch, run_dispatch

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
    "questions": (
        "vqacap.prepare.questions",
        "question/answer records of any VQA dataset, split by split -> VQA files and vocabularies",
    ),
    "captions": (
        "vqacap.prepare.generic_captions",
        "caption records of any dataset, split by split -> caption files and vocabulary",
    ),
    "vg": ("vqacap.prepare.vg", "Visual Genome objects/attributes -> detection annotations per split"),
    "merge": ("vqacap.extraction.merge", "shard stores of a distributed extraction -> one region store"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dispatch(parser, STEPS, "STEP")


def run(args: argparse.Namespace) -> int:
    return run_dispatch("vqacap prepare", STEPS, args)

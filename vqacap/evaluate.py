"""Offline evaluation of result files, as the reference toolkits score them.

    vqacap evaluate captions --annotations A --results R [--metrics ...] [--no-tokenize] [--json]
    vqacap evaluate vqa --questions Q --annotations A --results R [--json]

(`python -m vqacap.evaluate ...` is the same command.) Only the scorer that runs is imported: neither Lightning nor torch.
"""

from __future__ import annotations

import argparse
import sys

from vqacap.dispatch import add_dispatch, main_of, run_dispatch

# Subcommand -> (module providing `add_arguments(parser)` and `run(args) -> int`, help line).
METRICS = {
    "captions": ("vqacap.metrics.captions.cli", "score COCO-format caption results (coco-caption metrics)"),
    "vqa": ("vqacap.metrics.vqa.cli", "score VQA results with the official VQA accuracy"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dispatch(parser, METRICS, "TASK")


def run(args: argparse.Namespace) -> int:
    return run_dispatch("vqacap evaluate", METRICS, args)


main = main_of("vqacap evaluate", __doc__, add_arguments, run)

if __name__ == "__main__":
    sys.exit(main())

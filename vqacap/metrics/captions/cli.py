"""`python -m vqacap.evaluate captions`: score a COCO caption results file against COCO caption annotations.

    python -m vqacap.evaluate captions --annotations A --results R [--metrics Bleu_4 CIDEr ...] [--no-tokenize] [--json]
        [--corenlp DIR]

Prints one `name: value` line per metric as coco-caption does, or with --json one object keyed as pycocoevalcap.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from vqacap.data.formats import load_coco_results as load_results
from vqacap.metrics import REFUSED
from vqacap.metrics.captions import spice
from vqacap.metrics.captions.evaluation import METRICS, evaluate_captions, load_annotations


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--annotations", required=True, help="COCO caption annotations JSON (images, annotations)"
    )
    parser.add_argument("--results", required=True, help="COCO caption results JSON ([{image_id, caption}])")
    parser.add_argument(
        "--metrics",
        nargs="+",
        choices=METRICS,
        default=None,
        metavar="NAME",
        help=f"metrics to compute (default: all that can run here): {' '.join(METRICS)}",
    )
    parser.add_argument(
        "--no-tokenize",
        dest="tokenize",
        action="store_false",
        help="captions are already PTB-tokenized: score them as given",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument(
        "--present-only",
        action="store_true",
        help="score only the annotated images the results caption (their count is printed; a debug=limit run's)",
    )

    parser.add_argument(
        "--corenlp",
        metavar="DIR",
        help="folder holding stanford-corenlp-3.6.0.jar and stanford-corenlp-3.6.0-models.jar, which SPICE needs "
        "(default: $VQACAP_CORENLP, else pycocoevalcap's spice/lib)",
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.corenlp is not None:
        # SPICE asked for by name: a folder without the jars is an error, not a skipped metric.
        reason = spice.unavailable(args.corenlp) if args.metrics is None or "SPICE" in args.metrics else None
        if reason is not None:
            print(f"error: {reason.removeprefix('SPICE skipped: ')}", file=sys.stderr)
            return REFUSED
        os.environ[spice.CORENLP_VARIABLE] = str(
            args.corenlp
        )  # where the scorer looks (vqacap.metrics.captions.spice)
    try:
        references = load_annotations(args.annotations)
        results = load_results(args.results)
        annotated = len(references)
        if args.present_only:
            references = {i: refs for i, refs in references.items() if i in results}
        scores = evaluate_captions(references, results, metrics=args.metrics, tokenize=args.tokenize)
    except (OSError, ValueError) as error:
        advice = (
            ""
            if args.present_only or "have no result" not in str(error) or "not in the" in str(error)
            else " (--present-only scores those)"
        )
        print(f"error: {error}{advice}", file=sys.stderr)
        return REFUSED
    if args.json:
        print(
            json.dumps(
                {**scores, "images": {"scored": len(references), "annotated": annotated}}
                if args.present_only
                else scores
            )
        )
        return 0
    if args.present_only:
        print(f"scored {len(references)} of {annotated} annotated images (--present-only)")
    for name, value in scores.items():
        print(f"{name}: {value:.3f}")
    return 0

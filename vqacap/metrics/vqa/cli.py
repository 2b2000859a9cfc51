"""`python -m vqacap.evaluate vqa`: the official VQA accuracy of a results file, printed as the evaluator's demo does."""

from __future__ import annotations

import argparse
import json
import sys

from vqacap.data.formats import FormatError
from vqacap.metrics import REFUSED
from vqacap.metrics.vqa.evaluation import evaluate_vqa, format_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--questions", required=True, help="official VQA questions JSON ({'questions': [...]})"
    )
    parser.add_argument(
        "--annotations", required=True, help="official VQA annotations JSON ({'annotations': [...]})"
    )
    parser.add_argument(
        "--results", required=True, help="results JSON: [{'question_id': int, 'answer': str}, ...]"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object at full precision")
    parser.add_argument(
        "--present-only",
        action="store_true",
        help="score only the annotated questions the results answer (their count is printed)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        scores = evaluate_vqa(args.questions, args.annotations, args.results, present_only=args.present_only)
    except FormatError as err:
        print(f"error: {err}", file=sys.stderr)
        return REFUSED
    print(json.dumps(scores) if args.json else format_report(scores))
    return 0

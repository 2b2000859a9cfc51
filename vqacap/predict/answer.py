"""`vqacap answer IMAGE|DIR... --question "..." --detector CKPT --vqa CKPT [--out DIR] [--results JSON] [--devices N]`:
the top answers with their scores for each image, and per image the attention map of the question over the detected
boxes (vqacap.predict); `--results` writes the answers as VQA results, each question id the image's id."""

from __future__ import annotations

import argparse
from pathlib import Path

from vqacap.predict import add_common_arguments, run_task, write_results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--question", required=True, help="the question asked of every image")
    parser.add_argument("--vqa", required=True, type=Path, metavar="CKPT", help="VQA checkpoint")


def run(args: argparse.Namespace) -> int:
    results = run_task(args, args.vqa, "VQA", "--vqa", question=args.question)
    if results is None:
        return 2
    if args.results and results:  # written by the first process (the others have no results)
        write_results(args.results, args.images, [record for record, _ in results], "VQA")
    for image, (record, path) in zip(args.images, results):
        print(f"{image}" + (f"\t{path}" if path else ""))
        for answer, score in record["top_answers"]:
            print(f"  {score:.3f}  {answer}")
    return 0

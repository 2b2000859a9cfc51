"""`vqacap caption IMAGE|DIR... --detector CKPT --captioner CKPT [--beam 5] [--out DIR] [--results JSON]
[--devices N]`: one caption per image (printed as `<image>\t<caption>`), and per image the attention map of each word
over the detected boxes (vqacap.predict); `--results` writes them as COCO caption results for `vqacap evaluate`."""

from __future__ import annotations

import argparse
from pathlib import Path

from vqacap.predict import add_common_arguments, run_task, write_results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--captioner", required=True, type=Path, metavar="CKPT", help="captioning checkpoint")
    parser.add_argument("--beam", type=int, help="beam size (default: the checkpoint's decoding)")


def run(args: argparse.Namespace) -> int:
    if args.beam is not None and args.beam < 1:
        print(f"vqacap caption: --beam must be at least 1, got {args.beam}")
        return 2
    results = run_task(args, args.captioner, "captioning", "--captioner")
    if results is None:
        return 2
    if args.results and results:  # written by the first process (the others have no results)
        write_results(args.results, args.images, [record for record, _ in results], "captioning")
    for image, (record, path) in zip(args.images, results):
        print(f"{image}\t{record['caption']}" + (f"\t{path}" if path else ""))
    return 0

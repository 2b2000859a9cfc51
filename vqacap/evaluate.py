"""Offline evaluation of result files, as the reference toolkits score them.

python -m vqacap.evaluate captions --annotations A --results R [--metrics ...] [--no-tokenize] [--json]
python -m vqacap.evaluate vqa --questions Q --annotations A --results R [--json]
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand -> module providing `add_arguments(parser)` and `run(args) -> int`.
_COMMANDS = {
    "captions": ("vqacap.metrics.captions.cli", "score COCO-format caption results (coco-caption metrics)"),
    "vqa": ("vqacap.metrics.vqa.cli", "score VQA results with the official VQA accuracy"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vqacap.evaluate", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, (module_name, help_text) in _COMMANDS.items():
        module = importlib.import_module(module_name)
        modules[name] = module
        module.add_arguments(sub.add_parser(name, help=help_text))
    args = parser.parse_args(argv)
    return modules[args.command].run(args)


if __name__ == "__main__":
    sys.exit(main())

"""The `vqacap` command: data preparation and feature extraction.

    vqacap prepare features|coco-captions|vqa2 ...
    vqacap extract --images DIR --weights CKPT --out STORE ...

Training is `vqacap-train`; offline scoring is `python -m vqacap.evaluate`. To add a subcommand, add one line to
`COMMANDS` naming a module with `add_arguments(parser)` and `run(args) -> int` (the exit status).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand -> (module providing `add_arguments(parser)` and `run(args) -> int`, help line).
COMMANDS = {
    "prepare": ("vqacap.prepare", "turn public downloads into the files training reads"),
    "extract": ("vqacap.extract", "extract region features from images with a local Faster R-CNN checkpoint"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vqacap", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(command_module=module_name)
        importlib.import_module(module_name).add_arguments(command)
    args = parser.parse_args(argv)
    return importlib.import_module(args.command_module).run(args)


if __name__ == "__main__":
    sys.exit(main())

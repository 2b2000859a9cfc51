"""The `vqacap` command: data preparation and feature extraction.

    vqacap prepare features|coco-captions|vqa2|vg ...
    vqacap extract --images DIR [DIR ...] --detector CKPT | --weights CKPT --out STORE ...

Training is `vqacap-train`; offline scoring is `python -m vqacap.evaluate`. To add a subcommand, add one line to
`COMMANDS` naming a module with `add_arguments(parser)` and `run(args) -> int` (the exit status). Only the module of the
command being run is imported, so `vqacap prepare features` starts without torchvision or Lightning.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand -> (module providing `add_arguments(parser)` and `run(args) -> int`, help line).
COMMANDS = {
    "prepare": ("vqacap.prepare", "turn public downloads into the files training reads"),
    "extract": ("vqacap.extract", "extract region features with the bottom-up detector or a Faster R-CNN"),
    "visualize": ("vqacap.visualize", "draw attention maps of a trained captioner or VQA model (PNG files)"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vqacap", description=__doc__.splitlines()[0])
    add_dispatch(parser, COMMANDS, "COMMAND")
    return run_dispatch(parser.prog, COMMANDS, parser.parse_args(argv))


def add_dispatch(parser: argparse.ArgumentParser, registry: dict, metavar: str) -> None:
    """A command word chosen from `registry` followed by that command's own arguments, parsed by `run_dispatch`."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    width = max(len(name) for name in registry)
    parser.epilog = f"{metavar.lower()}s:\n" + "\n".join(
        f"  {name:<{width}}  {help_text}" for name, (_, help_text) in registry.items()
    )
    parser.add_argument("command", choices=registry, metavar=metavar, help=f"one of: {', '.join(registry)}")
    parser.add_argument(
        "args", nargs=argparse.REMAINDER, help=f"arguments of the {metavar.lower()} (see its --help)"
    )


def run_dispatch(prog: str, registry: dict, args: argparse.Namespace) -> int:
    module_name, help_text = registry[args.command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"{prog} {args.command}", description=help_text)
    module.add_arguments(parser)
    return module.run(parser.parse_args(args.args))


if __name__ == "__main__":
    sys.exit(main())

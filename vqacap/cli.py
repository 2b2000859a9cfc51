"""The `vqacap` command: one word per task.

    vqacap train [experiment=... key=value ...]          (also `vqacap-train`, `python -m vqacap.train`)
    vqacap evaluate captions|vqa ...                      (also `python -m vqacap.evaluate`)
    vqacap prepare features|coco-captions|vqa2 ...
    vqacap extract --images DIR --weights CKPT --out STORE ...
    vqacap visualize --checkpoint CKPT ...
    vqacap export RUN_DIR|CKPT OUT_DIR
    vqacap doctor

To add a command, add one line to `COMMANDS` naming a module with `add_arguments(parser)` and `run(args) -> int` (the
exit status), or with `command(argv) -> int` when it parses its own arguments (Hydra's). A step of `prepare` is one
line of `vqacap.prepare.STEPS`. Only the module of the command being run is imported, so `vqacap evaluate` starts
without torch or Lightning. Mistakes in what the user gave end in one line (`vqacap.errors`; `VQACAP_DEBUG=1` shows the
traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from vqacap.errors import reporting

# Command -> (module providing `add_arguments(parser)` and `run(args) -> int`, or `command(argv) -> int`; help line).
COMMANDS = {
    "train": (
        "vqacap.train",
        "train and test an experiment (Hydra overrides: experiment=<name> key=value ...)",
    ),
    "evaluate": ("vqacap.evaluate", "score caption or VQA result files as the reference toolkits do"),
    "prepare": ("vqacap.prepare", "turn public downloads into the files training reads"),
    "extract": ("vqacap.extract", "extract region features from images with a local Faster R-CNN checkpoint"),
    "visualize": ("vqacap.visualize", "draw attention maps of a trained captioner or VQA model (PNG files)"),
    "caption": ("vqacap.predict.caption", "caption image files with a trained detector and captioner"),
    "answer": (
        "vqacap.predict.answer",
        "answer a question about image files with a trained detector and VQA model",
    ),
    "export": ("vqacap.export", "write a trained model as a model folder (safetensors, JSON, model card)"),
    "doctor": ("vqacap.doctor", "say what this installation can do: Java, METEOR, SPICE, GPU, wandb, data"),
    "demo": (
        "vqacap.demo.command",
        "a local page in the browser: caption an image and answer questions about it",
    ),
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's help ends with its default, unless it has none (None, False), is a flag (its default is the
    opposite of what the flag does: `--no-tokenize` defaults to tokenize=True) or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            not action.option_strings
            or action.nargs == 0
            or action.default in (None, False, argparse.SUPPRESS)
            or "default" in text.lower()
        ):
            return text
        return f"{text} (default: %(default)s)"


def main(argv: list[str] | None = None) -> int:
    return main_of("vqacap", __doc__, lambda parser: add_dispatch(parser, COMMANDS, "COMMAND"), _run)(argv)


def _run(args: argparse.Namespace) -> int:
    return run_dispatch("vqacap", COMMANDS, args)


def main_of(
    prog: str,
    doc: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
) -> Callable[[list[str] | None], int]:
    """A `main(argv) -> int` for a module's `add_arguments` / `run`, for its `python -m` form."""

    def main(argv: list[str] | None = None) -> int:
        parser = argparse.ArgumentParser(
            prog=prog, description=(doc or "").split("\n\n")[0], formatter_class=HelpFormatter
        )
        add_arguments(parser)
        args = parser.parse_args(argv)
        return reporting(lambda: run(args))

    return main


def add_dispatch(parser: argparse.ArgumentParser, registry: dict, metavar: str) -> None:
    """A command word chosen from `registry` followed by that command's own arguments, parsed by `run_dispatch`."""
    parser.formatter_class = HelpFormatter
    width = max(len(name) for name in registry)
    parser.epilog = f"{metavar.lower()}s:\n" + "\n".join(
        f"  {name:<{width}}  {help_text}" for name, (_, help_text) in registry.items()
    )
    parser.add_argument("command", choices=registry, metavar=metavar, help=f"one of: {', '.join(registry)}")
    parser.add_argument(
        "args", nargs=argparse.REMAINDER, help=f"arguments of the {metavar.lower()} (see its --help)"
    )


def run_dispatch(prog: str, registry: dict, args: argparse.Namespace) -> int:
    module = importlib.import_module(registry[args.command][0])
    if not hasattr(module, "add_arguments"):  # parses its own arguments
        return module.command(list(args.args))
    parsed = command_parser(prog, registry, args.command).parse_args(args.args)
    return reporting(lambda: module.run(parsed))


def command_parser(prog: str, registry: dict, name: str) -> argparse.ArgumentParser | None:
    """The parser of command `name` of `registry` (None when the command parses its own arguments, as `train`);
    what `run_dispatch` parses with, and what the docs' CLI reference is generated from."""
    module_name, help_text = registry[name]
    module = importlib.import_module(module_name)
    if not hasattr(module, "add_arguments"):
        return None
    parser = argparse.ArgumentParser(
        prog=f"{prog} {name}", description=help_text, formatter_class=HelpFormatter
    )
    module.add_arguments(parser)
    return parser


if __name__ == "__main__":
    sys.exit(main())

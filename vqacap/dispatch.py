"""Command words and their parsers, shared by `vqacap` and the commands with words of their own (`vqacap prepare STEP`,
`vqacap evaluate TASK`): a registry maps each word to the module that parses and runs it, and only the module of the
word being run is imported.

Not here: the commands themselves (vqacap.cli lists them).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from vqacap.errors import reporting


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
    try:
        return reporting(lambda: module.run(parsed))
    finally:
        end_distributed()


def end_distributed() -> None:
    """Destroy the process group a command's Trainer left behind (several devices): with it alive at exit, gloo's
    threads now and then abort the interpreter ("terminate called without an active exception", status -6)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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

"""MkDocs hook: the pages that must not drift from the code, generated at every build.

- reference/cli.md from the argparse parsers of every `vqacap` command (`vqacap.cli.command_parser`);
- reference/configuration.md from the files of conf/ (every group, every option, its leading comment);
- api/<package>.md, one mkdocstrings page per subpackage of vqacap, and their entries in the nav.

Nothing here is committed output: `mkdocs build` writes the pages from the code it documents.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # document the checkout being built, whichever vqacap the environment installed
    sys.path.insert(0, str(ROOT))
CONF = ROOT / "conf"
PACKAGE = ROOT / "vqacap"
API_NAV_TITLE = "API reference"


# -- the CLI reference --------------------------------------------------------------------------------------------------
def cli_reference() -> str:
    """Markdown for every command word, sub-command and option, from the parsers the commands parse with."""
    # argparse wraps usage lines to the terminal's width; the page should not depend on it.
    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        return _cli_reference()
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns


def _cli_reference() -> str:
    from vqacap import cli

    lines = [
        "# CLI reference",
        "",
        "Generated from the commands' own argparse parsers at every docs build. Run the command from the project's",
        "virtual environment (`.venv/bin/vqacap`, or `source .venv/bin/activate` first); `vqacap <word> --help` prints",
        "the same. Mistakes in what you give end in one line naming the file or option (exit status 2);",
        "`VQACAP_DEBUG=1` shows the traceback.",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    lines += [
        f"| [`vqacap {name}`](#vqacap-{name}) | {_cell(text)} |" for name, (_, text) in cli.COMMANDS.items()
    ]
    for name, (_, text) in cli.COMMANDS.items():
        lines += ["", f"## vqacap {name}", "", _sentence(text), ""]
        parser = cli.command_parser("vqacap", cli.COMMANDS, name)
        if parser is None:
            lines += _train_section()
            continue
        registry = _sub_registry(parser)
        if registry is None:
            lines += _parser_section(parser)
            continue
        lines += ["```text", parser.format_usage().strip(), "```", ""]
        for sub, (_, sub_text) in registry.items():
            sub_parser = cli.command_parser(f"vqacap {name}", registry, sub)
            lines += [f"### vqacap {name} {sub}", "", _sentence(sub_text), ""]
            lines += _parser_section(sub_parser)
    return "\n".join(lines) + "\n"


def _train_section() -> list[str]:
    return [
        "```text",
        "vqacap train [experiment=<name>] [group=<option> ...] [key=value ...] [-m]   (also: vqacap-train ...)",
        "```",
        "",
        "Hydra composes the run's configuration from `conf/train.yaml` and the overrides given: `group=<option>`",
        "picks a file of a group, `key=value` sets a value, `+key=value` adds one, `-m` runs every combination of",
        "comma-separated values (a multirun). `vqacap train --help` lists the groups and their options;",
        "`vqacap train --cfg job` prints the composed configuration without running it. Every group, option and",
        "top-level key is listed in the [configuration reference](configuration.md).",
        "",
    ]


def _sub_registry(parser: argparse.ArgumentParser) -> dict | None:
    """The registry of a dispatching command (`evaluate`, `prepare`): its COMMAND argument chooses from a dict."""
    for action in parser._actions:
        if not action.option_strings and isinstance(action.choices, dict):
            return action.choices
    return None


def _parser_section(parser: argparse.ArgumentParser) -> list[str]:
    lines = ["```text", parser.format_usage().strip(), "```", ""]
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.metavar or action.dest}`"
        if action.option_strings and action.nargs != 0:
            name += f" `{_metavar(action)}`"
        help_text = action.help or ""
        default = ""
        if (
            action.option_strings
            and action.nargs != 0
            and action.default not in (None, False, argparse.SUPPRESS)
        ):
            default = "" if "default" in help_text.lower() else f"`{action.default}`"
        required = "yes" if action.required or not action.option_strings else ""
        rows.append(f"| {name} | {required} | {default} | {_cell(help_text)} |")
    if rows:
        lines += ["| option | required | default | meaning |", "|---|---|---|---|", *rows, ""]
    exclusive = [g for g in parser._mutually_exclusive_groups if g._group_actions]
    for group in exclusive:
        names = ", ".join(f"`{a.option_strings[0]}`" for a in group._group_actions if a.option_strings)
        lines += [f"{'Exactly one' if group.required else 'At most one'} of {names}.", ""]
    return lines


def _metavar(action: argparse.Action) -> str:
    if action.metavar:
        return action.metavar if isinstance(action.metavar, str) else " ".join(action.metavar)
    if action.choices:
        return "{" + ",".join(map(str, action.choices)) + "}"
    metavar = action.dest.upper()
    return f"{metavar} [{metavar} ...]" if action.nargs in ("+", "*") else metavar


def _cell(text: str) -> str:
    """One table cell: on one line, `|` escaped, and `<name>` outside code spans shown rather than read as HTML."""
    parts = " ".join(text.replace("|", "\\|").split()).split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;").replace(">", "&gt;") for i, p in enumerate(parts))


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return (text[:1].upper() + text[1:]).rstrip(".") + "."


# -- the configuration reference ---------------------------------------------------------------------------------------
def configuration_reference(conf: Path = CONF) -> str:
    """Markdown listing every config group of conf/ with its options (files) and the top-level keys of train.yaml."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `conf/` at every docs build. `conf/train.yaml` composes one option of each group;",
        "pick another with `vqacap train <group>=<option>` and set any value with `key=value`",
        "([Training](../training.md) shows how). Every node with a `_target_` is built by `hydra.utils.instantiate`.",
        "",
        "## Top-level keys of `conf/train.yaml`",
        "",
        "| key | default | meaning |",
        "|---|---|---|",
    ]
    for key, value, comment in _top_level_keys(conf / "train.yaml"):
        lines.append(f"| `{key}` | `{_cell(value)}` | {_cell(comment)} |")
    defaults = _defaults(conf / "train.yaml")
    lines += ["", "## Groups", ""]
    for group in sorted(p for p in conf.rglob("*") if p.is_dir() and any(p.glob("*.yaml"))):
        name = group.relative_to(conf).as_posix()
        chosen = defaults.get(name)
        lines += [f"### `{name}`", ""]
        if chosen is not None:
            lines += [f"Default: `{chosen}`.", ""]
        lines += ["| option | builds | what it is |", "|---|---|---|"]
        for file in sorted(group.glob("*.yaml")):
            target = _target(file)
            lines.append(
                f"| `{file.stem}` | {f'`{target}`' if target else ''} | {_cell(_description(file))} |"
            )
        lines.append("")
    return "\n".join(lines)


def _comment_block(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text and not text.startswith("@package"):
            out.append(text)
    return out


def _description(file: Path) -> str:
    """The file's leading comment; for a file without one, the comments of its top-level nodes."""
    lines = file.read_text().splitlines()
    leading = _comment_block(lines)
    if leading:
        return " ".join(leading)
    nodes = [(k, c) for k, _, c in _top_level_keys(file)]
    return "; ".join(f"`{k}`" + (f": {c}" if c else "") for k, c in nodes)


def _target(file: Path) -> str:
    for line in file.read_text().splitlines():
        if line.startswith("_target_:"):
            return line.split(":", 1)[1].split("#")[0].strip()
    return ""


_KEY = re.compile(r"^([A-Za-z_][\w.]*):\s*(.*?)\s*(?:#\s*(.*))?$")


def _top_level_keys(file: Path) -> list[tuple[str, str, str]]:
    """(key, value, trailing comment) of each unindented key but `defaults` and `_target_`."""
    out = []
    for line in file.read_text().splitlines():
        match = _KEY.match(line)
        if match and match.group(1) not in ("defaults", "_target_", "_partial_"):
            out.append((match.group(1), match.group(2), match.group(3) or ""))
    return out


def _defaults(file: Path) -> dict[str, str]:
    """group -> option of the defaults list of train.yaml."""
    chosen = {}
    for line in file.read_text().splitlines():
        match = re.match(r"^\s+-\s+([\w/]+):\s*(\S+)", line)
        if match:
            chosen[match.group(1)] = match.group(2)
    return chosen


# -- the API reference --------------------------------------------------------------------------------------------------
def api_pages(package: Path = PACKAGE) -> dict[str, str]:
    """api/<name>.md -> mkdocstrings page, one per subpackage, plus api/commands.md for the top-level modules."""
    pages = {}
    top = sorted(p.stem for p in package.glob("*.py") if not p.stem.startswith("_"))
    pages["api/commands.md"] = _api_page(
        "Top-level modules",
        "The commands (`train`, `evaluate`, `extract`, `visualize`, ...) and the small modules they share.",
        [f"vqacap.{name}" for name in top],
    )
    for sub in sorted(p for p in package.iterdir() if (p / "__init__.py").is_file()):
        if sub.name.startswith("_"):
            continue
        modules = [f"vqacap.{sub.name}"] + [
            f"vqacap.{sub.name}.{p.relative_to(sub).with_suffix('').as_posix().replace('/', '.')}"
            for p in sorted(sub.rglob("*.py"))
            if not p.stem.startswith("_") and "__pycache__" not in p.parts
        ]
        pages[f"api/{sub.name}.md"] = _api_page(f"vqacap.{sub.name}", "", modules)
    return pages


def _api_page(title: str, intro: str, modules: list[str]) -> str:
    lines = [f"# {title}", ""]
    if intro:
        lines += [intro, ""]
    for module in modules:
        lines += [f"::: {module}", ""]
    return "\n".join(lines)


# -- the MkDocs events ----------------------------------------------------------------------------------------------------
def _generated() -> dict[str, str]:
    return {
        "reference/cli.md": cli_reference(),
        "reference/configuration.md": configuration_reference(),
        **api_pages(),
    }


def on_config(config):
    """The API section of the nav lists the generated pages, so a new or moved subpackage needs no nav edit."""
    pages = [p for p in api_pages() if p != "api/commands.md"]
    entries = [{"Top-level modules": "api/commands.md"}] + [{f"vqacap.{Path(p).stem}": p} for p in pages]
    for item in config.nav or []:
        if isinstance(item, dict) and API_NAV_TITLE in item:
            item[API_NAV_TITLE] = [{"Overview": "api/index.md"}, *entries]
    return config


def on_files(files, config):
    from mkdocs.structure.files import File

    for path, content in _generated().items():
        existing = files.get_file_from_path(path)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, path, content=content))
    return files

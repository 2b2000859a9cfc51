"""Data flows one way: the import graph of vqacap/, read from the source with `ast` (every import, those inside
functions too), has no circle, and no module imports one of a higher layer.

The layers, bottom to top:

- foundation: the package root, errors, tokens, targets, images, folders, checkpoints, configs, runs, loggers, draw,
  dispatch
- library: data/, models/, metrics/ (the pure pieces; they know nothing of Lightning's modules, callbacks or commands)
- tasks: lightning/, callbacks/, extraction/, published/, shapes/, prepare/'s steps, predict/'s shared steps
- commands: what a user runs (train, evaluate, extract, visualize, caption and answer, demo, pixels, sweep, cli,
  export, doctor, extract_hydra, prepare's dispatcher, the benchmarks); no other module imports them, not even
  another command.
"""

from __future__ import annotations

import ast
from pathlib import Path

import vqacap

PACKAGE = Path(vqacap.__file__).resolve().parent

# Modules (and the packages whose every module is one) that a user runs; no other module imports them.
COMMANDS = (
    "vqacap.train",
    "vqacap.evaluate",
    "vqacap.extract",
    "vqacap.visualize",
    "vqacap.predict.caption",  # vqacap.predict itself: the steps caption, answer and the demo share
    "vqacap.predict.answer",
    "vqacap.demo",
    "vqacap.pixels",
    "vqacap.sweep",
    "vqacap.cli",
    "vqacap.extract_hydra",
    "vqacap.export",
    "vqacap.doctor",
    "vqacap.bench",
)
# Packages whose __init__ alone is a command (its submodules are library steps).
COMMAND_INITS = ("vqacap.prepare",)
LIBRARY = ("vqacap.data", "vqacap.models", "vqacap.metrics", "vqacap.tokens")
# What the library layer must not import: the task layer and the commands.
ABOVE_LIBRARY = (
    "vqacap.lightning",
    "vqacap.callbacks",
    "vqacap.extraction",
    "vqacap.published",
    "vqacap.shapes",
    "vqacap.prepare",
    "vqacap.draw",
    *COMMANDS,
)


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["vqacap", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The module of `modules` that `name` (a module, or a name inside one) is, or lives in."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """Module -> the vqacap modules it imports (itself and the bare package root left out)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                # `from vqacap.x import y`: y is module vqacap.x.y, or a name inside vqacap.x
                imported.update(f"{base}.{a.name}" for a in node.names)
        owners = {_owner(i, modules) for i in imported if i.split(".")[0] == "vqacap"}
        graph[name] = {o for o in owners if o and o not in (name, "vqacap")}
    return graph


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _command_of(name: str) -> str | None:
    """The command `name` belongs to (a module or package of COMMANDS, or a dispatcher of COMMAND_INITS), or None."""
    if name in COMMAND_INITS:
        return name
    return next((c for c in COMMANDS if _under(name, (c,))), None)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each a circle of imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read_from_every_module():
    graph = import_graph()
    assert {"vqacap.train", "vqacap.data.store", "vqacap.models.captioner", "vqacap.lightning.common"} <= set(
        graph
    )
    assert "vqacap.data.store" in graph["vqacap.data.captions"]  # an import the graph must see


def test_the_import_graph_has_no_circle():
    assert _cycles(import_graph()) == []


def test_data_and_models_import_no_higher_layer():
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        if _under(module, LIBRARY)
        for target in targets
        if _under(target, ABOVE_LIBRARY)
    )
    assert upward == []


def test_no_module_imports_a_command_but_its_own_parts():
    """A command defines nothing another module imports; what two commands share is a library module below them
    (`vqacap.cli` finds the commands by name, not by import)."""
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if _command_of(target) and _command_of(target) != _command_of(module)
    )
    assert upward == []


def test_models_take_token_ids_from_vqacap_tokens_not_from_the_data():
    from_data = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        if _under(module, ("vqacap.models",))
        for target in targets
        if _under(target, ("vqacap.data",))
    )
    assert from_data == []


def _subpackage(name: str) -> str:
    """The top-level unit a module belongs to: its subpackage of vqacap (vqacap.data, ...) or the module itself."""
    return ".".join(name.split(".")[:2])


def test_subpackages_import_each_other_one_way():
    """No circle between subpackages either (extraction/ and prepare/ once imported each other through a constant
    and a file-name helper): each subpackage sits wholly above or below another."""
    graph = import_graph()
    units: dict[str, set[str]] = {}
    for module, targets in graph.items():
        units.setdefault(_subpackage(module), set()).update(
            _subpackage(t) for t in targets if _subpackage(t) != _subpackage(module)
        )
    assert _cycles(units) == []

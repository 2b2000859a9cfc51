"""Mistakes in a training command line, found before any work starts and told in one line.

- `check_overrides(overrides)`: composes conf/train.yaml with the command line's overrides as Hydra will, and turns
  Hydra's multi-line refusals into one line with the closest valid names: a misspelt option
  (`model.decoding.beem_size=3`: "did you mean model.decoding.beam_size?") or a config that does not exist
  (`experiment=vqa_shape`: "did you mean vqa_shapes?"), instead of Hydra's text with the whole config search path.
- `check_types(cfg)`: every option of a `_target_` node (the trainer, data, model, callbacks, loggers) against the type
  its class's constructor declares, so `trainer.max_epochs=three` stops at once, not after minutes of data and model
  set-up in Lightning's fit loop. Only a string given where the declared type takes numbers or booleans alone is
  refused; declared types this cannot read are not checked.

- `CONFIG_DIR`: the conf/ folder the commands compose (a checkout's, or the copy an installed wheel ships), with the
  groups built from dataclasses registered (model/detector: DetectorOptions).

Not here: what an option means (its class checks that when it is built).
"""

from __future__ import annotations

import difflib
import inspect
import re
import types
import typing
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from vqacap.errors import UserError


def _config_dir() -> str:
    """conf/ of a checkout (beside the package), else the copy an installed wheel ships inside the package."""
    package = Path(__file__).resolve().parent
    for folder in (package.parent / "conf", package / "conf"):
        if (folder / "train.yaml").is_file():
            return str(folder)
    return str(package.parent / "conf")


# The folder of train.yaml and extract.yaml, which the commands and benchmarks compose.
CONFIG_DIR = _config_dir()


def register_structured_configs() -> None:
    """Config groups built from dataclasses, so that their defaults are written once, in the code: model/detector
    (`default`: DetectorOptions, every field with its default)."""
    from hydra.core.config_store import ConfigStore

    from vqacap.models.detector import DetectorOptions

    ConfigStore.instance().store(group="model/detector", name="default", node=DetectorOptions)


register_structured_configs()  # whoever composes the configs takes CONFIG_DIR from here


class ConfigError(UserError):
    """A command line or option that does not fit the configs; the message is one line."""


# -- the command line ---------------------------------------------------------------------------------------------
def check_overrides(overrides: list[str], config_dir: str, config_name: str = "train") -> None:
    """`ConfigError` for an override Hydra cannot apply: an unknown option or config, with the closest valid names."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            compose(config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(_explain(str(err), overrides, config_dir)) from None
    finally:
        GlobalHydra.instance().clear()


def _explain(text: str, overrides: list[str], config_dir: str) -> str:
    missing = re.search(r"Could not find '([^']+)/([^'/]+)'", text) or re.search(
        r"Could not load '([^']+)/([^'/]+)'", text
    )
    if missing:
        group, name = missing.groups()
        options = sorted(p.stem for p in (Path(config_dir) / group).glob("*.yaml"))
        near = _closest(name, options) or f" (the {group} configs: {', '.join(options)})"
        return f"{group}={name}: no such {group} config{near}"
    unknown = re.search(r"Could not override '([^']+)'", text) or re.search(
        r"Key '[^']+' is not in struct\s+full_key: (\S+)", text
    )
    if unknown:
        key = unknown.group(1)
        parent, _, last = key.rpartition(".")
        others = [o for o in overrides if not o.lstrip("+~").startswith(f"{key}=")]
        names = _keys_of(parent, others, config_dir)
        near = [
            f"{parent}.{n}" if parent else n for n in difflib.get_close_matches(last, names, n=3, cutoff=0.6)
        ]
        hint = f"; did you mean {' or '.join(near)}?" if near else ""
        return f"{key}: no such option{hint} (to add a new one: +{key}=...)"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else "the command line does not compose"


def _keys_of(parent: str, overrides: list[str], config_dir: str) -> list[str]:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        node = OmegaConf.select(cfg, parent) if parent else cfg
    except Exception:  # the other overrides have their own problem: no names to offer
        return []
    finally:
        GlobalHydra.instance().clear()
    return [str(k) for k in node] if isinstance(node, DictConfig) else []


def _closest(name: str, options: list[str]) -> str:
    near = difflib.get_close_matches(name, options, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(near)}?" if near else ""


# -- the composed config's types ------------------------------------------------------------------------------------
def check_types(cfg: DictConfig) -> None:
    """`ConfigError` naming the first option of a `_target_` node whose value cannot be of its declared type."""
    for path, node in _target_nodes(cfg, ""):
        hints = _constructor_hints(str(node.get("_target_")))
        for key in node:
            if str(key).startswith("_") or key not in hints:
                continue
            try:
                value = node[key]
            except Exception:  # an interpolation that resolves only inside the run (Hydra's own nodes)
                continue
            expected = _wrong_type(value, hints[key])
            if expected:
                where = f"{path}.{key}" if path else str(key)
                raise ConfigError(f"{where}={value!r}: expected {expected}")


def _target_nodes(node: Any, path: str):
    if isinstance(node, (DictConfig, ListConfig)) and (
        node._is_none() or node._is_missing() or path == "hydra"
    ):
        return
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield path, node
        for key in node:
            try:
                child = node._get_node(key)
            except Exception:
                continue
            if isinstance(child, (DictConfig, ListConfig)):
                yield from _target_nodes(child, f"{path}.{key}" if path else str(key))
    elif isinstance(node, ListConfig):
        for n, child in enumerate(node):
            yield from _target_nodes(child, f"{path}[{n}]")


def _constructor_hints(target: str) -> dict[str, Any]:
    from hydra._internal.utils import _locate

    try:
        found = _locate(target)
    except Exception:  # instantiate names what it cannot import, with its own message
        return {}
    hints: dict[str, Any] = {}
    functions = [c.__init__ for c in reversed(inspect.getmro(found))] if isinstance(found, type) else [found]
    for function in functions:
        try:
            hints.update(typing.get_type_hints(function))
        except Exception:  # annotations that do not evaluate here: not checked
            continue
    return hints


_NUMBERS = {int: "an integer", float: "a number", bool: "true or false"}


def _wrong_type(value: Any, hint: Any) -> str | None:
    """What `hint` expects, when `value` (a string) cannot be it: the hint takes only numbers, booleans or None."""
    if not isinstance(value, str):
        return None
    options = _union(hint)
    if any(o not in _NUMBERS and o is not type(None) for o in options):
        return None  # a string may be right (str, a Literal, a class, a type not understood)
    wanted = [_NUMBERS[o] for o in options if o in _NUMBERS]
    if type(None) in options:
        wanted.append("null")
    return " or ".join(dict.fromkeys(wanted)) if wanted else None


def _union(hint: Any) -> list[Any]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [o for arg in typing.get_args(hint) for o in _union(arg)]
    return [hint]

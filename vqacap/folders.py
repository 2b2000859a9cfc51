"""Model folders: a trained model as files anyone can read, without pickle, in huggingface_hub's layout.

    DIR/model.safetensors   the pure model's weights (safetensors: tensors and a JSON header, no code)
    DIR/config.json         {"format", "model": its class, "init": its constructor arguments, "task",
                             "module": the training module's settings (exported folders)}
    DIR/vocab.json          the word list, ids in order (captioners and VQA models)
    DIR/answers.json        the candidate answers (VQA models)
    DIR/classes.json, DIR/attributes.json   the detector's object and attribute names, index 0 included
    DIR/README.md           the model card (`vqacap export`)

`model.safetensors`, `config.json` and `README.md` are the names huggingface_hub's `ModelHubMixin` uses, so a folder
can be pushed to or pulled from a model hub by whoever has network; vqacap never downloads. The three models
(captioners, VQA models, the bottom-up detector) get `save_pretrained(dir)` / `from_pretrained(dir)` from
`PretrainedMixin`; every command that reads a checkpoint also reads a folder (`read_checkpoint` gives the folder as
the checkpoint dict the loaders know). A folder is never unpickled: a folder whose weights are a `.ckpt`, `.pt`,
`.bin` or `.pkl` is refused, and the model class its config names is checked against `vqacap.targets` before it is
imported. A folder whose weights do not fit its config ends in one line naming the file and the first tensor that
does not fit.

Not here: writing a folder from a run, and its model card (`vqacap export`, vqacap/export.py).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

FORMAT = "vqacap-model-folder/1"
WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "README.md"
# Name lists kept as their own JSON files: hyper-parameter (or constructor argument) -> file.
LISTS = {
    "words": "vocab.json",
    "answers": "answers.json",
    "classes": "classes.json",
    "attributes": "attributes.json",
}
PICKLED = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")


class FolderError(ValueError):
    """A model folder that cannot be read or written; the message is one line naming the file."""


def is_model_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder (with or without its files: reading it says what is missing) or its
    model.safetensors."""
    path = Path(path)
    return path.is_dir() or (path.name == WEIGHTS and path.is_file())


def folder_of(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.parent if path.name == WEIGHTS else path


def weights_file(path: str | os.PathLike) -> Path:
    """The file a folder's weights are read from (what a message about them names); `path` itself if no folder."""
    return folder_of(path) / WEIGHTS if is_model_folder(path) else Path(path)


# -- reading ---------------------------------------------------------------------------------------------------------
def read_config(folder: str | os.PathLike) -> dict:
    """config.json with the name lists of the folder put back in `init` and `module` where they were taken out."""
    folder = folder_of(folder)
    path = folder / CONFIG
    if not folder.is_dir():
        raise FolderError(f"{folder}: model folder not found")
    if not path.is_file():
        raise FolderError(
            f"{path}: missing (a model folder has {WEIGHTS} and {CONFIG}; write one with vqacap export)"
        )
    config = _json(path)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise FolderError(f'{path}: not a vqacap model folder\'s config (no "format": "{FORMAT}")')
    for part in ("init", "module"):
        node = config.get(part)
        if not isinstance(node, dict):
            continue
        for key in node.get("_lists", []):
            if key not in LISTS:
                raise FolderError(f"{path}: {part}._lists names {key!r}, not one of {', '.join(LISTS)}")
            names = _json(folder / LISTS[key])
            if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
                raise FolderError(f"{folder / LISTS[key]}: not a JSON list of strings")
            node[key] = names
        node.pop("_lists", None)
    return config


def read_weights(folder: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """model.safetensors as a state dict; a folder whose weights are a pickle is refused without reading it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = folder_of(folder)
    path = folder / WEIGHTS
    if not path.is_file():
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLED) if folder.is_dir() else []
        if pickled:
            raise FolderError(
                f"{folder / pickled[0]}: refused: a model folder's weights are {WEIGHTS}, never a pickle "
                "(export the checkpoint with `vqacap export`, or give the checkpoint file itself)"
            )
        raise FolderError(f"{path}: missing (a model folder has {WEIGHTS} and {CONFIG})")
    try:
        return load_file(path, device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise FolderError(f"{path}: not a readable safetensors file ({first})") from None


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """The folder as the checkpoint dict vqacap's loaders read: {"state_dict": {"net.<name>": tensor},
    "hyper_parameters": the training module's settings}."""
    config = read_config(path)
    hparams = config.get("module")
    if config.get("task") == "detector":
        raise FolderError(f"{folder_of(path)}: a detector's folder, where a captioner or VQA model is needed")
    if not isinstance(hparams, dict):
        raise FolderError(
            f"{folder_of(path) / CONFIG}: holds a bare {config.get('model')} (save_pretrained) without the settings "
            "a command needs; load it with from_pretrained, or export the run with `vqacap export`"
        )
    state = read_weights(path, map_location if isinstance(map_location, (str, torch.device)) else "cpu")
    return {"state_dict": {f"net.{k}": v for k, v in state.items()}, "hyper_parameters": hparams}


# -- writing ---------------------------------------------------------------------------------------------------------
def write_folder(
    out: str | os.PathLike,
    model: torch.nn.Module,
    init: Mapping[str, Any],
    task: str,
    module: Mapping[str, Any] | None = None,
    card: str | None = None,
) -> Path:
    """Write `model`'s weights and config (and `module`, the training settings, and a model card) into the new or
    empty folder `out`; the name lists in `init` and `module` go to their own files. Never overwrites a file."""
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FolderError(
            f"{out}: exists and is not an empty folder (a model folder is written into a new one)"
        )
    config: dict[str, Any] = {"format": FORMAT, "task": task, "model": _dotted(type(model))}
    lists: dict[str, list[str]] = {}
    for part, node in (("init", init), ("module", module)):
        if node is None:
            continue
        node = dict(node)
        taken = [k for k in LISTS if isinstance(node.get(k), (list, tuple))]
        for key in taken:
            lists[key] = [str(n) for n in node.pop(key)]
        config[part] = {**node, **({"_lists": taken} if taken else {})}
    try:
        text = json.dumps(config, indent=2)
    except TypeError as err:
        raise FolderError(f"{out / CONFIG}: a setting is not JSON ({err})") from None
    # safetensors stores each tensor once: tied or strided views are written as their own contiguous copies.
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, out / WEIGHTS, metadata={"format": FORMAT})
    (out / CONFIG).write_text(text + "\n")
    for key, names in lists.items():
        (out / LISTS[key]).write_text(json.dumps(names, indent=0) + "\n")
    if card is not None:
        (out / CARD).write_text(card)
    return out


# -- the models' side -------------------------------------------------------------------------------------------------
class PretrainedMixin:
    """`save_pretrained(dir)` / `from_pretrained(dir)` for a pure model (huggingface_hub's ModelHubMixin file names).

    The constructor's arguments are recorded as the model is made, as ModelHubMixin records them, and written as
    config.json's `init`; a tensor argument (initial word embeddings) is left out: the weights hold its trained
    values. A class whose arguments are not JSON turns them into JSON and back with `_init_to_json` /
    `_init_from_json`.
    """

    folder_task: str = ""  # "captioning", "VQA" or "detector", written into config.json

    def __new__(cls, *args: Any, **kwargs: Any):
        self = super().__new__(cls)
        try:
            bound = _signature(cls).bind(None, *args, **kwargs)
        except TypeError:  # copy.deepcopy and unpickling make the object without arguments
            arguments = None
        else:
            bound.apply_defaults()  # the folder records every argument, not only those given
            arguments = {k: v for k, v in list(bound.arguments.items())[1:] if k not in ("args", "kwargs")}
        object.__setattr__(self, "_init_arguments", arguments)
        return self

    def init_config(self) -> dict[str, Any]:
        """The constructor arguments as JSON values (tensor arguments left out)."""
        arguments = getattr(self, "_init_arguments", None)
        if arguments is None:
            raise FolderError(
                f"{type(self).__name__}: made without recorded arguments (a copy?); cannot save it"
            )
        return self._init_to_json({k: v for k, v in arguments.items() if not isinstance(v, torch.Tensor)})

    @classmethod
    def _init_to_json(cls, init: dict[str, Any]) -> dict[str, Any]:
        return {k: _jsonable(v) for k, v in init.items()}

    @classmethod
    def _init_from_json(cls, init: dict[str, Any]) -> dict[str, Any]:
        return init

    def save_pretrained(
        self, path: str | os.PathLike, module: Mapping[str, Any] | None = None, card: str | None = None
    ):
        """Write the model into the new or empty folder `path`."""
        return write_folder(path, self, self.init_config(), self.folder_task, module, card)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu"):
        """The model a folder holds, as this class, in eval mode: a folder of a fast form (vqacap.models.fast) loads
        into its paper form and back; a folder of an unrelated class, or whose weights do not fit its config, ends
        in one `FolderError` line naming the file."""
        from vqacap.targets import TargetError, locate

        folder = folder_of(path)
        config = read_config(folder)
        where = folder / CONFIG
        try:
            theirs = locate("net", config.get("model"), where, "model")
        except TargetError as err:
            raise FolderError(str(err)) from None
        if not (issubclass(cls, theirs) or issubclass(theirs, cls)):
            raise FolderError(f"{where}: holds a {theirs.__name__}, not a {cls.__name__}")
        # The class asked for when it has the folder's weights: the folder's class or a subclass of it, or the paper
        # form of a fast one (vqacap.models.fast: same parameters and state dict); else the folder's (asked for a
        # base class such as TopDownVQA).
        paper_form = theirs.__module__.startswith("vqacap.models.fast.") and cls in theirs.__bases__
        model_class = cls if issubclass(cls, theirs) or paper_form else theirs
        init = config.get("init")
        if not isinstance(init, dict):
            raise FolderError(f'{where}: no "init" (the model\'s constructor arguments)')
        try:
            model = model_class(**model_class._init_from_json(dict(init)))
        except (TypeError, ValueError) as err:
            raise FolderError(f"{where}: does not build a {model_class.__name__} ({err})") from None
        load_fitting(model, read_weights(folder, map_location), folder / WEIGHTS, where)
        return model.to(map_location).eval()


def load_fitting(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path, config: Path) -> None:
    """Load `state` into `model`, or one `FolderError` line naming `path` and the first tensor that does not fit."""
    own = model.state_dict()
    problems = [f"{k} is missing" for k in own if k not in state]
    problems += [f"{k} is not in the model" for k in state if k not in own]
    problems += [
        f"{k} is {tuple(state[k].shape)}, the model's {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if problems:
        more = f"; {len(problems) - 1} more" if len(problems) > 1 else ""
        raise FolderError(
            f"{path}: does not fit the {type(model).__name__} of {config} ({problems[0]}{more})"
        )
    model.load_state_dict(state)


def _signature(cls: type) -> inspect.Signature:
    """The signature of the first `__init__` up the class's bases that names its arguments: a subclass's
    `__init__(self, *args, **kwargs)` passes them on unchanged."""
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        signature = inspect.signature(init)
        if any(p.kind not in variadic for p in list(signature.parameters.values())[1:]):
            return signature
    return inspect.signature(cls.__init__)


def _dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _json(path: Path) -> Any:
    if not path.is_file():
        raise FolderError(f"{path}: missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FolderError(f"{path}: not JSON ({err})") from None

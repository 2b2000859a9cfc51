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
import sys

from vqacap.dispatch import add_dispatch, command_parser, main_of, run_dispatch

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


def main(argv: list[str] | None = None) -> int:
    return main_of("vqacap", __doc__, lambda parser: add_dispatch(parser, COMMANDS, "COMMAND"), _run)(argv)


def _run(args: argparse.Namespace) -> int:
    return run_dispatch("vqacap", COMMANDS, args)


__all__ = ["COMMANDS", "command_parser", "main"]  # command_parser: what the docs' CLI reference reads

if __name__ == "__main__":
    sys.exit(main())

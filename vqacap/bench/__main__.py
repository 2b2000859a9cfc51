"""python -m vqacap.bench [NAME ...]: run benchmarks, print a table, write outputs/bench/<name>.json."""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from pathlib import Path

import torch

# Benchmark name -> module providing `add_arguments(parser)` and `run(args) -> list[dict]` (rows of figures).
BENCHMARKS = {
    "cider": "vqacap.bench.cider",
    "loader": "vqacap.bench.loader",
    "peak": "vqacap.bench.peak",
    "models": "vqacap.bench.models",
    "detector": "vqacap.bench.detector",
    "extract": "vqacap.bench.extract",
}


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d"),
    }


def print_table(rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[_fmt(row.get(k, "")) for k in keys] for row in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths)))


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", default="outputs/bench", help="folder for the JSON results")
    parser = argparse.ArgumentParser(prog="python -m vqacap.bench", description=__doc__, parents=[common])
    sub = parser.add_subparsers(dest="name")
    modules = {name: importlib.import_module(mod) for name, mod in BENCHMARKS.items()}
    for name, module in modules.items():
        help_line = (module.__doc__ or "").splitlines()[0]
        module.add_arguments(sub.add_parser(name, help=help_line, parents=[common]))
    args, rest = parser.parse_known_args(argv)
    names = [args.name] if args.name else list(modules)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        sub_args = args if args.name else sub.choices[name].parse_args(rest)
        print(f"== {name}")
        rows = modules[name].run(sub_args)
        print_table(rows)
        path = out / f"{name}.json"
        path.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
        print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Dense matmul peak: the best GFLOP/s of large square matrix products on the machine at hand.

This is the yardstick of `vqacap.bench models`: a model path's matmul FLOPs per second divided by this peak says how much
of the time the machine does the work that cannot be avoided. It is measured, not taken from a data sheet, at the
thread count the models run with (`torch.get_num_threads()`), as the best of several products of two n x n matrices
(fp32; on a GPU also bf16). The best, not the median, because the peak is what the hardware can do when nothing
else gets in the way.
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096], help="matrix sizes n to try")
    parser.add_argument("--repeats", type=int, default=5, help="timed products per size")


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def dtypes(dev: torch.device) -> list[torch.dtype]:
    """fp32 everywhere; bf16 where it has its own matrix units (a GPU)."""
    return [torch.float32, torch.bfloat16] if dev.type == "cuda" else [torch.float32]


def synchronize(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def matmul_gflops(
    n: int, repeats: int, dtype: torch.dtype = torch.float32, dev: torch.device | None = None
) -> float:
    """Best GFLOP/s of `repeats` products of two n x n matrices (2 n^3 FLOPs each), after one untimed product."""
    dev = dev or device()
    a = torch.randn(n, n, device=dev).to(dtype)
    b = torch.randn(n, n, device=dev).to(dtype)
    out = torch.empty(n, n, device=dev, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up: library initialisation, page faults of `out`
    best = float("inf")
    for _ in range(repeats):
        synchronize(dev)
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        synchronize(dev)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def measure(sizes: list[int], repeats: int, dtype: torch.dtype = torch.float32) -> dict:
    """The peak over `sizes`: {"dtype", "n", "gflops", "threads"}."""
    dev = device()
    results = {n: matmul_gflops(n, repeats, dtype, dev) for n in sizes}
    n = max(results, key=results.get)
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "n": n,
        "gflops": results[n],
        "threads": torch.get_num_threads(),
    }


def run(args: argparse.Namespace) -> list[dict]:
    dev = device()
    rows = []
    for dtype in dtypes(dev):
        for n in args.sizes:
            rows.append({
                "device": dev.type,
                "dtype": str(dtype).removeprefix("torch."),
                "n": n,
                "threads": torch.get_num_threads(),
                "gflops": matmul_gflops(n, args.repeats, dtype, dev),
                "load_avg_1min": round(os.getloadavg()[0], 1),
            })  # fmt: skip
    return rows

"""Region loader: samples/s and peak memory reading a COCO-sized region store through a torch DataLoader.

A synthetic store (N images x 36 regions x 2048 float16, the real layout, written with `RegionStoreWriter`) is read
over one shuffled epoch in batches of 256, with 0 and 2 workers, two ways:

    read_batch     the batch's ids go to `RegionStore.read_batch` (one call per batch, as the DataModules do)
    read+collate   `RegionStore.read` per image, `collate_regions` pads the batch

Peak memory of the process tree (this process and its DataLoader workers) is sampled every 20 ms two ways: the sum of
proportional set sizes (PSS: a page shared by n processes counts 1/n in each, so the sum is the memory the tree really
holds; this is the figure the 2 GB target is checked against) and the sum of resident set sizes (an upper bound: the
libraries and pages forked workers share with this process count once per process); next to them this process's own
VmHWM. The store is kept at --path (default: the temp folder) and reused by later runs; it is read once before the
first timed epoch, so every row is for a warm page cache.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vqacap.data.store import CHUNK_REGIONS, RegionStore, RegionStoreWriter, collate_regions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=20000, help="images in the synthetic store")
    parser.add_argument("--regions", type=int, default=36, help="regions per image")
    parser.add_argument("--dim", type=int, default=2048, help="feature dimension")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts to time"
    )
    parser.add_argument("--path", help="store to write or reuse (default: <tmp>/vqacap-bench-loader-N.h5)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads of the main process (workers always use 1)",
    )


def run(args: argparse.Namespace) -> list[dict]:
    path = Path(args.path or Path(tempfile.gettempdir()) / f"vqacap-bench-loader-{args.images}.h5")
    # Copying items into the padded batch is many small tensor ops; with several intra-op threads on a busy machine
    # they spend most of their time waiting for each other (measured 100x slower with 2 threads under load).
    torch.set_num_threads(args.threads)
    rows = [write_store(path, args.images, args.regions, args.dim)]
    print(rows[-1], file=sys.stderr)
    _read_file(path)  # page cache warm for every row, whether the store was just written or reused
    store = RegionStore(path)
    for workers in args.workers:
        for mode, dataset in (("read_batch", BatchReads(store)), ("read+collate", ItemReads(store))):
            rows.append(time_epoch(mode, dataset, args.batch_size, workers))
            print(rows[-1], file=sys.stderr)  # the table comes at the end; an epoch can take minutes
    return rows


def write_store(path: Path, images: int, regions: int, dim: int) -> dict:
    """Write the synthetic store, or finish one an earlier run left (the writer resumes)."""
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    written = 0
    with RegionStoreWriter(path, dim, "float16", chunk_regions=CHUNK_REGIONS, buffer_regions=8192) as writer:
        boxes = np.tile(np.array([[10, 20, 200, 300]], dtype=np.float32), (regions, 1))
        for image_id in range(images):
            if image_id in writer:
                continue
            features = rng.random((regions, dim), dtype=np.float32).astype(np.float16)
            writer.add(image_id, features, boxes, 640, 480)
            written += 1
    seconds = time.perf_counter() - start
    size_gb = path.stat().st_size / 1e9
    return {
        "mode": "write" if written else "reuse",
        "images": images,
        "store_gb": round(size_gb, 2),
        "seconds": round(seconds, 2),
        "samples_per_s": round(written / seconds) if written else None,
    }


class BatchReads(Dataset):
    """Items are image ids; the collate function reads the whole batch with one `read_batch` call."""

    def __init__(self, store: RegionStore) -> None:
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> int:
        return int(self.store.image_ids[i])

    def collate(self, image_ids: list[int]):
        return self.store.read_batch(image_ids)


class ItemReads(Dataset):
    """Items are one image's (features, boxes, width, height); `collate_regions` pads them."""

    def __init__(self, store: RegionStore) -> None:
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int):
        features, boxes = self.store.read(int(self.store.image_ids[i]))
        return features, boxes, int(self.store.image_w[i]), int(self.store.image_h[i])

    def collate(self, items):
        return collate_regions(items)


def time_epoch(mode: str, dataset, batch_size: int, workers: int) -> dict:
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, collate_fn=dataset.collate
    )
    _reset_peak()
    with PeakRSS() as peak:
        start = time.perf_counter()
        samples = 0
        for batch in loader:
            samples += batch.features.shape[0]
        seconds = time.perf_counter() - start
    return {
        "mode": mode,
        "workers": workers,
        "batch": batch_size,
        "images": samples,
        "seconds": round(seconds, 2),
        "samples_per_s": round(samples / seconds),
        "peak_pss_tree_mb": round(peak.max_pss / 2**20),
        "peak_rss_tree_mb": round(peak.max_rss / 2**20),
        "main_vmhwm_mb": round(_status_kb(os.getpid(), "VmHWM") / 1024),
        "load_avg_1min": round(os.getloadavg()[0], 1),  # other work on the machine slows every figure
    }


class PeakRSS:
    """Samples the summed PSS and VmRSS of this process and its descendants in a background thread."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.max_pss = 0
        self.max_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            pids = _process_tree(os.getpid())
            self.max_rss = max(self.max_rss, 1024 * sum(_status_kb(pid, "VmRSS") for pid in pids))
            self.max_pss = max(self.max_pss, 1024 * sum(_pss_kb(pid) for pid in pids))
            if self._stop.wait(self.interval):
                return


def _process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:  # the process ended meanwhile
            continue
    return pids


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kb(pid: int) -> int:
    """Proportional set size of a process (Linux /proc/<pid>/smaps_rollup); its VmRSS where that file is missing."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return _status_kb(pid, "VmRSS")


def _read_file(path: Path, block: int = 64 * 2**20) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(block):
            pass


def _reset_peak() -> None:
    """Reset this process's VmHWM (Linux: writing 5 to clear_refs), so each row reports its own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass

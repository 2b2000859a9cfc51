"""Running a data generator (Shapes) in a DataModule's `prepare_data`, saying what it writes, where, and how far it is.

The generator renders one image per scene into `<root>/images/<split>/` as it goes, so the images written (new, or
rewritten since it started) are its progress. A generator that finds its folder up to date writes none, and nothing is
printed.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from tqdm import tqdm


def run_generator(node, root: str | os.PathLike) -> None:
    """instantiate(node, root=root), with a line saying what it makes and where, a progress bar and a closing line."""
    from hydra.utils import instantiate

    root = Path(root)
    sizes = {split: int(n) for split, n in (node.get("sizes") or {}).items()}
    name = "cluttered Shapes" if node.get("style") == "cluttered" else "Shapes"
    splits = ", ".join(f"{n} {split}" for split, n in sizes.items())
    announce = (
        f"{name}: generating {sum(sizes.values())} scenes ({splits}): images, regions, captions and questions"
    )
    watch = _ImagesWritten(root / "images", sum(sizes.values()) or None, f"{announce}, into {root}", name)
    watch.start()
    try:
        instantiate(node, root=str(root))
    finally:
        generated = watch.finish()
    if generated:
        print(f"{name}: written to {root} in {time.time() - watch.since:.0f} s", flush=True)


class _ImagesWritten(threading.Thread):
    """Counts the images written under `images/` since it was made, about twice a second, into a progress bar that
    appears (after the `announce` line) with the first one."""

    def __init__(self, images: Path, total: int | None, announce: str, name: str) -> None:
        super().__init__(daemon=True)
        self.images, self.total, self.announce, self.name = images, total, announce, name
        self.since = time.time()
        self.before = self.times()  # file -> modification time, of the images there before the generator ran
        self.bar: tqdm | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.5):
            self.update()

    def finish(self) -> bool:
        """Stop counting, bring the bar to its final count; whether anything was written."""
        self._stop_event.set()
        self.join()
        self.update()
        if self.bar is None:
            return False
        self.bar.close()
        return True

    def update(self) -> None:
        written = sum(self.before.get(path) != mtime for path, mtime in self.times().items())
        if written and self.bar is None:
            print(self.announce, flush=True)
            # On stdout with the lines around it (and Lightning's bar): stderr is for warnings and errors.
            self.bar = tqdm(
                total=self.total, desc=self.name, unit=" scenes", mininterval=1.0, file=sys.stdout
            )
        if self.bar is not None and written > self.bar.n:
            self.bar.update(written - self.bar.n)

    def times(self) -> dict[str, int]:
        found = {}
        for split in self.images.iterdir() if self.images.is_dir() else ():
            try:
                with os.scandir(split) as entries:
                    for entry in entries:
                        found[entry.path] = entry.stat().st_mtime_ns
            except (FileNotFoundError, NotADirectoryError):
                continue
        return found

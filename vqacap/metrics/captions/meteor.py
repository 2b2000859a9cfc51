"""METEOR 1.5 through the jar pycocoevalcap ships, driven as pycocoevalcap's `Meteor` drives it.

`java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm` reads one `SCORE ||| ref ||| ... ||| hypothesis` line per
image and answers with that image's statistics; one `EVAL ||| stats ||| ...` line then gives each image's score and
the corpus score (computed from the summed statistics, not the mean of the image scores). Unlike pycocoevalcap, all
SCORE lines are written at once from a thread (no round trip per image), which changes nothing in the answers.

Optional: needs `java` and the pycocoevalcap package (jar and paraphrase table); `unavailable()` says what is missing.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import shutil
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

JAR = "meteor-1.5.jar"


def pycocoevalcap_dir() -> Path | None:
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def unavailable() -> str | None:
    """Why METEOR cannot run here, or None."""
    package = pycocoevalcap_dir()
    if package is None:
        return "METEOR skipped: pycocoevalcap is not installed (pip install pycocoevalcap)"
    if not (package / "meteor" / JAR).is_file():
        return f"METEOR skipped: {package / 'meteor' / JAR} is missing"
    if not (package / "meteor" / "data" / "paraphrase-en.gz").is_file():
        return f"METEOR skipped: {package / 'meteor' / 'data' / 'paraphrase-en.gz'} is missing"
    if shutil.which("java") is None:
        return "METEOR skipped: no `java` on PATH (METEOR 1.5 is a Java program)"
    return None


class Meteor:
    """One METEOR process; `score` can be called many times. Use as a context manager or call `close`."""

    def __init__(self) -> None:
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        self._lock = threading.Lock()
        self._process = subprocess.Popen(
            ["java", "-jar", "-Xmx2G", JAR, "-", "-", "-stdio", "-l", "en", "-norm"],
            cwd=pycocoevalcap_dir() / "meteor",
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    def score(
        self, references: Sequence[Sequence[str]], candidates: Sequence[str]
    ) -> tuple[float, list[float]]:
        """-> (corpus METEOR, per-image scores). references[i]: the captions of image i (tokenized strings)."""
        lines = [_score_line(refs, hyp) for refs, hyp in zip(references, candidates)]
        with self._lock:
            writer = threading.Thread(target=self._write_quietly, args=("".join(lines),))
            writer.start()
            stats = [self._read() for _ in lines]
            writer.join()
            self._write("EVAL ||| " + " ||| ".join(stats) + "\n")
            per_image = [float(self._read()) for _ in lines]
            return float(self._read()), per_image

    def _write(self, text: str) -> None:
        self._process.stdin.write(text.encode())
        self._process.stdin.flush()

    def _write_quietly(self, text: str) -> None:
        # From the writer thread: if the process died, the reader reports it.
        with contextlib.suppress(BrokenPipeError):
            self._write(text)

    def _read(self) -> str:
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"METEOR process ended unexpectedly (exit code {self._process.poll()})")
        return line.decode().strip()

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.stdin.close()
            self._process.kill()
            self._process.wait()
        self._process.stdout.close()

    def __enter__(self) -> Meteor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _score_line(references: Sequence[str], hypothesis: str) -> str:
    # As pycocoevalcap: '|||' and double spaces are cleaned from the hypothesis only. Newlines would break the
    # line protocol (pycocoevalcap would hang), so they become spaces.
    hypothesis = hypothesis.replace("|||", "").replace("  ", " ")
    line = " ||| ".join(("SCORE", " ||| ".join(references), hypothesis))
    return line.replace("\r", " ").replace("\n", " ") + "\n"


_shared: Meteor | None = None
_shared_lock = threading.Lock()


def meteor(references: Sequence[Sequence[str]], candidates: Sequence[str]) -> tuple[float, list[float]]:
    """METEOR with a process shared by all calls (the JVM and paraphrase table take seconds to load)."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared._process.poll() is not None:
            _shared = Meteor()
            atexit.register(_shared.close)
        process = _shared
    return process.score(references, candidates)

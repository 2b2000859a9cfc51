"""SPICE 1.0 through the jar pycocoevalcap ships, run as pycocoevalcap's `Spice` runs it.

`java -jar -Xmx8G spice-1.0.jar input.json -cache DIR -out output.json -subset -silent`; the score of an image is its
"All" F-score, the corpus score their mean (NaN if any image's is NaN, as in pycocoevalcap).

SPICE needs Stanford CoreNLP 3.6.0 (`spice/lib/stanford-corenlp-3.6.0.jar` and `-models.jar`), which pycocoevalcap
downloads on first use. This module never downloads: without those jars SPICE is reported unavailable.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from vqacap.metrics.captions.meteor import pycocoevalcap_dir

JAR = "spice-1.0.jar"
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


def spice_dir() -> Path | None:
    package = pycocoevalcap_dir()
    return None if package is None else package / "spice"


def unavailable() -> str | None:
    """Why SPICE cannot run here, or None."""
    folder = spice_dir()
    if folder is None:
        return "SPICE skipped: pycocoevalcap is not installed (pip install pycocoevalcap)"
    if not (folder / JAR).is_file():
        return f"SPICE skipped: {folder / JAR} is missing"
    missing = [name for name in CORENLP_JARS if not (folder / "lib" / name).is_file()]
    if missing:
        return (
            f"SPICE skipped: Stanford CoreNLP 3.6.0 is not in {folder / 'lib'} ({', '.join(missing)}); "
            "run `python -m pycocoevalcap.spice.get_stanford_models` once to download it"
        )
    if shutil.which("java") is None:
        return "SPICE skipped: no `java` on PATH (SPICE is a Java program)"
    return None


def spice(
    references: Sequence[Sequence[str]],
    candidates: Sequence[str],
    java: str = "java",
    folder: Path | None = None,
    cache: Path | None = None,
) -> tuple[float, list[float]]:
    """-> (mean SPICE F-score, per-image F-scores). references[i]: the captions of image i (tokenized strings)."""
    folder = Path(folder) if folder is not None else spice_dir()
    if cache is None:  # parsed scene graphs, reused across runs
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vqacap" / "spice"
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    items = [
        {"image_id": i, "test": test, "refs": list(refs)}
        for i, (test, refs) in enumerate(zip(candidates, references))
    ]
    with tempfile.TemporaryDirectory(prefix="vqacap-spice-") as tmp:
        inputs, outputs = Path(tmp) / "input.json", Path(tmp) / "output.json"
        inputs.write_text(json.dumps(items, indent=2))
        command = [
            java,
            "-jar",
            "-Xmx8G",
            JAR,
            str(inputs),
            "-cache",
            str(cache),
            "-out",
            str(outputs),
            "-subset",
            "-silent",
        ]
        subprocess.run(command, cwd=folder, check=True)
        results = json.loads(outputs.read_text())
    f_score = {item["image_id"]: _float(item["scores"]["All"]["f"]) for item in results}
    per_image = [f_score[i] for i in range(len(candidates))]
    return (sum(per_image) / len(per_image) if per_image else math.nan), per_image


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan

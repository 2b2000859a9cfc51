"""SPICE 1.0 through the jar pycocoevalcap ships, scored as pycocoevalcap's `Spice` scores it, offline.

`java -Xmx8G <module flags> -cp spice-1.0.jar:lib/*:<CoreNLP jars> edu.anu.spice.SpiceScorer input.json -cache DIR
-out output.json -subset -silent`: the jar's own main class and options (pycocoevalcap runs `java -jar spice-1.0.jar`,
whose manifest puts `lib/stanford-corenlp-3.6.0*.jar` on the class path; here the class path is given, so the CoreNLP
jars can live anywhere). The score of an image is its "All" F-score, the corpus score their mean (NaN if any image's
is NaN, as in pycocoevalcap).

SPICE needs Stanford CoreNLP 3.6.0 (`stanford-corenlp-3.6.0.jar` and `stanford-corenlp-3.6.0-models.jar`, from
stanford-corenlp-full-2015-12-09.zip), which pycocoevalcap downloads on first use from a URL that no longer serves it.
This module never downloads: it looks for the two jars in the folder given (`--corenlp DIR` of `vqacap evaluate
captions`, `paths.corenlp` in training, both setting the environment variable `VQACAP_CORENLP`), else in
pycocoevalcap's `spice/lib`; without them SPICE is reported unavailable in one line naming the files to bring.
A folder that also holds `spice-1.0.jar` and its `lib/` (a SPICE release) is used for SPICE itself too.

Java 9 and later refuse the reflection SPICE's scene-graph cache does (FST serialisation into LMDB: "Unable to make
field private final byte[] java.lang.String.value accessible: module java.base does not opens java.lang",
tylin/coco-caption#59, ruotianluo/ImageCaptioning.pytorch#127), so the JDK packages it touches are opened to it
(`--add-opens`); `-XX:+IgnoreUnrecognizedVMOptions` lets Java 8, which has no modules, run the same command.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from vqacap.metrics.captions.meteor import pycocoevalcap_dir

JAR = "spice-1.0.jar"
MAIN = "edu.anu.spice.SpiceScorer"
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
# What each jar holds (an entry, or the prefix of some), to tell a wrong or truncated file from the jar.
CORENLP_CONTENTS = ("edu/stanford/nlp/pipeline/StanfordCoreNLP.class", "edu/stanford/nlp/models/")
CORENLP_VARIABLE = "VQACAP_CORENLP"
# The JDK packages whose internals SPICE's cache (FST, LMDB through lmdbjni) reflects on.
OPENED = (
    "java.base/java.lang",
    "java.base/java.lang.reflect",
    "java.base/java.io",
    "java.base/java.math",
    "java.base/java.net",
    "java.base/java.nio",
    "java.base/java.text",
    "java.base/java.util",
    "java.base/java.util.concurrent",
    "java.base/sun.nio.ch",
)
JAVA_FLAGS = ("-XX:+IgnoreUnrecognizedVMOptions", *(f"--add-opens={p}=ALL-UNNAMED" for p in OPENED))
HOW_TO_BRING = (
    "bring stanford-corenlp-3.6.0.jar and stanford-corenlp-3.6.0-models.jar (stanford-corenlp-full-2015-12-09.zip) "
    f"into a folder and give it: --corenlp DIR, {CORENLP_VARIABLE}=DIR or paths.corenlp=DIR"
)


def spice_dir() -> Path | None:
    package = pycocoevalcap_dir()
    return None if package is None else package / "spice"


def corenlp_dir(given: str | os.PathLike | None = None) -> Path | None:
    """The CoreNLP folder the user gave: `given`, else $VQACAP_CORENLP; None for neither."""
    chosen = given if given not in (None, "") else os.environ.get(CORENLP_VARIABLE) or None
    return None if chosen is None else Path(chosen).expanduser()


def _spice_folder(corenlp: Path | None) -> Path | None:
    if corenlp is not None and (corenlp / JAR).is_file():
        return corenlp
    return spice_dir()


def _corenlp_places(corenlp: Path | None, folder: Path | None) -> list[Path]:
    """Where the CoreNLP jars are looked for: the given folder (and its lib/), else SPICE's lib/."""
    if corenlp is not None:
        return [corenlp, corenlp / "lib"]
    return [folder / "lib"] if folder is not None else []


def _find(name: str, places: list[Path]) -> Path | None:
    return next((place / name for place in places if (place / name).is_file()), None)


def unavailable(corenlp: str | os.PathLike | None = None) -> str | None:
    """Why SPICE cannot run here (one line naming the files to bring), or None. `corenlp`: a folder holding the
    CoreNLP 3.6.0 jars (default: $VQACAP_CORENLP, else pycocoevalcap's spice/lib)."""
    given = corenlp_dir(corenlp)
    if given is not None and not given.is_dir():
        return f"SPICE skipped: {given} (the CoreNLP folder given) is not a folder; {HOW_TO_BRING}"
    folder = _spice_folder(given)
    if folder is None:
        return (
            "SPICE skipped: pycocoevalcap is not installed (pip install pycocoevalcap), or give a folder holding "
            f"{JAR} and its lib/ with --corenlp DIR"
        )
    if not (folder / JAR).is_file():
        return f"SPICE skipped: {folder / JAR} is missing (reinstall pycocoevalcap, which ships it with lib/)"
    places = _corenlp_places(given, folder)
    missing = [name for name in CORENLP_JARS if _find(name, places) is None]
    if missing:
        others = sorted(
            {p.name for place in places if place.is_dir() for p in place.glob("stanford-corenlp-*.jar")}
        )
        found = f"; found {', '.join(others)}, but SPICE 1.0 needs 3.6.0" if others else ""
        return (
            f"SPICE skipped: Stanford CoreNLP 3.6.0 is not in {places[0]} ({', '.join(missing)} missing{found}); "
            f"{HOW_TO_BRING}"
        )
    for name, entry in zip(CORENLP_JARS, CORENLP_CONTENTS):
        problem = _jar_problem(_find(name, places), entry)
        if problem is not None:
            return f"SPICE skipped: {_find(name, places)} {problem}; {HOW_TO_BRING}"
    if shutil.which("java") is None:
        return "SPICE skipped: no `java` on PATH (SPICE is a Java program: install a JRE, 8 or later)"
    return None


def _jar_problem(path: Path, entry: str) -> str | None:
    """Why `path` is not the jar that holds `entry` (a file name, or a folder prefix ending in /), or None."""
    try:
        with zipfile.ZipFile(path) as jar:
            names = jar.namelist()
    except (zipfile.BadZipFile, OSError):
        return "is not a jar (a zip file): truncated, or a page saved under its name?"
    if not any(n == entry or (entry.endswith("/") and n.startswith(entry)) for n in names):
        return f"is not the CoreNLP 3.6.0 jar of that name (it has no {entry})"
    return None


def class_path(corenlp: str | os.PathLike | None = None, folder: Path | None = None) -> str:
    """The class path: the SPICE jar, its lib/ jars and the CoreNLP jars, for `corenlp` as `unavailable` resolves
    it; `folder`: SPICE's folder (default: the one `unavailable` finds)."""
    given = corenlp_dir(corenlp)
    folder = Path(folder) if folder is not None else _spice_folder(given)
    if folder is None:
        raise RuntimeError(unavailable(corenlp) or "SPICE is not installed")
    places = _corenlp_places(given, folder)
    corenlp_jars = [_find(name, places) or folder / "lib" / name for name in CORENLP_JARS]
    library = sorted(p for p in (folder / "lib").glob("*.jar") if p.name not in CORENLP_JARS)
    jars = [folder / JAR, *corenlp_jars, *library]
    return os.pathsep.join(str(p.resolve()) for p in jars)


def java_version(java: str = "java") -> tuple[int, str] | None:
    """(major version, the `java -version` line) of `java`, or None when it does not run. Java 8 says "1.8.0_x"."""
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (done.stderr or done.stdout).strip()
    found = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if done.returncode != 0 or found is None:
        return None
    major = int(found.group(1))
    if major == 1 and found.group(2):
        major = int(found.group(2))
    return major, text.splitlines()[0]


def spice(
    references: Sequence[Sequence[str]],
    candidates: Sequence[str],
    java: str = "java",
    folder: Path | None = None,
    cache: Path | None = None,
    corenlp: str | os.PathLike | None = None,
) -> tuple[float, list[float]]:
    """-> (mean SPICE F-score, per-image F-scores). references[i]: the captions of image i (tokenized strings).

    folder: SPICE's folder (default: the one `corenlp` or pycocoevalcap gives); corenlp: the CoreNLP jars' folder
    (default: $VQACAP_CORENLP)."""
    folder = Path(folder) if folder is not None else _spice_folder(corenlp_dir(corenlp))
    jars = class_path(corenlp, folder)
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
        command = [java, "-Xmx8G", *JAVA_FLAGS, "-cp", jars, MAIN, str(inputs), "-cache", str(cache)]
        command += ["-out", str(outputs), "-subset", "-silent"]
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
        if done.returncode != 0 or not outputs.is_file():
            raise RuntimeError(
                f"SPICE failed (java exit status {done.returncode}): {_java_error(done.stderr)}"
            )
        results = json.loads(outputs.read_text())
    f_score = {item["image_id"]: _float(item["scores"]["All"]["f"]) for item in results}
    per_image = [f_score[i] for i in range(len(candidates))]
    return (sum(per_image) / len(per_image) if per_image else math.nan), per_image


def _java_error(stderr: str) -> str:
    """The line of a Java stack trace that says what went wrong: the innermost `Caused by`, else the exception."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    causes = [line for line in lines if line.startswith("Caused by:")]
    thrown = [line for line in lines if "Exception" in line or "Error" in line]
    found = causes[-1] if causes else thrown[0] if thrown else lines[-1] if lines else "no message"
    return found[:300]


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan

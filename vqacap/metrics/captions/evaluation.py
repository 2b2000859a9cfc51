"""Score caption results with the coco-caption metrics, in process: the public entry point of this package.

    references = load_annotations("captions_val2014.json")   # {image_id: [caption, ...]}
    results = load_results("results.json")                    # {image_id: caption}
    evaluate_captions(references, results)                     # {"Bleu_1": ..., "CIDEr": ..., ...}

Values equal pycocoevalcap 1.2's COCOEvalCap on the same images: PTB tokenization (ptb.py), then BLEU-1..4, METEOR
(Java, optional), ROUGE-L, CIDEr-D and SPICE (Java plus CoreNLP models, optional). A metric that cannot run is left out
of the result with a one-line warning.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Hashable, Iterable, Mapping, Sequence
from itertools import accumulate
from pathlib import Path

from vqacap.data.formats import load_coco_captions
from vqacap.metrics.captions import meteor as meteor_module
from vqacap.metrics.captions import spice as spice_module
from vqacap.metrics.captions.bleu import bleu_corpus
from vqacap.metrics.captions.cider import cider_d_corpus
from vqacap.metrics.captions.ngrams import Corpus
from vqacap.metrics.captions.ptb import tokenize_captions
from vqacap.metrics.captions.rouge import rouge_l

log = logging.getLogger(__name__)

BLEU = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4")
METRICS = (*BLEU, "METEOR", "ROUGE_L", "CIDEr", "SPICE")


def evaluate_captions(
    references: Mapping[Hashable, Sequence[str]],
    results: Mapping[Hashable, str],
    metrics: Iterable[str] | None = None,
    tokenize: bool = True,
) -> dict[str, float]:
    """Corpus scores keyed as coco-caption names them (`Bleu_1`..`Bleu_4`, `METEOR`, `ROUGE_L`, `CIDEr`, `SPICE`).

    references: {image_id: [reference captions]}; results: {image_id: caption}, one per annotated image.
    metrics: names to compute (default: all that can run here). tokenize=False: captions are already tokenized
    (lower-cased words separated by spaces) and are scored as given.
    """
    return evaluate_captions_per_image(references, results, metrics, tokenize)[0]


def evaluate_captions_per_image(
    references: Mapping[Hashable, Sequence[str]],
    results: Mapping[Hashable, str],
    metrics: Iterable[str] | None = None,
    tokenize: bool = True,
) -> tuple[dict[str, float], dict[Hashable, dict[str, float]]]:
    """-> (corpus scores, {image_id: {metric: score of that image}}), as `evaluate_captions`.

    An image's BLEU is the sentence-level BLEU coco-caption reports per image; the corpus BLEU is not their mean.
    """
    wanted = check_metrics(metrics)
    image_ids = check_images(references, results)
    refs = [list(references[i]) for i in image_ids]
    candidates = [results[i] for i in image_ids]
    if tokenize:
        # As coco-caption: all references in one tokenizer run, all results in another, in image order.
        ends = list(accumulate(map(len, refs)))
        flat = tokenize_captions([r for rs in refs for r in rs])
        refs = [flat[end - len(rs) : end] for rs, end in zip(refs, ends)]
        candidates = tokenize_captions(candidates)

    totals: dict[str, float] = {}
    per_image: dict[str, Sequence[float]] = {}
    if wanted & {*BLEU, "CIDEr"}:
        corpus = Corpus(refs, candidates, n=4)
        if wanted & set(BLEU):
            bleu_totals, bleu_images = bleu_corpus(corpus)
            for k, name in enumerate(BLEU):
                totals[name], per_image[name] = bleu_totals[k], bleu_images[k]
        if "CIDEr" in wanted:
            totals["CIDEr"], per_image["CIDEr"] = cider_d_corpus(corpus)
    if "ROUGE_L" in wanted:
        totals["ROUGE_L"], per_image["ROUGE_L"] = rouge_l(refs, candidates)
    for name, module, scorer in (
        ("METEOR", meteor_module, meteor_module.meteor),
        ("SPICE", spice_module, spice_module.spice),
    ):
        if name not in wanted:
            continue
        reason = module.unavailable()
        if reason is None:
            try:
                totals[name], per_image[name] = scorer(refs, candidates)
            except (OSError, RuntimeError, ValueError, KeyError, subprocess.SubprocessError) as error:
                # a JVM that cannot start (memory), a jar that fails or answers in an unexpected format
                reason = f"{name} skipped: {type(error).__name__}: {error}".splitlines()[0]
        if reason is not None:
            log.warning(reason)

    names = [name for name in METRICS if name in wanted and name in totals]
    scores = {name: float(totals[name]) for name in names}
    images = {i: {name: float(per_image[name][k]) for name in names} for k, i in enumerate(image_ids)}
    return scores, images


def check_metrics(metrics: Iterable[str] | None) -> set[str]:
    """The set of metric names asked for (all when None); a ValueError naming any unknown one."""
    if metrics is None:
        return set(METRICS)
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown caption metric(s) {unknown}; known: {', '.join(METRICS)}")
    return set(metrics)


def check_images(
    references: Mapping[Hashable, Sequence[str]], results: Mapping[Hashable, str]
) -> list[Hashable]:
    """The image ids to score, in the order of `references`; a ValueError if the two do not cover the same images."""
    extra = [i for i in results if i not in references]
    missing = [i for i in references if i not in results]
    if extra or missing:
        parts = []
        if extra:
            parts.append(f"{len(extra)} result image ids are not in the annotations (e.g. {extra[0]!r})")
        if missing:
            parts.append(f"{len(missing)} annotated images have no result (e.g. {missing[0]!r})")
        if any(str(i) in {str(r) for r in references} for i in extra[:100]):
            parts.append(
                'ids are compared as written: give integer ids as numbers, not strings (4501, not "4501")'
            )
        raise ValueError(
            f"results and annotations must cover the same images: {len(results)} results, {len(references)} "
            f"annotated images; " + "; ".join(parts)
        )
    if not references:
        raise ValueError("no images to score: the annotations and results are empty")
    for i, refs in references.items():
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"image {i!r}: references must be a non-empty list of strings, got {refs!r}")
        if not isinstance(results[i], str):
            raise ValueError(f"image {i!r}: the result caption must be a string, got {results[i]!r}")
    return list(references)


def load_annotations(path: str | Path) -> dict[Hashable, list[str]]:
    """COCO caption annotations -> {image_id: [captions]}, images in the order of "images" (as coco-caption iterates
    them).

    As coco-caption, the image set is "images" when present (captions of other images are ignored, with a
    warning); an image there without any caption is an error.
    """
    captions, images = load_coco_captions(path)
    if images is None:
        return captions
    image_ids = [image["id"] for image in images]
    without = [i for i in image_ids if i not in captions]
    if without:
        raise ValueError(f"{path}: {len(without)} images have no caption (e.g. image {without[0]!r})")
    ignored = len(set(captions) - set(image_ids))
    if ignored:
        log.warning("%s: captions of %d image ids not listed in 'images' are ignored", path, ignored)
    return {i: captions[i] for i in image_ids}

"""BLEU, ROUGE-L, CIDEr-D, the evaluate_captions API, the COCO loaders, SPICE plumbing and the captions CLI.

The scorers are checked against pycocoevalcap 1.2's own scorers on generated inputs.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import random
import shutil
import stat
import sys

import numpy as np
import pytest

from tests.references import import_reference
from vqacap.metrics.captions import (
    evaluate_captions,
    evaluate_captions_per_image,
    load_annotations,
    load_results,
)
from vqacap.metrics.captions import meteor as meteor_module
from vqacap.metrics.captions import spice as spice_module
from vqacap.metrics.captions.bleu import bleu
from vqacap.metrics.captions.cider import cider_d
from vqacap.metrics.captions.rouge import lcs_length, rouge_l

pycoco_bleu = import_reference("pycocoevalcap.bleu.bleu")
pycoco_cider = import_reference("pycocoevalcap.cider.cider")
pycoco_rouge = import_reference("pycocoevalcap.rouge.rouge")

NO_JAVA_METRICS = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"]


def _generated(seed: int, num_images: int, vocab: int) -> tuple[dict, dict]:
    """Tokenized references and results: varied lengths, repeated words, empty and one-word captions,
    one to seven references per image, punctuation-like tokens."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab)] + ["-lrb-", "-rrb-", "'s", "n't", "a", "the"]

    def caption() -> str:
        x = rng.random()
        if x < 0.05:
            return ""
        if x < 0.12:
            return rng.choice(words)
        pool = words[: rng.randint(2, len(words))]
        return " ".join(rng.choice(pool) for _ in range(rng.randint(2, 22)))

    references = {i: [caption() for _ in range(rng.randint(1, 7))] for i in range(num_images)}
    results = {i: caption() for i in range(num_images)}
    return references, results


def _pycoco(references: dict, results: dict) -> dict:
    """pycocoevalcap's scorers on tokenized captions: ({metric: corpus}, {metric: per-image})."""
    gts = {i: list(refs) for i, refs in references.items()}
    res = {i: [results[i]] for i in references}
    with contextlib.redirect_stdout(io.StringIO()):  # BLEU prints its counts
        bleu_scores, bleu_images = pycoco_bleu.Bleu(4).compute_score(gts, res)
    cider, cider_images = pycoco_cider.Cider().compute_score(gts, res)
    rouge, rouge_images = pycoco_rouge.Rouge().compute_score(gts, res)
    totals = {f"Bleu_{k + 1}": bleu_scores[k] for k in range(4)} | {"ROUGE_L": rouge, "CIDEr": cider}
    images = {f"Bleu_{k + 1}": bleu_images[k] for k in range(4)} | {
        "ROUGE_L": rouge_images,
        "CIDEr": cider_images,
    }
    return totals, images


@pytest.mark.parametrize("seed", range(12))
def test_bleu_rouge_cider_equal_pycocoevalcap_on_generated_captions(seed):
    num_images = [1, 2, 3, 7, 40, 150][seed % 6]
    references, results = _generated(seed, num_images, vocab=[3, 12, 80][seed % 3])
    expected_totals, expected_images = _pycoco(references, results)
    totals, images = evaluate_captions_per_image(references, results, metrics=NO_JAVA_METRICS, tokenize=False)
    for name in NO_JAVA_METRICS:
        assert totals[name] == pytest.approx(expected_totals[name], abs=1e-9), name
        got = np.array([images[i][name] for i in references])
        np.testing.assert_allclose(
            got, np.asarray(expected_images[name], dtype=float), atol=1e-9, err_msg=name
        )


def test_scorers_on_a_larger_corpus_equal_pycocoevalcap():
    references, results = _generated(99, num_images=600, vocab=300)
    refs, cands = [references[i] for i in references], [results[i] for i in references]
    expected_totals, expected_images = _pycoco(references, results)
    bleu_totals, bleu_images = bleu(refs, cands)
    np.testing.assert_allclose(bleu_totals, [expected_totals[f"Bleu_{k}"] for k in range(1, 5)], atol=1e-9)
    np.testing.assert_allclose(
        bleu_images, np.array([expected_images[f"Bleu_{k}"] for k in range(1, 5)]), atol=1e-9
    )
    cider, cider_images = cider_d(refs, cands)
    assert cider == pytest.approx(expected_totals["CIDEr"], abs=1e-9)
    np.testing.assert_allclose(cider_images, expected_images["CIDEr"], atol=1e-9)
    rouge, rouge_images = rouge_l(refs, cands)
    assert rouge == pytest.approx(expected_totals["ROUGE_L"], abs=1e-12)
    np.testing.assert_allclose(rouge_images, expected_images["ROUGE_L"], atol=1e-12)


def test_published_single_sentence_example():
    # nlg-eval's documented values for this example (computed with the coco-caption scorers).
    scores = evaluate_captions(
        {0: ["this is a test", "this is also a test"]}, {0: "this is a good test"}, metrics=NO_JAVA_METRICS
    )
    assert scores["Bleu_1"] == pytest.approx(0.799999, abs=1e-6)
    assert scores["Bleu_2"] == pytest.approx(0.632455, abs=1e-6)
    assert scores["Bleu_3"] == pytest.approx(0.5108729, abs=1e-6)
    assert scores["Bleu_4"] == pytest.approx(9.036020031392194e-05, rel=1e-9)
    assert scores["ROUGE_L"] == pytest.approx(0.9070631970260222, abs=1e-12)
    assert scores["CIDEr"] == 0.0  # one image: log(1) = 0 makes every idf 0


def test_bit_parallel_lcs_equals_dynamic_programming():
    rng = random.Random(3)

    def dp(a, b):
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(1, len(a) + 1):
            for j in range(1, len(b) + 1):
                same = a[i - 1] == b[j - 1]
                table[i][j] = table[i - 1][j - 1] + 1 if same else max(table[i - 1][j], table[i][j - 1])
        return table[-1][-1]

    for _ in range(300):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        b = [rng.choice("abcde") for _ in range(rng.randint(0, 70))]
        assert lcs_length(a, b) == dp(a, b)


def test_an_empty_result_scores_zero_and_does_not_crash():
    references = {1: ["a dog runs", "a dog is running"], 2: ["a red car"]}
    totals, images = evaluate_captions_per_image(references, {1: "", 2: "a red car"}, metrics=NO_JAVA_METRICS)
    assert all(value == 0.0 for value in images[1].values())
    assert images[2]["Bleu_1"] == pytest.approx(1.0)
    assert totals["ROUGE_L"] == pytest.approx(0.5)


def test_tokenization_is_applied_before_scoring():
    references = {1: ["A dog, running!", "The dog runs."], 2: ["Two cats (black)."]}
    tokenized = {1: ["a dog running", "the dog runs"], 2: ["two cats -lrb- black -rrb-"]}
    results = {1: "A dog runs.", 2: "Two cats..."}
    raw = evaluate_captions(references, results, metrics=NO_JAVA_METRICS)
    assert raw == evaluate_captions(
        tokenized, {1: "a dog runs", 2: "two cats"}, NO_JAVA_METRICS, tokenize=False
    )


def test_mismatched_images_are_one_line_errors_with_counts():
    references = {1: ["a dog"], 2: ["a cat"], 3: ["a cow"]}
    with pytest.raises(
        ValueError, match=r"1 result image ids are not in the annotations \(e\.g\. 9\)"
    ) as error:
        evaluate_captions(references, {1: "a dog", 2: "a cat", 3: "a cow", 9: "a bird"})
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=r"2 annotated images have no result"):
        evaluate_captions(references, {1: "a dog"})
    with pytest.raises(ValueError, match="unknown caption metric"):
        evaluate_captions(references, {1: "a", 2: "b", 3: "c"}, metrics=["BLEU"])
    with pytest.raises(ValueError, match="no images"):
        evaluate_captions({}, {})
    with pytest.raises(ValueError, match="non-empty list"):
        evaluate_captions({1: []}, {1: "a dog"})


def _write_coco(tmp_path, references: dict, results: list) -> tuple:
    images = [{"id": i, "file_name": f"{i}.jpg"} for i in references]
    annotations = [
        {"image_id": i, "caption": c, "id": 10 * i + n}
        for i, caps in references.items()
        for n, c in enumerate(caps)
    ]
    annotations_path, results_path = tmp_path / "captions.json", tmp_path / "results.json"
    annotations_path.write_text(json.dumps({"images": images, "annotations": annotations}))
    results_path.write_text(json.dumps(results))
    return annotations_path, results_path


REFERENCES = {
    101: [
        "A man riding a wave on top of a surfboard.",
        "A surfer rides a large wave!",
        "Man on a surf board.",
    ],
    202: ["Two dogs playing in the snow.", "A couple of dogs run through snow", "Dogs (brown) in snow."],
    303: ["A plate of food with broccoli.", "Broccoli and rice on a white plate.", "A meal: rice, broccoli."],
}
RESULTS = [
    {"image_id": 101, "caption": "a man riding a wave on a surfboard"},
    {"image_id": 202, "caption": "two dogs are playing in the snow"},
    {"image_id": 303, "caption": "a plate of food with rice and broccoli"},
]


def test_loaders_read_coco_files_in_image_order(tmp_path):
    annotations_path, results_path = _write_coco(tmp_path, REFERENCES, RESULTS)
    assert load_annotations(annotations_path) == REFERENCES
    assert list(load_annotations(annotations_path)) == [101, 202, 303]
    assert load_results(results_path) == {r["image_id"]: r["caption"] for r in RESULTS}


def test_loaders_reject_duplicates_and_uncaptioned_images(tmp_path):
    annotations_path, results_path = _write_coco(tmp_path, REFERENCES, [*RESULTS, RESULTS[1]])
    with pytest.raises(ValueError, match="image 202 has more than one result caption"):
        load_results(results_path)
    data = json.loads(annotations_path.read_text())
    data["images"].append({"id": 404})
    annotations_path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"1 images have no caption \(e\.g\. image 404\)"):
        load_annotations(annotations_path)
    results_path.write_text(json.dumps({"image_id": 1}))
    with pytest.raises(ValueError, match="must be a JSON list"):
        load_results(results_path)


@pytest.mark.skipif(
    shutil.which("java") is None, reason="java is not installed: coco-caption's tokenizer is Java"
)
def test_full_pipeline_equals_coco_caption(tmp_path):
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    annotations_path, results_path = _write_coco(tmp_path, REFERENCES, RESULTS)
    references, results = load_annotations(annotations_path), load_results(results_path)
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in caps] for i, caps in references.items()})
    res = tokenizer.tokenize({i: [{"caption": results[i]}] for i in references})
    expected, _ = _pycoco(gts, {i: res[i][0] for i in res})
    scores = evaluate_captions(references, results, metrics=NO_JAVA_METRICS)
    assert list(scores) == NO_JAVA_METRICS
    for name in NO_JAVA_METRICS:
        assert scores[name] == pytest.approx(expected[name], abs=1e-9), name


def test_unavailable_java_metrics_are_skipped_with_one_line_messages(monkeypatch, caplog):
    monkeypatch.setattr(meteor_module, "unavailable", lambda: "METEOR skipped: no `java` on PATH")
    monkeypatch.setattr(
        spice_module, "unavailable", lambda: "SPICE skipped: Stanford CoreNLP 3.6.0 is missing"
    )
    with caplog.at_level(logging.WARNING):
        scores = evaluate_captions(REFERENCES, {r["image_id"]: r["caption"] for r in RESULTS})
    assert list(scores) == NO_JAVA_METRICS
    assert [r.getMessage() for r in caplog.records] == [
        "METEOR skipped: no `java` on PATH",
        "SPICE skipped: Stanford CoreNLP 3.6.0 is missing",
    ]


def test_spice_without_corenlp_models_says_so_and_never_downloads(monkeypatch, tmp_path):
    (tmp_path / "spice" / "lib").mkdir(parents=True)
    (tmp_path / "spice" / spice_module.JAR).write_bytes(b"")
    monkeypatch.setattr(spice_module, "spice_dir", lambda: tmp_path / "spice")
    reason = spice_module.unavailable()
    assert reason.startswith("SPICE skipped: Stanford CoreNLP 3.6.0 is not in")
    assert "stanford-corenlp-3.6.0-models.jar" in reason
    assert list((tmp_path / "spice" / "lib").iterdir()) == []


def test_spice_runs_the_jars_main_class_and_reads_its_f_scores(tmp_path):
    # A stand-in for `java`: checks the command line and writes SPICE's output format.
    fake_java = tmp_path / "java"
    fake_java.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        "args = sys.argv[1:]\n"
        "at = args.index('edu.anu.spice.SpiceScorer')\n"
        "assert args[0] == '-Xmx8G' and '--add-opens=java.base/java.lang=ALL-UNNAMED' in args[:at], args\n"
        "assert args[at - 2] == '-cp' and args[at - 1].split(':')[0].endswith('spice-1.0.jar'), args\n"
        "assert '-subset' in args and '-silent' in args, args\n"
        "items = json.load(open(args[at + 1]))\n"
        "out = [{'image_id': it['image_id'], 'scores': {'All': {'f': 'NaN' if it['test'] == '' else "
        "len(it['test']) / 100, 'pr': 0.5}}} for it in items]\n"
        "json.dump(out, open(args[args.index('-out') + 1], 'w'))\n"
    )
    fake_java.chmod(fake_java.stat().st_mode | stat.S_IEXEC)
    references = [["a dog", "the dog"], ["a cat"]]
    score, per_image = spice_module.spice(
        references, ["a dog runs", "cat"], java=str(fake_java), folder=tmp_path, cache=tmp_path / "cache"
    )
    assert per_image == [0.1, 0.03] and score == pytest.approx(0.065)
    score, per_image = spice_module.spice(
        references, ["", "cat"], java=str(fake_java), folder=tmp_path, cache=tmp_path / "cache"
    )
    assert np.isnan(per_image[0]) and np.isnan(score)  # as pycocoevalcap: NaN propagates to the mean


def _cli(capsys, *args) -> tuple[int, str, str]:
    from vqacap.evaluate import main

    code = main(["captions", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_prints_the_coco_caption_table_and_json(tmp_path, capsys):
    annotations_path, results_path = _write_coco(tmp_path, REFERENCES, RESULTS)
    common = ["--annotations", annotations_path, "--results", results_path]
    code, out, _ = _cli(capsys, *common, "--metrics", "Bleu_4", "CIDEr", "--json")
    assert code == 0
    printed = json.loads(out)
    expected = evaluate_captions(
        REFERENCES, {r["image_id"]: r["caption"] for r in RESULTS}, ["Bleu_4", "CIDEr"]
    )
    assert printed == expected and list(printed) == ["Bleu_4", "CIDEr"]
    code, out, _ = _cli(capsys, *common, "--metrics", "ROUGE_L", "Bleu_1", "--no-tokenize")
    assert code == 0
    lines = out.strip().splitlines()
    assert [line.split(": ")[0] for line in lines] == ["Bleu_1", "ROUGE_L"]
    assert all(len(line.split(": ")[1]) == 5 for line in lines)  # "%0.3f" as coco-caption prints


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    annotations_path, results_path = _write_coco(tmp_path, REFERENCES, RESULTS[:2])
    code, out, err = _cli(
        capsys, "--annotations", annotations_path, "--results", results_path, "--metrics", "CIDEr"
    )
    assert code == 2 and out == ""  # the exit status of evaluate vqa's refusals too
    assert err.count("\n") == 1 and "1 annotated images have no result (e.g. 303)" in err
    assert err.strip().endswith("(--present-only scores those)")


def test_present_only_scores_the_images_with_results_and_says_how_many(tmp_path, capsys):
    """A debug=limit run's results cover part of the split: they were refused with no way forward."""
    annotations_path, results_path = _write_coco(tmp_path, REFERENCES, RESULTS[:2])
    common = ["--annotations", annotations_path, "--results", results_path, "--metrics", "CIDEr", "Bleu_4"]
    code, out, _ = _cli(capsys, *common, "--present-only")
    assert code == 0 and out.splitlines()[0] == "scored 2 of 3 annotated images (--present-only)"
    expected = evaluate_captions(
        {i: REFERENCES[i] for i in (101, 202)},
        {r["image_id"]: r["caption"] for r in RESULTS[:2]},
        ["CIDEr", "Bleu_4"],
    )
    code, out, _ = _cli(capsys, *common, "--present-only", "--json")
    assert json.loads(out) == {**expected, "images": {"scored": 2, "annotated": 3}}


def test_references_too_short_for_higher_order_ngrams_match_pycocoevalcap():
    bleu_ref = import_reference("pycocoevalcap.bleu.bleu").Bleu
    refs = {1: ["a dog"], 2: ["a cat"]}
    hyps = {1: "a dog", 2: "a cat"}
    ours = evaluate_captions(refs, hyps, metrics=["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"], tokenize=False)
    theirs, _ = bleu_ref(4).compute_score(refs, {i: [h] for i, h in hyps.items()})
    for k in range(4):
        assert ours[f"Bleu_{k + 1}"] == pytest.approx(theirs[k], abs=1e-9)

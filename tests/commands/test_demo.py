"""`vqacap demo` in a real browser: the server started as a user starts it (a subprocess on a free port) with tiny real
models (tests.helpers.pixels.pixel_chain), headless Chromium (Debian's `chromium`, driven by Playwright's Python API; nothing
downloads a browser) uploading a Shapes image, reading the caption and asking a question, checked against what
`vqacap caption` and `vqacap answer` print for the same image and models; bad input shows a message in the page and
the server goes on."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.configs import compose_train
from tests.helpers.pixels import pixel_chain
from vqacap.cli import main as vqacap
from vqacap.data.pixels import RegionChoice
from vqacap.demo.app import DemoApp
from vqacap.predict import load_models

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
QUESTION = "What color is the circle?"
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Tiny real models; the captioner writes at least four words (three steps of training alone end at once)."""
    torch.set_num_threads(1)
    return pixel_chain(tmp_path_factory.mktemp("demo"), captioner=["model.decoding.min_length=4"])


@pytest.fixture(scope="module")
def demo(chain):
    """The demo's URL while `vqacap demo` runs in a subprocess on a free port; stopped after the tests."""
    command = [sys.executable, "-m", "vqacap.cli", "demo", "--detector", chain["detector"],
               "--captioner", chain["captioner"], "--vqa", chain["vqa"], "--port", "0",
               "--examples", str(chain["shapes"] / "images" / "test"), "--max-upload-mb", "0.5"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:  # keeps the pipe drained, and finds the address
        for line in server.stdout:
            lines.append(line)
            if "serving on" in line:
                started.set()
        started.set()

    threading.Thread(target=read, daemon=True).start()
    started.wait(120)
    found = [re.search(r"http://\S+/", line) for line in lines]
    url = next((m.group(0) for m in found if m), None)
    assert url is not None and server.poll() is None, "".join(lines)
    yield {"url": url, "process": server, "lines": lines}
    server.terminate()
    server.wait(30)


@pytest.fixture(scope="module")
def page(demo, tmp_path_factory):
    """One headless Chromium for the module's browser tests, on the demo's page."""
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="needs the dev extra's playwright")
    with playwright_api.sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("profile")), executable_path=str(CHROMIUM), headless=True, args=FLAGS,
            viewport={"width": 1200, "height": 900},
        )  # fmt: skip
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(demo["url"])
        page.wait_for_selector("#examples button")
        yield page
        context.close()


def upload(page, path: Path) -> None:
    """Choose `path` in the file input and wait for the page to show the caption or a message."""
    page.evaluate("() => { $('status').textContent = 'waiting'; $('message').textContent = ''; }")
    page.set_input_files("#file", str(path))
    page.wait_for_function(
        "() => !document.getElementById('status').textContent.match(/^(waiting|reading)/)"
        " || document.getElementById('message').textContent"
    )


def message(page) -> str:
    return page.inner_text("#message") if page.is_visible("#message") else ""


def test_the_page_captions_and_answers_as_the_commands_do(chain, demo, page, tmp_path, capsys):
    image = chain["shapes"] / "images" / "test" / "000031.png"
    upload(page, image)
    assert message(page) == ""
    caption = page.get_attribute("#caption", "data-caption")
    assert (
        vqacap(["caption", str(image), "--detector", chain["detector"], "--captioner", chain["captioner"]])
        == 0
    )
    assert capsys.readouterr().out.rstrip("\n").split("\t") == [str(image), caption]

    words = page.query_selector_all("#caption .word")
    assert len(words) >= 4 and [w.inner_text() for w in words] == caption.split()
    first_map = page.get_attribute("#caption-map", "src")  # the first word's, until another is chosen
    words[-1].hover()  # hovering a word shows its map and names its most attended regions
    assert "active" in words[-1].get_attribute("class") and "active" not in words[0].get_attribute("class")
    assert page.inner_text("#word-regions").startswith(f'"{caption.split()[-1]}" attends to: ')
    word_map = page.get_attribute("#caption-map", "src")
    assert word_map.startswith("data:image/png;base64,") and first_map.startswith("data:image/png;base64,")
    page.check("#boxes-toggle")  # the detector's boxes with their names instead
    assert "regions found by the detector" in page.inner_text("#word-regions")
    assert page.get_attribute("#caption-map", "src") != word_map
    page.uncheck("#boxes-toggle")
    assert page.get_attribute("#caption-map", "src") == word_map

    page.fill("#question", QUESTION)
    page.click("#ask")
    page.wait_for_function("() => document.getElementById('answer').dataset.answer")
    shown = [
        (li.get_attribute("data-answer"), li.query_selector(".score").inner_text())
        for li in page.query_selector_all("#answers li")
    ]
    assert vqacap(["answer", str(image), "--detector", chain["detector"], "--vqa", chain["vqa"],
                   "--question", QUESTION]) == 0  # fmt: skip
    printed = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert shown == [(answer, score) for score, answer in printed]
    assert page.get_attribute("#answer", "data-answer") == printed[0][1]
    assert page.is_visible("#answer-map") and "the question attends to" in page.inner_text("#answer-regions")
    page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
    with Image.open(tmp_path / "demo.png") as shot:
        assert shot.width >= 1000 and shot.height >= 600


def test_bad_input_shows_a_message_and_the_server_goes_on(chain, demo, page, tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not pixels")
    upload(page, not_an_image)
    assert "notes.png: unreadable image" in message(page)

    huge = tmp_path / "huge.png"
    Image.new("RGB", (8000, 7000), (40, 90, 200)).save(huge)  # 56 megapixels, a few hundred bytes as a PNG
    upload(page, huge)
    assert "huge.png: 8000x7000 pixels is more than the 50,000,000 an image may have" in message(page)

    heavy = tmp_path / "heavy.png"  # 0.75 MB of noise: over --max-upload-mb 0.5, refused before it is sent
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (500, 500, 3), dtype=np.uint8)).save(heavy)
    upload(page, heavy)
    assert message(page).startswith("heavy.png: 0.") and "more than the 0.5 MB the demo takes" in message(
        page
    )

    page.click("#examples button")  # an example image, and then an empty question
    page.wait_for_function("() => document.getElementById('status').textContent.includes('regions')")
    assert message(page) == ""
    page.fill("#question", "   ")
    page.click("#ask")
    page.wait_for_function("() => document.getElementById('message').textContent")
    assert message(page) == "type a question first"
    page.fill("#question", "zzz qqq")
    page.click("#ask")
    page.wait_for_function("() => document.getElementById('message').textContent.includes('vocabulary')")

    assert demo["process"].poll() is None, "".join(demo["lines"])
    accented = tmp_path / "fotó 31.png"  # and the server still answers, whatever the file's name
    accented.write_bytes((chain["shapes"] / "images" / "test" / "000031.png").read_bytes())
    upload(page, accented)
    assert message(page) == "" and page.inner_text("#status").startswith("fot__31.png: 128 x 128 pixels")


def call(app: DemoApp, method: str, path: str, body: bytes = b"", **headers: str) -> tuple[str, dict]:
    """(status, JSON reply) of one request to the WSGI application, as the server hands it over."""
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "CONTENT_LENGTH": str(len(body)),
               "wsgi.input": io.BytesIO(body), **{f"HTTP_{k.upper()}": v for k, v in headers.items()}}  # fmt: skip
    status = []
    reply = b"".join(app(environ, lambda s, h: status.append(s)))
    return status[0], json.loads(reply)


def test_the_app_answers_bad_requests_with_a_line_and_a_status(chain, tmp_path):
    """Without a browser: what the page shows for each bad request, and that a good one still works after them."""
    args = argparse.Namespace(detector=Path(chain["detector"]), prototxt=None, classes=None, attributes=None,
                              device="cpu")  # fmt: skip
    detector, captioner = load_models(args, Path(chain["captioner"]), "captioning", "--captioner")
    vqa = load_models(args, Path(chain["vqa"]), "VQA", "--vqa")[1]
    app = DemoApp(detector, captioner, vqa, RegionChoice(), tmp_path / "uploads", max_upload_bytes=50_000)
    (tmp_path / "uploads").mkdir()
    image = (chain["shapes"] / "images" / "test" / "000031.png").read_bytes()
    strip = io.BytesIO()
    Image.new("RGB", (10000, 10)).save(strip, format="PNG")
    cases = {
        ("POST", "/api/image", b"", "no image: pick or drop an image file"): "400 Bad Request",
        ("POST", "/api/image", b"x" * 60_000, "more than the 0.05 MB the demo takes"): "413 Content Too Large",
        ("POST", "/api/image", strip.getvalue(), "strip.png: 10000x10 pixels is"): "400 Bad Request",
        ("POST", "/api/answer", b"[1]", "the request is not a JSON object"): "400 Bad Request",
        ("POST", "/api/answer", b'{"id": "nope", "question": "what?"}', "no longer kept"): "400 Bad Request",
        ("GET", "/examples/3", b"", "no example 3"): "404 Not Found",
        ("GET", "/etc/passwd", b"", "no such page"): "404 Not Found",
    }  # fmt: skip
    for (method, path, body, expected), status in cases.items():
        got, reply = call(app, method, path, body, x_filename="strip.png")
        assert got == status and expected in reply["error"] and "\n" not in reply["error"], (path, reply)
    status, reply = call(app, "POST", "/api/image", image, x_filename="../../000031.png")
    assert status == "200 OK" and reply["name"] == "000031.png", reply  # kept inside the upload folder
    assert (tmp_path / "uploads" / reply["id"] / "000031.png").is_file()
    status, answer = call(
        app, "POST", "/api/answer", json.dumps({"id": reply["id"], "question": QUESTION}).encode()
    )
    assert status == "200 OK" and answer["answer"] == answer["top_answers"][0][0]


def test_a_model_named_by_a_run_that_does_not_exist_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VQACAP_ROOT", str(tmp_path))
    assert (
        vqacap(["demo", "--detector", "latest:detector-nowhere", "--captioner", "c.ckpt", "--port", "0"]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert "no finished run of experiment 'detector-nowhere'" in err and len(err.splitlines()) == 1, err


def test_make_demos_recipe_trains_all_three_models_on_one_generated_folder(tmp_path):
    """`make demo` (vqacap.pixels --data shapes_demo): the detector, captioner and VQA runs read one folder of a
    fifth of Shapes; a generator setting that differed between them would regenerate it under the others."""
    from vqacap.pixels import DETECTOR_RECIPES, parse_args, training_jobs

    args = parse_args(["--data", "shapes_demo", "--features", "detected"])
    runs = [["experiment=" + DETECTOR_RECIPES["shapes_demo"]]]
    runs += [job.command[3:] for task in ("caption", "vqa") for job in training_jobs(args, task, tmp_path)]
    configs = [compose_train(overrides, tmp_path / "out", tmp_path / "data") for overrides in runs]
    assert [c.data.data_dir for c in configs] == [str(tmp_path / "data" / "shapes_demo")] * 3
    assert all(c.data.generator == configs[0].data.generator for c in configs)
    assert dict(configs[0].data.generator.sizes) == {"train": 800, "val": 100, "test": 100}
    assert [c.data.get("store") for c in configs[1:]] == ["detected.h5", "detected.h5"]

"""The demo's web application: one static page (page.html) and a small JSON API over a trained detector, captioner
and VQA model, as a WSGI callable served by the standard library (`vqacap demo`).

    GET  /                 the page
    GET  /api/info         which models are loaded, the example images
    GET  /examples/<n>     example image n (Shapes test images, scikit-image's photographs when installed)
    POST /api/image        the image file as the body -> its id, the detector's boxes and the caption with one
                           attention map per word
    POST /api/answer       {"id", "question"} -> the top answers with their scores and the attention map

Each image goes through the same pieces as `vqacap caption` / `vqacap answer` (vqacap.predict: the detector's region
choice, `predict_step`, the maps of vqacap.draw), so the page shows what the commands print. Bad input (not an image,
an image too large, an empty question, words the model does not know) is answered with {"error": one line} and a 4xx
status; the server goes on serving. Not for the open internet: it binds 127.0.0.1 unless told otherwise and has no
authentication.
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import traceback
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from urllib.parse import unquote
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from PIL import Image

from vqacap.draw import boxes_figure, heat_overlay, top_regions
from vqacap.images import ImageError, open_rgb
from vqacap.predict import check_sizes, predict_image

PAGE = Path(__file__).with_name("page.html")
MAP_SIZE = 480  # longer side of the maps the page shows, pixels
KEPT_UPLOADS = 32  # images a question can still be asked about
# skimage.data's photographs shipped inside scikit-image (no download), with their licenses as scikit-image states them.
PHOTOGRAPHS = {
    "astronaut": "public domain (NASA)",
    "chelsea": "CC0 (Stefan van der Walt)",
    "coffee": "CC0 (Rachel Michetti)",
    "rocket": "public domain (SpaceX)",
}


class RequestError(ValueError):
    """What the page shows the user: one line, with the HTTP status to answer with."""

    def __init__(self, message: str, status: str = "400 Bad Request") -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Example:
    name: str
    data: bytes  # the image file's bytes
    media_type: str
    note: str  # where it comes from, its license


def shapes_examples(folder: Path, count: int = 6) -> list[Example]:
    """The first `count` images of a Shapes split folder (data/shapes/images/test), if there is one."""
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:count]
    media = {".png": "image/png"}
    return [
        Example(p.name, p.read_bytes(), media.get(p.suffix.lower(), "image/jpeg"), "Shapes") for p in files
    ]


def photograph_examples() -> list[Example]:
    """scikit-image's photographs (astronaut, chelsea, coffee, rocket) as JPEG files, when scikit-image is installed."""
    try:
        from skimage import data
    except ImportError:
        return []
    examples = []
    for name, license_text in PHOTOGRAPHS.items():
        buffer = io.BytesIO()
        Image.fromarray(getattr(data, name)()).convert("RGB").save(buffer, format="JPEG", quality=90)
        examples.append(
            Example(f"{name}.jpg", buffer.getvalue(), "image/jpeg", f"scikit-image, {license_text}")
        )
    return examples


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def regions_named(record: dict, attention, top_k: int) -> list[dict]:
    """The `top_k` most attended regions of attention (K,): weight, box (image pixels) and the detector's name."""
    labels = record.get("labels") or []
    return [
        {
            "weight": round(w, 4),
            "box": [round(c, 1) for c in record["boxes"][i].tolist()],
            "name": labels[i] if i < len(labels) else f"region {i}",
        }
        for i, w in top_regions(attention, top_k)
    ]


class DemoApp:
    """The WSGI application. `vqa` may be None (the page then hides the question); one request at a time runs the
    models or changes the kept uploads (a lock), the others wait."""

    def __init__(
        self,
        detector,
        captioner,
        vqa,
        choice,
        upload_dir: Path,
        examples: list[Example] = (),
        top_k: int = 3,
        max_upload_bytes: int = 20_000_000,
        models: dict[str, str] | None = None,
    ) -> None:
        self.detector, self.captioner, self.vqa, self.choice = detector, captioner, vqa, choice
        self.upload_dir = upload_dir
        self.examples = list(examples)
        self.top_k = top_k
        self.max_upload_bytes = max_upload_bytes
        self.models = models or {}
        self.uploads: OrderedDict[str, Path] = OrderedDict()
        self.lock = threading.Lock()

    # -- WSGI --------------------------------------------------------------------------------------------------------
    def __call__(self, environ: dict, start_response):
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
        try:
            if method == "GET" and path in ("/", "/index.html"):
                return self._send(start_response, "200 OK", PAGE.read_bytes(), "text/html; charset=utf-8")
            if method == "GET" and path == "/api/info":
                return self._json(start_response, self.info())
            if method == "GET" and (found := re.fullmatch(r"/examples/(\d+)", path)):
                example = self._example(int(found.group(1)))
                return self._send(start_response, "200 OK", example.data, example.media_type)
            if method == "POST" and path == "/api/image":
                name = unquote(environ.get("HTTP_X_FILENAME", "image"))  # the page sends it URI-encoded
                return self._json(start_response, self.image(self._body(environ), name))
            if method == "POST" and path == "/api/answer":
                try:
                    asked = json.loads(self._body(environ) or b"{}")
                except ValueError:
                    raise RequestError("the request is not JSON") from None
                if not isinstance(asked, dict):
                    raise RequestError("the request is not a JSON object")
                return self._json(
                    start_response, self.answer(str(asked.get("id", "")), asked.get("question"))
                )
            raise RequestError(f"{method} {path}: no such page", "404 Not Found")
        except RequestError as err:
            return self._json(start_response, {"error": str(err)}, err.status)
        except (
            Exception
        ) as err:  # the server goes on; the page shows the one line, the terminal the traceback
            traceback.print_exc()
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            return self._json(
                start_response, {"error": f"{type(err).__name__}: {message}"}, "500 Internal Server Error"
            )

    def _send(self, start_response, status: str, body: bytes, media_type: str):
        start_response(status, [("Content-Type", media_type), ("Content-Length", str(len(body)))])
        return [body]

    def _json(self, start_response, payload: dict, status: str = "200 OK"):
        return self._send(start_response, status, json.dumps(payload).encode("utf-8"), "application/json")

    def _body(self, environ: dict) -> bytes:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise RequestError("bad Content-Length") from None
        if length > self.max_upload_bytes:
            raise RequestError(
                f"the file is {length / 1e6:.1f} MB, more than the {self.max_upload_bytes / 1e6:g} MB the demo "
                "takes",
                "413 Content Too Large",
            )
        return environ["wsgi.input"].read(length)

    def _example(self, n: int) -> Example:
        if not 0 <= n < len(self.examples):
            raise RequestError(f"no example {n}", "404 Not Found")
        return self.examples[n]

    # -- the API -----------------------------------------------------------------------------------------------------
    def info(self) -> dict:
        return {
            "vqa": self.vqa is not None,
            "models": self.models,
            "max_upload_bytes": self.max_upload_bytes,
            "examples": [
                {"name": e.name, "note": e.note, "url": f"/examples/{n}"} for n, e in enumerate(self.examples)
            ],
        }

    def image(self, data: bytes, name: str) -> dict:
        """Keep the uploaded image; its boxes, and its caption with each word's map when a captioner is loaded."""
        if not data:
            raise RequestError("no image: pick or drop an image file")
        with self.lock:
            path = self._keep(data, name)
        image = self._open(path)
        with self.lock:
            record = self._predict(path, self.captioner)
        labels = record.get("labels") or []
        return {
            "id": path.parent.name,
            "name": path.name,
            "size": list(image.size),
            "regions": len(record["boxes"]),
            "boxes_map": data_url(boxes_figure(image, record["boxes"], labels, MAP_SIZE)),
            "caption": record["caption"],
            "words": [
                {
                    "word": word,
                    "map": data_url(
                        heat_overlay(
                            image, record["boxes"], record["attention"][t], self.top_k, MAP_SIZE, labels
                        )
                    ),
                    "regions": regions_named(record, record["attention"][t], self.top_k),
                }
                for t, word in enumerate(record["words"])
            ],
        }

    def answer(self, image_id: str, question) -> dict:
        """The VQA model's top answers with their scores to `question` about a kept image, and its attention map."""
        if self.vqa is None:
            raise RequestError("no VQA model loaded (start the demo with --vqa)")
        if not isinstance(question, str) or not question.strip():
            raise RequestError("type a question first")
        path = self.uploads.get(image_id)
        if path is None:
            raise RequestError("that image is no longer kept: pick it again")
        image = self._open(path)
        with self.lock:
            record = self._predict(path, self.vqa, question=question.strip())
        labels = record.get("labels") or []
        return {
            "question": question.strip(),
            "answer": record["answer"],
            "top_answers": [[a, round(float(s), 4)] for a, s in record["top_answers"]],
            "map": data_url(
                heat_overlay(image, record["boxes"], record["attention"], self.top_k, MAP_SIZE, labels)
            ),
            "regions": regions_named(record, record["attention"], self.top_k),
        }

    # -- pieces ------------------------------------------------------------------------------------------------------
    def _keep(self, data: bytes, name: str) -> Path:
        image_id = uuid.uuid4().hex
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).name)[:100].lstrip(".") or "image"
        path = self.upload_dir / image_id / safe
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
        self.uploads[image_id] = path
        while len(self.uploads) > KEPT_UPLOADS:
            _, old = self.uploads.popitem(last=False)
            old.unlink(missing_ok=True)
            old.parent.rmdir()
        return path

    def _open(self, path: Path) -> Image.Image:
        """The image as `vqacap caption` reads it, or the one-line reason it cannot be used (naming the file as the
        user named it)."""
        try:
            image = open_rgb(path)
            check_sizes([path], self.detector, self.choice.grid)
        except ImageError as err:
            raise RequestError(str(err).replace(str(path), path.name)) from None
        return image

    def _predict(self, path: Path, module, question: str | None = None) -> dict:
        try:
            return predict_image(path, self.detector, module, self.choice, question)
        except ImageError as err:
            raise RequestError(str(err).replace(str(path), path.name)) from None
        except ValueError as err:  # a question none of whose words the model knows
            raise RequestError(str(err).replace("--question: ", "")) from None


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a page left open does not keep the process alive


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # one line per request is noise in a terminal
        pass


def make_server(app: DemoApp, host: str, port: int) -> ThreadingWSGIServer:
    """A threaded WSGI server of the standard library bound to (host, port); port 0 picks a free one."""
    from wsgiref.simple_server import make_server as wsgi_server

    return wsgi_server(host, port, app, server_class=ThreadingWSGIServer, handler_class=QuietHandler)

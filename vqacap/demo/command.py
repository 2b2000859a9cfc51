"""`vqacap demo --detector CKPT --captioner CKPT [--vqa CKPT] [--host 127.0.0.1] [--port 8000]`: a local page in the
browser (each CKPT a file or `latest:<run name>`, the tested checkpoint of that run's newest finished run): pick or drop an image, read its caption with each word's attention over the detected boxes, ask a question and
see the top answers with their scores and the attention; the detector's boxes with their names on a toggle.

A small server of the standard library (vqacap.demo.app) with one static page: nothing to install beyond vqacap,
nothing fetched from the network by the server or the page. The models are loaded as `vqacap caption` and
`vqacap answer` load them (vqacap.predict), and each image is captioned and answered as they do it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from vqacap.predict import add_device_arguments, add_region_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--detector",
        required=True,
        type=Path,
        metavar="FILE",
        help="bottom-up detector: a vqacap checkpoint, the published .caffemodel (with --prototxt) or a "
        "converted .pth / .pkl of it, or latest:<run name>",
    )
    parser.add_argument(
        "--captioner",
        required=True,
        type=Path,
        metavar="CKPT",
        help="captioning checkpoint (or latest:<run name>)",
    )
    parser.add_argument(
        "--vqa",
        type=Path,
        metavar="CKPT",
        help="VQA checkpoint or latest:<run name> (without it: captions only)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (0: a free one)")
    parser.add_argument(
        "--examples",
        type=Path,
        metavar="DIR",
        help="folder of example images (default: the Shapes test images, <VQACAP_ROOT>/data/shapes/images/test)",
    )
    parser.add_argument("--beam", type=int, help="beam size (default: the checkpoint's decoding)")
    add_region_arguments(parser)
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="largest image file the page takes")
    add_device_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from vqacap.checkpoints import CheckpointError, find_checkpoint
    from vqacap.demo.app import DemoApp, make_server, photograph_examples, shapes_examples
    from vqacap.predict import load_models, region_choice

    if args.beam is not None and args.beam < 1:
        print(f"vqacap demo: --beam must be at least 1, got {args.beam}", file=sys.stderr)
        return 2
    try:
        log_dir = Path(os.environ.get("VQACAP_ROOT", ".")) / "outputs"
        for flag in ("detector", "captioner", "vqa"):  # latest:<run name>: that run's tested checkpoint
            spec = getattr(args, flag)
            if spec is not None and str(spec).startswith("latest:"):
                setattr(args, flag, find_checkpoint(str(spec), log_dir))
        detector, captioner = load_models(args, args.captioner, "captioning", "--captioner")
        vqa = load_models(args, args.vqa, "VQA", "--vqa")[1] if args.vqa is not None else None
        choice = region_choice(args)
    except (CheckpointError, OSError, ValueError) as err:
        print(f"vqacap demo: {err}", file=sys.stderr)
        return 2
    if args.beam is not None:
        captioner.decoding = replace(captioner.decoding, beam_size=args.beam)
    examples_dir = (
        args.examples or Path(os.environ.get("VQACAP_ROOT", ".")) / "data" / "shapes" / "images" / "test"
    )
    examples = shapes_examples(examples_dir) + photograph_examples()
    models = {"detector": str(args.detector), "captioner": str(args.captioner)}
    if args.vqa is not None:
        models["vqa"] = str(args.vqa)
    with tempfile.TemporaryDirectory(prefix="vqacap-demo-") as uploads:
        app = DemoApp(
            detector,
            captioner,
            vqa,
            choice,
            Path(uploads),
            examples,
            top_k=args.top_k,
            max_upload_bytes=int(args.max_upload_mb * 1e6),
            models=models,
        )
        try:
            server = make_server(app, args.host, args.port)
        except OSError as err:
            print(
                f"vqacap demo: cannot listen on {args.host}:{args.port} ({err.strerror or err})",
                file=sys.stderr,
            )
            return 2
        host, port = server.server_address[:2]
        print(f"vqacap demo: serving on http://{host}:{port}/ (Ctrl-C stops it)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    return 0

"""The local demo in the browser: `vqacap demo` (vqacap.demo.command) serves the WSGI application of vqacap.demo.app
and its one static page (page.html) over a trained detector, captioner and VQA model (see docs/demo.md)."""

"""The HTTP service: dense captions, captions of given boxes, whole-image captions and region
search over FastAPI, with a web page (``densecap/serve/static``) and dynamic batching.

    python tools/serve.py --weights CKPT [--index INDEX_DIR]       # or python -m densecap.serve

From Python: ``create_app(DenseCapService.load(weights, index_dir=...))`` is an ASGI app.
A top layer: it uses densecap.inference and densecap.retrieval; nothing in densecap imports it.
"""
from .app import create_app  # noqa: F401
from .service import BadRequest, DenseCapService  # noqa: F401

"""``tools/serve.py`` / ``python -m densecap.serve``: the HTTP API and web page on uvicorn.

    python tools/serve.py --weights CKPT [--index INDEX_DIR] [--host 127.0.0.1] [--port 8000]
        [--max-batch 8] [--max-wait-ms 10] [--max-upload-mb 20] [--max-pixels 40000000]
        [--token TOKEN] [KEY VALUE ...]

The model is loaded once, before the port opens. The token may also come from the environment
(``DENSECAP_TOKEN``). Binds 127.0.0.1 unless ``--host`` says otherwise.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from .service import DEFAULT_MAX_PIXELS

logger = logging.getLogger("densecap.serve")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="serve.py", description="Serve dense captions and region search over HTTP.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Trailing KEY VALUE pairs override config keys (e.g. TEST.DETECTIONS_PER_IMAGE 50).")
    g = p.add_argument_group("model and index")
    g.add_argument("--weights", required=True, metavar="CKPT", help="model checkpoint (.pth)")
    g.add_argument("--config-file", default="", metavar="FILE", help="YAML config over the checkpoint's (optional)")
    g.add_argument("--device", default=None, choices=("cpu", "cuda"), help="default: the config's MODEL.DEVICE")
    g.add_argument("--image-size", type=int, default=None, help="longest image side fed to the model (INPUT.MAX_SIZE)")
    g.add_argument("--index", default="", metavar="INDEX_DIR", help="a region index (tools/retrieve.py index) for /v1/search")
    g.add_argument("--images-root", default="", metavar="DIR",
                   help="the folder /v1/images serves indexed images from (default: the folder holding them all)")
    g.add_argument("--candidates", type=int, default=1000, help="fast search: regions re-ranked exactly (1000)")
    g.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    g.add_argument("--port", type=int, default=8000)
    g.add_argument("--max-batch", type=int, default=8, help="images per forward pass at most (dynamic batching)")
    g.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a request waits for others to batch with")
    g.add_argument("--max-upload-mb", type=float, default=20.0, help="larger uploads get 413")
    g.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help=f"images with more pixels get 400 (decompression bombs; {DEFAULT_MAX_PIXELS})")
    g.add_argument("--token", default=None,
                   help="require 'Authorization: Bearer TOKEN' on /v1/* and /metrics (or set DENSECAP_TOKEN)")
    g.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    return p


def _check(p: argparse.ArgumentParser, args) -> None:
    if args.max_batch < 1:
        p.error(f"--max-batch must be >= 1, got {args.max_batch}")
    if args.max_wait_ms < 0:
        p.error(f"--max-wait-ms must be >= 0, got {args.max_wait_ms}")
    if args.max_upload_mb <= 0:
        p.error(f"--max-upload-mb must be > 0, got {args.max_upload_mb}")
    if args.max_pixels < 1:
        p.error(f"--max-pixels must be >= 1, got {args.max_pixels}")
    if not 0 <= args.port <= 65535:
        p.error(f"--port must be in 0..65535, got {args.port}")
    if args.opts and len(args.opts) % 2:
        p.error(f"config overrides must be KEY VALUE pairs, got {args.opts}")
    if not os.path.isfile(args.weights):
        p.error(f"--weights {args.weights}: file not found")
    if args.index and not os.path.isdir(args.index):
        p.error(f"--index {args.index}: not a folder")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    logging.basicConfig(level=args.log_level.upper(), format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    token = args.token if args.token is not None else os.environ.get("DENSECAP_TOKEN") or None

    import torch
    import uvicorn

    from densecap.retrieval.index import RegionIndexError

    from .app import create_app
    from .service import DenseCapService

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        service = DenseCapService.load(
            args.weights, index_dir=args.index or None, config_file=args.config_file or None, opts=args.opts or (),
            device=args.device, image_size=args.image_size, images_root=args.images_root or None,
            max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_pixels=args.max_pixels,
            candidates=args.candidates,
        )
    except (RegionIndexError, FileNotFoundError, RuntimeError, ValueError, KeyError) as e:
        print(f"error: cannot start: {e}", file=sys.stderr)
        return 2
    app = create_app(service, token=token, max_upload_mb=args.max_upload_mb)
    h = service.health()
    logger.info("model %s (image size %d, whole-image caption: %s); index: %s; max batch %d, max wait %g ms%s",
                h["model"], h["image_size"], h["image_caption"],
                f"{h['num_images']} images, {h['num_regions']} regions" if h["index"] else "none",
                args.max_batch, args.max_wait_ms, "; token required" if token else "")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("binding %s: the server is reachable from other machines%s", args.host,
                       "" if token else " and has no token (--token)")
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    finally:
        service.close()
    return 0

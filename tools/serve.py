#!/usr/bin/env python
"""Serve dense captions and region search over HTTP (see densecap/serve/cli.py).

    python tools/serve.py --weights CKPT [--index INDEX_DIR] [--host 127.0.0.1] [--port 8000]
"""
import sys

from densecap.serve.cli import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Dense captions for images, folders, globs, videos and a webcam.

    python tools/infer.py --weights CKPT --input PATH [PATH ...] --output DIR [options] [KEY VALUE ...]

See ``python tools/infer.py --help`` and ``densecap/inference/cli.py``.
"""
import sys

from densecap.inference.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

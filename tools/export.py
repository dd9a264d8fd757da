#!/usr/bin/env python
"""Export the detector + region-feature part of a checkpoint (``--format onnx``).

    python tools/export.py --format onnx --weights CKPT --output detector.onnx [--check IMG ...]

See ``densecap/export/onnx.py``.
"""
import sys

from densecap.export.onnx import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

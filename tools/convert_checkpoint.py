#!/usr/bin/env python
"""Convert the original DenseCap Torch7 checkpoint into a densecap checkpoint.

    python tools/convert_checkpoint.py --input densecap-pretrained-vgg16.t7 --output densecap_vgg16.pth

See ``densecap/modeling/original/convert.py``.
"""
import sys

from densecap.modeling.original.convert import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

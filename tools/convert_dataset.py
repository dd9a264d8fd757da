#!/usr/bin/env python
"""Convert region captions into the project's region caption JSON (docs/DATASETS.md)::

    python tools/convert_dataset.py --from {csv,label-studio,coco,vg} --input FILE \
        [--image-root DIR] --output annotations.json [--to vg]

See densecap/data/convert.py.
"""
import sys

from densecap.data.convert import main

if __name__ == "__main__":
    sys.exit(main())

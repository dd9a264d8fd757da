#!/usr/bin/env python
"""Check a region caption dataset against its schema and the images on disk::

    python tools/check_dataset.py ANNOTATIONS --image-root DIR [--json report.json] [--figure stats.png]

Exit 0: no problem, 1: problems, 2: the file cannot be read. See densecap/data/check.py.
"""
import sys

from densecap.data.check import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Prepare Visual Genome region descriptions for training (logic: densecap/data/vg.py).

    python datasets/prepare_vg.py            # datasets/vg/* -> datasets/vg/prepared

or with explicit files::

    python datasets/prepare_vg.py --region-descriptions F --image-data F --splits F \\
        --image-dirs DIR [DIR ...] --output DIR [--max-tokens 15] [--min-token-count 15]

Prints the report (what was dropped and why) and saves it as OUTPUT/report.json.
"""
import os
import sys

from densecap.data.vg import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], vg_root=os.path.join(os.path.dirname(os.path.abspath(__file__)), "vg")))

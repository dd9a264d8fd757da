#!/usr/bin/env python
"""Benchmarks, each run side by side with its peer in one process and reported as ratios.

    python tools/benchmark.py TASK [--json FILE] [task options]

Tasks: prepare, eval, train, infer, retrieve, serve, convert, export (see ``densecap/benchmarks/<task>.py``).
``--json FILE`` writes the figures with the headline one under ``ratio``, ``seconds`` or
``peak_rss_gb``.
"""
import sys

from densecap.benchmarks import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Benchmark tasks. Each module ``densecap/benchmarks/<task>.py`` defines

    add_arguments(parser: argparse.ArgumentParser) -> None
    run(args) -> dict          # figures; the headline under "ratio", "seconds" or "peak_rss_gb"

and prints a readable table. ``main`` dispatches and writes ``--json``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from typing import List

TASKS = ("prepare", "eval", "train", "infer", "retrieve", "serve", "convert", "export")


def main(argv: List[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("tasks:", ", ".join(TASKS))
        return 0 if argv else 2
    task = argv[0]
    if task not in TASKS:
        print(f"unknown benchmark task '{task}'; choose one of {', '.join(TASKS)}", file=sys.stderr)
        return 2
    mod = importlib.import_module(f"densecap.benchmarks.{task}")
    parser = argparse.ArgumentParser(prog=f"benchmark.py {task}")
    parser.add_argument("--json", default="", help="also write the figures to this JSON file")
    mod.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    figures = mod.run(args)
    if args.json:
        from densecap.utils.io import atomic_write_json

        atomic_write_json(args.json, figures, indent=2)
    print(json.dumps(figures, indent=2))
    return 0

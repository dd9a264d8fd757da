"""Benchmark task ``convert``: peak memory and time of converting a full-size original DenseCap
checkpoint (Torch7, about 1.2 GB like the published ``densecap-pretrained-vgg16.t7``) into a
project checkpoint, against the targets (peak RSS <= 3 GB and <= 2.5x the file size).

    python tools/benchmark.py convert [--json FILE] [--input X.t7] [--workdir DIR] [--keep]
        [--seed 0] [--template NARROW.t7] [--no-breakdown]

Without ``--input`` the benchmark writes the checkpoint itself (:mod:`densecap.benchmarks.torch7_writer`):
the object tree of the narrow checkpoint written by the original Lua code, resized to the
published model's widths (VGG-16 64..512, fc 4096, RPN 256, LSTM 512, encoding 512, vocabulary
10,000, 15 tokens), random weights, gradients saved beside the weights as ``train.lua`` saves
them, and the parameters in the flat shared storages ``model:getParameters()`` leaves; the file is
generated while it is written (the writer holds no copy of it). Needs about 1.8 GB free in the
work folder (the file and the converted checkpoint); both are deleted at the end unless ``--keep``.

The conversion (``densecap.modeling.original.convert_torch7_checkpoint(input, output)``, what
``tools/convert_checkpoint.py`` runs) runs in a child process; its peak resident memory is that
child's ``ru_maxrss`` (``os.wait4``), its wall time from start to exit (interpreter start and
imports included). For the breakdown two more children run first on the same file: one that only
imports (the floor every conversion pays: Python, torch, the package) and one that only reads the
file with ``torchfile`` (``use_list_heuristic=False``); ``--no-breakdown`` skips them.

Headline ``peak_rss_gb`` (1 GB = 1e9 bytes); ``ratio`` = peak RSS / file size (target <= 2.5).
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

logger = logging.getLogger(__name__)

TARGET_PEAK_GB = 3.0
TARGET_RATIO = 2.5
FREE_BYTES_NEEDED = int(1.9e9)

_IMPORTS = "import sys, torch, torchfile, numpy; import densecap.modeling.original\n"
_CHILDREN = {
    "imports": _IMPORTS,
    "torchfile_read": _IMPORTS + "torchfile.load(sys.argv[1], use_list_heuristic=False)\n",
    "convert": _IMPORTS + (
        "from densecap.modeling.original import convert_torch7_checkpoint\n"
        "convert_torch7_checkpoint(sys.argv[1], sys.argv[2])\n"
    ),
}


def add_arguments(parser) -> None:
    parser.add_argument("--input", default="", help="convert this .t7 instead of writing a full-size one")
    parser.add_argument("--workdir", default="", help="folder for the files (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the written .t7 and the converted .pth")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--template", default="",
                        help="the narrow checkpoint written by the original Lua code whose tree is resized "
                             "(default: tests/fixtures/torch7/narrow_seed1/checkpoint.t7, else the reference folder)")
    parser.add_argument("--no-breakdown", action="store_true",
                        help="skip the import-only and read-only children")


def _child_env() -> Dict[str, str]:
    """The child imports the same ``densecap`` package as this process, on one thread."""
    import densecap

    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(densecap.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_child(kind: str, argv: List[str]) -> Tuple[float, float]:
    """Runs child ``kind``; returns (peak RSS in bytes, wall seconds). Fails with its stderr."""
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: a chatty child cannot block
        t = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-c", _CHILDREN[kind], *argv], env=_child_env(),
                             stdout=log, stderr=subprocess.STDOUT)
        # wait4: this child's own rusage (RUSAGE_CHILDREN would be the maximum over all children)
        _, status, usage = os.wait4(p.pid, 0)
        seconds = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            log.seek(0)
            text = log.read().decode(errors="replace")[-4000:]
            raise RuntimeError(f"the {kind} child failed (exit {p.returncode}):\n{text}")
    return usage.ru_maxrss * 1024.0, seconds  # ru_maxrss is in KB on Linux


def run(args) -> Dict:
    from . import torch7_writer as W

    own_dir = not args.workdir
    workdir = tempfile.mkdtemp(prefix="densecap_convert_") if own_dir else args.workdir
    os.makedirs(workdir, exist_ok=True)
    figures: Dict = {}
    written = not args.input
    t7 = os.path.join(workdir, "densecap-random-vgg16.t7") if written else args.input
    pth = os.path.join(workdir, "densecap_random_vgg16.pth")
    try:
        if written:
            free = shutil.disk_usage(workdir).free
            if free < FREE_BYTES_NEEDED:
                raise RuntimeError(f"{workdir}: {free / 1e9:.2f} GB free, the benchmark needs "
                                   f"{FREE_BYTES_NEEDED / 1e9:.1f} GB (pass --workdir)")
            t = time.perf_counter()
            counts = W.write_original_checkpoint(t7, W.FULL, template=args.template or None, seed=args.seed)
            figures["write_seconds"] = time.perf_counter() - t
            figures["written_parameters"] = counts["parameters"]
            figures["written_flat_storage_elements"] = counts["flat_elements"]
            logger.info("wrote %s (%.3f GB) in %.1f s", t7, counts["bytes"] / 1e9, figures["write_seconds"])
        size = os.path.getsize(t7)
        breakdown = {}
        if not args.no_breakdown:
            for kind, argv in (("imports", []), ("torchfile_read", [t7])):
                rss, sec = run_child(kind, argv)
                breakdown[kind] = {"peak_rss_gb": rss / 1e9, "seconds": sec}
                logger.info("%s child: peak RSS %.3f GB, %.1f s", kind, rss / 1e9, sec)
        rss, sec = run_child("convert", [t7, pth])
        out_size = os.path.getsize(pth)
    finally:
        if not args.keep:
            if written and os.path.exists(t7):
                os.remove(t7)
            if os.path.exists(pth):
                os.remove(pth)
            if own_dir:
                shutil.rmtree(workdir, ignore_errors=True)
    peak_gb = rss / 1e9
    ratio = rss / size
    figures.update({
        "peak_rss_gb": peak_gb,
        "peak_rss_gib": rss / 2**30,
        "ratio": ratio,
        "target_peak_rss_gb": TARGET_PEAK_GB,
        "target_ratio": TARGET_RATIO,
        "within_target": bool(peak_gb <= TARGET_PEAK_GB and ratio <= TARGET_RATIO),
        "convert_seconds": sec,
        "input_bytes": size,
        "output_bytes": out_size,
        "input": "written by the benchmark (random weights, full size)" if written else os.path.abspath(t7),
        "breakdown": breakdown,
    })
    rows = [("input file", f"{size / 1e9:.3f} GB" + (" (written here)" if written else ""))]
    if written:
        rows.append(("write time", f"{figures['write_seconds']:.1f} s, "
                                   f"{figures['written_parameters']:,} parameters"))
    for kind, b in breakdown.items():
        rows.append((f"child: {kind.replace('_', ' ')} only", f"{b['peak_rss_gb']:.3f} GB peak, {b['seconds']:.1f} s"))
    rows += [
        ("conversion peak RSS", f"{peak_gb:.3f} GB ({rss / 2**30:.3f} GiB)  (target <= {TARGET_PEAK_GB})"),
        ("peak / file size", f"{ratio:.2f}x  (target <= {TARGET_RATIO})"),
        ("conversion wall time", f"{sec:.1f} s"),
        ("converted checkpoint", f"{out_size / 1e9:.3f} GB"),
    ]
    from ._rcnn_common import print_table

    print_table("convert: original Torch7 checkpoint -> project checkpoint (child process)", rows)
    return figures

"""Folder throughput of ``tools/infer.py``: the overlapped pipeline (``--workers``: decoding ahead in
threads, one writer thread behind the model) against the one-image-after-another loop
(``--workers 0``), on the same folder in one process.

    python tools/benchmark.py infer --folder 200 [--folder-workers 2] [--folder-size 320] [--repeats 2]

Model: the synthetic demo's dense captioner (``configs/synthetic/densecap_small.yaml``, 256-px input,
random initialisation, saved as a checkpoint and loaded by the command line as a user would) at
greedy decoding, every box captioned, at most 30 per image. Inputs: ``--folder`` JPEG scenes of
``--folder-size`` x 3/4 of it pixels (the synthetic dataset's drawing). Each repeat runs both modes
(alternating which goes first) with overlays and features written (``--extract-features``), as a
user would run it; the two results.json files must be identical. Headline ``ratio`` = pipelined
seconds per image / sequential seconds per image (below 1: faster).
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
from typing import Dict

import numpy as np
import torch

CONFIG = "configs/synthetic/densecap_small.yaml"


def _make_folder(d: str, n: int, size: int, seed: int) -> None:
    from PIL import Image

    from densecap.data.synthetic import make_scene

    os.makedirs(d, exist_ok=True)
    for i in range(n):
        img = make_scene(seed, i, size=size)[0]
        Image.fromarray(img[: int(size * 0.75)]).save(os.path.join(d, f"{i:04d}.jpg"), quality=90)


def _checkpoint(path: str, seed: int) -> None:
    from densecap.config import load_config
    from densecap.data.tokenizer import Vocabulary
    from densecap.engine.checkpoint import save_checkpoint
    from densecap.modeling import build_model

    cfg = load_config(CONFIG, ["MODEL.DEVICE", "cpu", "TEST.DETECTIONS_PER_IMAGE", "30", "TEST.BEAM_SIZE", "1"])
    torch.manual_seed(seed)
    vocab = Vocabulary([f"w{i}" for i in range(60)])
    save_checkpoint(path, model=build_model(cfg, vocab), cfg=cfg, vocab=vocab, iteration=0)


def run_folder(args) -> Dict:
    import contextlib
    import io

    from densecap.inference.cli import main

    torch.set_num_threads(max(1, args.threads))
    load_before = os.getloadavg()
    work = tempfile.mkdtemp(prefix="densecap_folder_bench_")
    try:
        imgs, ckpt = os.path.join(work, "images"), os.path.join(work, "model.pth")
        _make_folder(imgs, args.folder, args.folder_size, args.seed)
        _checkpoint(ckpt, args.seed)
        times = {0: [], args.folder_workers: []}
        results = {}
        for r in range(max(1, args.repeats)):
            order = [0, args.folder_workers] if r % 2 == 0 else [args.folder_workers, 0]
            for w in order:
                out = os.path.join(work, f"out_{w}_{r}")
                argv = ["--weights", ckpt, "--input", imgs, "--output", out, "--no-progress", "--extract-features",
                        "--workers", str(w)]
                t0 = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):
                    rc = main(argv)
                times[w].append((time.perf_counter() - t0) / args.folder)
                if rc != 0:
                    raise RuntimeError(f"tools/infer.py {' '.join(argv)} failed ({rc})")
                with open(os.path.join(out, "results.json")) as f:
                    results[w] = json.load(f)["results"]
                shutil.rmtree(out)
        same = results[0] == results[args.folder_workers]
        seq, pipe = statistics.median(times[0]), statistics.median(times[args.folder_workers])
        figures = {
            "task": "infer --folder", "ratio": pipe / seq, "seconds": pipe,
            "sequential_seconds_per_image": seq, "pipelined_seconds_per_image": pipe,
            "sequential_images_per_s": 1 / seq, "pipelined_images_per_s": 1 / pipe,
            "times_per_image": {str(k): v for k, v in times.items()}, "workers": args.folder_workers,
            "images": args.folder, "image_size_wh": [args.folder_size, int(args.folder_size * 0.75)],
            "identical_results": same, "torch_threads": torch.get_num_threads(), "config": CONFIG,
            "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
        }
        print(f"folder of {args.folder} images: sequential {1 / seq:.2f} img/s, pipelined ({args.folder_workers} decode "
              f"threads + writer) {1 / pipe:.2f} img/s, ratio {pipe / seq:.3f}, identical results: {same}")
        if not same:
            raise RuntimeError("the pipelined run wrote different results")
        return figures
    finally:
        shutil.rmtree(work, ignore_errors=True)

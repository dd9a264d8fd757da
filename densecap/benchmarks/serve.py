"""Benchmark task ``serve``: the HTTP service under load against ``tools/infer.py`` on the same images.

    python tools/benchmark.py serve [--json FILE] [--weights CKPT] [--requests 200]
        [--concurrency 1 4 16] [--images 16] [--image-size 256] [--max-batch 8] [--max-wait-ms 10]
        [--threads 1] [--infer-repeats 2]

The model: ``--weights`` or, by default, the demo's dense captioner (``configs/synthetic/
densecap_small.yaml``, 256-px images) randomly initialised and saved as a checkpoint in a temporary
folder (random weights rarely predict END, so every caption is decoded to its full length: the
worst case). Images: ``--images`` synthetic scenes (coloured rectangles) of ``--image-size`` x
3/4 of it, saved as JPEG.

Peer: ``tools/infer.py``'s own batched throughput: its ``run`` (``--batch-size --max-batch
--no-vis``, reading the files and writing results.json) with the model loaded once, images per
second over ``--infer-repeats`` passes over the images, measured right before and right after the
highest concurrency level (the server idle meanwhile); the faster of the two is the peer's figure, so a load spike during one of them cannot flatter the
server.

Served: the real server (``python -m densecap.serve``, uvicorn) on a free 127.0.0.1 port, in its
own process with the same torch threads; a bounded client of ``concurrency`` threads (one httpx
client each) posting ``--requests`` uploads per concurrency level, round-robin over the images,
after a few warm-up requests. Reported per level: throughput (images/s), p50/p95/p99 latency,
failed requests (status != 200 or a transport error), mean batch size (from ``/metrics``), and the
server's RSS before (after warm-up) and after all levels.

Headline ``ratio`` = served throughput at the highest concurrency / tools/infer.py's throughput
(target >= 0.9: the server adds almost nothing).
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List

import numpy as np

logger = logging.getLogger(__name__)

TARGET_RATIO = 0.9
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_CONFIG = os.path.join(ROOT, "configs", "synthetic", "densecap_small.yaml")
WORDS = ("a an the red green blue yellow purple orange white black gray small large big tiny circle square "
         "triangle star hexagon diamond shape on of in left right above below near next to with striped dotted").split()


def add_arguments(parser) -> None:
    parser.add_argument("--weights", default="", help="checkpoint to serve (default: the demo model, random weights)")
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16], help="client threads per level")
    parser.add_argument("--images", type=int, default=16, help="distinct images")
    parser.add_argument("--image-size", type=int, default=256, help="longest side of the images in pixels")
    parser.add_argument("--max-batch", type=int, default=8, help="server --max-batch = tools/infer.py --batch-size")
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server and of tools/infer.py")
    parser.add_argument("--infer-repeats", type=int, default=2, help="passes over the images per tools/infer.py run")
    parser.add_argument("--warmup", type=int, default=4, help="untimed requests first")
    parser.add_argument("--seed", type=int, default=0)


# ------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------
def _demo_checkpoint(path: str, seed: int) -> None:
    import torch

    from densecap.config import load_config
    from densecap.data.tokenizer import Vocabulary
    from densecap.engine.checkpoint import save_checkpoint
    from densecap.modeling import build_model

    cfg = load_config(DEMO_CONFIG, ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(seed)
    vocab = Vocabulary(sorted(set(WORDS)))
    save_checkpoint(path, model=build_model(cfg, vocab), cfg=cfg, vocab=vocab, iteration=0)


def _images(folder: str, n: int, size: int, seed: int) -> List[str]:
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size, max(16, round(size * 0.75))
    paths = []
    for i in range(n):
        img = np.empty((h, w, 3), np.uint8)
        img[:] = rng.integers(60, 200, 3)
        for _ in range(int(rng.integers(3, 7))):
            x, y = int(rng.integers(0, w - 16)), int(rng.integers(0, h - 16))
            bw, bh = int(rng.integers(12, w // 2)), int(rng.integers(12, h // 2))
            img[y:y + bh, x:x + bw] = rng.integers(0, 255, 3)
        p = os.path.join(folder, f"{i:04d}.jpg")
        Image.fromarray(img).save(p, quality=90)
        paths.append(p)
    return paths


# ------------------------------------------------------------------------------------------
# the peer: tools/infer.py
# ------------------------------------------------------------------------------------------
def _infer_throughput(predictor, folder: str, work: str, args) -> float:
    import contextlib
    import io

    from densecap.inference.cli import build_parser, run

    inputs = [folder] * max(1, args.infer_repeats)  # the same files again: each pass is timed with the others
    out = os.path.join(work, "infer_out")
    argv = ["--weights", "loaded", "--no-progress", "--no-vis", "--batch-size", str(args.max_batch),
            "--output", out, "--input", *inputs]
    with contextlib.redirect_stdout(io.StringIO()):
        summary = run(build_parser().parse_args(argv), predictor)
    shutil.rmtree(out, ignore_errors=True)
    return summary["images"] / summary["seconds"]


# ------------------------------------------------------------------------------------------
# the server and the client
# ------------------------------------------------------------------------------------------
def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _start_server(weights: str, port: int, args, log_path: str) -> subprocess.Popen:
    import httpx

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("DENSECAP_TOKEN", None)
    cmd = [sys.executable, "-m", "densecap.serve", "--weights", weights, "--host", "127.0.0.1", "--port", str(port),
           "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), "--threads", str(args.threads),
           "--device", "cpu", "--log-level", "warning"]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}); see {log_path}:\n" + open(log_path).read()[-2000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not answer /healthz within 300 s")


def _batch_stats(base: str):
    import httpx

    text = httpx.get(base + "/metrics", timeout=10).text
    vals = {}
    for line in text.splitlines():
        if line.startswith(("densecap_batch_size_count ", "densecap_batch_size_sum ", "densecap_inference_seconds_sum ")):
            k, v = line.split()
            vals[k] = float(v)
    return (vals.get("densecap_batch_size_count", 0.0), vals.get("densecap_batch_size_sum", 0.0),
            vals.get("densecap_inference_seconds_sum", 0.0))


def _load(base: str, payloads: List[bytes], n: int, concurrency: int) -> Dict:
    import httpx

    lat: List[float] = []
    failures: List[str] = []
    lock = threading.Lock()
    counter = iter(range(n))

    def worker():
        with httpx.Client(base_url=base, timeout=300) as client:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                try:
                    r = client.post("/v1/caption", files={"image": (f"{i}.jpg", payloads[i % len(payloads)], "image/jpeg")})
                    ok = r.status_code == 200 and "captions" in r.json()
                    why = "" if ok else f"status {r.status_code}: {r.text[:200]}"
                except httpx.HTTPError as e:
                    ok, why = False, f"{type(e).__name__}: {e}"
                dt = time.perf_counter() - t0
                with lock:
                    (lat.append(dt) if ok else failures.append(why))

    n0, s0, m0 = _batch_stats(base)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    n1, s1, m1 = _batch_stats(base)
    ms = sorted(x * 1000 for x in lat)

    def pct(p):
        return float(np.percentile(ms, p)) if ms else float("nan")

    return {
        "concurrency": concurrency, "requests": n, "ok": len(lat), "failed": len(failures),
        "failures": failures[:5], "seconds": wall, "images_per_second": len(lat) / wall,
        "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99),
        "mean_batch": (s1 - s0) / (n1 - n0) if n1 > n0 else float("nan"),
        "model_seconds_per_image": (m1 - m0) / (s1 - s0) if s1 > s0 else float("nan"),  # inside the server
    }


def run(args) -> Dict:
    import torch

    from densecap.inference.predictor import DenseCapPredictor

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    work = tempfile.mkdtemp(prefix="densecap_serve_bench_")
    proc = None
    try:
        weights = args.weights
        if not weights:
            weights = os.path.join(work, "demo_random.pth")
            _demo_checkpoint(weights, args.seed)
        folder = os.path.join(work, "images")
        paths = _images(folder, args.images, args.image_size, args.seed)
        payloads = [open(p, "rb").read() for p in paths]

        predictor = DenseCapPredictor.from_checkpoint(weights, device="cpu", batch_size=args.max_batch)
        _infer_throughput(predictor, folder, work, argparse_like(args, infer_repeats=1))  # warm-up

        port = _free_port()
        proc = _start_server(weights, port, args, os.path.join(work, "server.log"))
        base = f"http://127.0.0.1:{port}"
        _load(base, payloads, max(args.warmup, 1), min(max(args.concurrency), max(args.warmup, 1)))
        rss_before = _rss_mb(proc.pid)
        conc = sorted(set(args.concurrency))
        levels = [_load(base, payloads, args.requests, c) for c in conc[:-1]]
        # the headline level, bracketed in time by the peer (the server idles meanwhile)
        infer_before = _infer_throughput(predictor, folder, work, args)
        levels.append(_load(base, payloads, args.requests, conc[-1]))
        infer_after = _infer_throughput(predictor, folder, work, args)
        rss_after = _rss_mb(proc.pid)
        proc.terminate()
        proc.wait(30)
        proc = None
        infer_ips = max(infer_before, infer_after)  # the peer's better run: load only ever helps the server's ratio less
        top = max(levels, key=lambda r: r["concurrency"])
        out = {
            "task": "serve",
            "weights": args.weights or "demo model (configs/synthetic/densecap_small.yaml), random weights",
            "image_size": [args.image_size, max(16, round(args.image_size * 0.75))],
            "images": len(paths),
            "max_batch": args.max_batch,
            "max_wait_ms": args.max_wait_ms,
            "threads": args.threads,
            "levels": levels,
            "failed_requests": sum(r["failed"] for r in levels),
            "infer_images_per_second": infer_ips,
            "infer_images_per_second_before_after": [infer_before, infer_after],
            "rss_mb_before": rss_before,
            "rss_mb_after": rss_after,
            "load_average": list(os.getloadavg()),
            "peer": "tools/infer.py --batch-size max_batch (model loaded once)",
            "ratio": top["images_per_second"] / infer_ips,
            "target_ratio": TARGET_RATIO,
        }
        _print(out)
        return out
    finally:
        if proc is not None:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)


def argparse_like(args, **changes):
    import argparse

    d = dict(vars(args))
    d.update(changes)
    return argparse.Namespace(**d)


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _print(o: Dict) -> None:
    print(f"serve: {o['images']} images {o['image_size'][0]}x{o['image_size'][1]}, max batch {o['max_batch']}, "
          f"max wait {o['max_wait_ms']:g} ms, {o['threads']} thread(s); load average {o['load_average'][0]:.1f}")
    print(f"{'concurrency':>11} {'requests':>9} {'failed':>7} {'images/s':>9} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'p99 ms':>8} {'mean batch':>11} {'model s/img':>12}")
    for r in o["levels"]:
        print(f"{r['concurrency']:>11} {r['requests']:>9} {r['failed']:>7} {r['images_per_second']:>9.2f} "
              f"{r['p50_ms']:>8.0f} {r['p95_ms']:>8.0f} {r['p99_ms']:>8.0f} {r['mean_batch']:>11.2f} "
              f"{r['model_seconds_per_image']:>12.3f}")
    b, a = o["infer_images_per_second_before_after"]
    print(f"tools/infer.py --batch-size {o['max_batch']}: {o['infer_images_per_second']:.2f} images/s "
          f"(the faster of before {b:.2f} and after {a:.2f})")
    print(f"server RSS {o['rss_mb_before']:.0f} MB -> {o['rss_mb_after']:.0f} MB")
    print(f"ratio (served at concurrency {max(r['concurrency'] for r in o['levels'])} / tools/infer.py): "
          f"{o['ratio']:.3f} (target >= {o['target_ratio']})")

"""The real server: ``python -m densecap.serve`` (uvicorn) in a subprocess on a free loopback port,
talked to over HTTP with the tiny real checkpoint and its region index."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from infer_images import scene  # noqa: E402
from serve_helpers import free_port, png_bytes, scene_png  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def server(serve_assets, tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("server") / "server.log", "w+")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
               DENSECAP_TOKEN="tok-123")
    proc = subprocess.Popen(
        [sys.executable, "-m", "densecap.serve", "--weights", serve_assets["ckpt"], "--index", serve_assets["index"],
         "--port", str(port), "--max-batch", "4", "--max-wait-ms", "200", "--device", "cpu", "--threads", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"the server exited with {proc.returncode}:\n{log.read()}")
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail("the server did not come up in 60 s")
        yield {"base": base, "proc": proc, "log": log, "port": port}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_real_server_over_http(server, serve_assets):
    base = server["base"]
    auth = {"Authorization": "Bearer tok-123"}
    h = httpx.get(base + "/healthz").json()
    assert h["token_required"] is True and h["index"] is True and h["num_images"] == 5 and h["model"] == "model.pth"
    # the token came from DENSECAP_TOKEN
    png = scene_png(160, 120)
    assert httpx.post(base + "/v1/caption", files={"image": ("a.png", png)}).status_code == 401
    r = httpx.post(base + "/v1/caption", files={"image": ("a.png", png)}, data={"max_regions": "5"}, headers=auth, timeout=60)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["width"] == 160 and d["height"] == 120 and len(d["boxes"]) == len(d["captions"]) <= 5
    r = httpx.post(base + "/v1/caption", files={"image": ("a.png", png)}, data={"boxes": "[[10, 10, 60, 40]]"},
                   headers=auth, timeout=60)
    assert r.status_code == 200 and r.json()["boxes"] == [[10.0, 10.0, 60.0, 40.0]] and r.json()["given_boxes"]
    r = httpx.post(base + "/v1/search", json={"query": "a red circle", "topk": 3, "mode": "fast"}, headers=auth, timeout=60)
    assert r.status_code == 200 and len(r.json()["hits"]) == 3
    img = httpx.get(base + r.json()["hits"][0]["image_url"], headers=auth)
    assert img.status_code == 200 and img.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert httpx.get(base + "/v1/images/..%2F..%2Fmodel.pth", headers=auth).status_code in (403, 404)
    assert httpx.get(base + "/docs").status_code == 200 and httpx.get(base + "/").status_code == 200
    m = httpx.get(base + "/metrics", headers=auth).text
    assert 'densecap_requests_total{endpoint="/v1/caption",method="POST",status="401"} 1.0' in m


def test_real_model_batched_equals_single(server):
    """Concurrent requests share forward passes of the real model and get what they get alone."""
    base = server["base"]
    auth = {"Authorization": "Bearer tok-123"}
    pngs = []
    for i in range(4):
        img, _ = scene(160, 120)
        img[90:110, 10 + 30 * i: 30 + 30 * i] = (30, 180, 40)
        pngs.append(png_bytes(img))

    def cap(p):
        r = httpx.post(base + "/v1/caption", files={"image": ("x.png", p)}, headers=auth, timeout=120)
        assert r.status_code == 200, r.text
        return r.json()

    def batches():
        m = httpx.get(base + "/metrics", headers=auth).text
        get = lambda k: float(next(ln.split()[-1] for ln in m.splitlines() if ln.startswith(k + " ")))  # noqa: E731
        return get("densecap_batch_size_count"), get("densecap_batch_size_sum")

    single = [cap(p) for p in pngs]  # one at a time
    n0, s0 = batches()
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(cap, pngs))
    n1, s1 = batches()
    assert s1 - s0 == 4 and n1 - n0 < 4, "no batch of more than one image formed"
    for a, b in zip(single, together):
        assert a["captions"] == b["captions"]
        assert json.dumps(a["boxes"]) == json.dumps(b["boxes"]) or all(
            abs(x - y) < 1e-3 for ba, bb in zip(a["boxes"], b["boxes"]) for x, y in zip(ba, bb))
        assert all(abs(x - y) < 1e-5 for x, y in zip(a["scores"], b["scores"]))

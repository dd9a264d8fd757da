"""The HTTP API through FastAPI's test client: every endpoint, every bad input, dynamic batching.

Captions come from the fake model (tests/fake_model.py: a region's caption names its colour, so a
box over the red patch must be captioned "red region"); search and images from a tiny real
checkpoint with a joint embedding and a region index over 5 images (tests/serve_helpers.py).
"""
from __future__ import annotations

import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

sys.path.insert(0, os.path.dirname(__file__))

from fake_model import FakeDenseCapModel  # noqa: E402
from infer_images import scene  # noqa: E402
from serve_helpers import bomb_png, png_bytes, scene_png  # noqa: E402

from densecap.inference.cli import build_parser, run  # noqa: E402
from densecap.inference.predictor import DenseCapPredictor  # noqa: E402
from densecap.serve import DenseCapService, create_app  # noqa: E402
from densecap.serve.service import parse_boxes  # noqa: E402

PNG = scene_png(320, 240)
_, PATCHES = scene(320, 240)


def fake_service(model=None, **kw):
    model = model if model is not None else FakeDenseCapModel(with_image_caption=True)
    pred = DenseCapPredictor(model, image_size=128, image_caption=bool(getattr(model, "image_caption_head", None)))
    return DenseCapService(pred, **kw)


@pytest.fixture()
def fake():
    svc = fake_service(max_batch=4, max_wait_ms=1)
    with TestClient(create_app(svc)) as c:
        yield c, svc
    svc.close()


@pytest.fixture(scope="module")
def real(serve_assets):
    svc = DenseCapService.load(serve_assets["ckpt"], index_dir=serve_assets["index"], device="cpu")
    with TestClient(create_app(svc)) as c:
        yield c, svc
    svc.close()


def post_image(c, data=PNG, name="scene.png", **fields):
    return c.post("/v1/caption", files={"image": (name, data, "image/png")},
                  data={k: str(v) for k, v in fields.items()})


# ------------------------------------------------------------------------------------------
# /v1/caption
# ------------------------------------------------------------------------------------------
def test_caption_is_a_results_json_entry(fake, tmp_path):
    c, svc = fake
    r = post_image(c, name="scene.png")
    assert r.status_code == 200, r.text
    got = r.json()
    # tools/infer.py on the same file with the same model writes the same entry
    d = tmp_path / "in"
    d.mkdir()
    (d / "scene.png").write_bytes(PNG)
    args = build_parser().parse_args(["--weights", "unused.pth", "--no-progress", "--no-vis",
                                      "--input", str(d / "scene.png"), "--output", str(tmp_path / "out")])
    run(args, DenseCapPredictor(FakeDenseCapModel(), image_size=128))
    want = json.load(open(tmp_path / "out" / "results.json"))["results"][0]
    assert want["file_name"] == str(d / "scene.png") and got["file_name"] is None
    want["file_name"] = None
    assert got == want
    assert len(got["boxes"]) == 14 and got["given_boxes"] is False and "image_caption" not in got
    assert got["scores"] == sorted(got["scores"], reverse=True)


def test_caption_options(fake):
    c, _ = fake
    full = post_image(c).json()
    three = post_image(c, max_regions=3).json()
    assert three["boxes"] == full["boxes"][:3] and three["captions"] == full["captions"][:3]
    assert post_image(c, max_regions=0).json() == full  # 0 = all
    thr = sorted(full["scores"])[len(full["scores"]) // 2]
    some = post_image(c, min_score=thr).json()
    assert some["scores"] == [s for s in full["scores"] if s >= thr] and 0 < len(some["scores"]) < 14
    withcap = post_image(c, image_caption="true", max_regions=2).json()
    assert withcap["image_caption"] == "an image with red region" and withcap["image_caption_logprob"] == -1.5
    assert len(withcap["captions"]) == 2


def test_caption_given_boxes(fake):
    c, _ = fake
    red, blue = PATCHES["red"], PATCHES["blue"]
    r = post_image(c, boxes=json.dumps([blue, red, [0.5, 0.5, 10.25, 9.75]]), max_regions=1, min_score=0.99)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["given_boxes"] is True
    assert d["boxes"] == [blue, red, [0.5, 0.5, 10.25, 9.75]]  # exactly, in order; options do not drop them
    assert d["captions"][:2] == ["blue region", "red region"]
    # a box on the edge of the image is inside
    assert post_image(c, boxes="[[0, 0, 320, 240]]").status_code == 200


def test_image_caption_needs_the_head():
    svc = fake_service(FakeDenseCapModel(with_image_caption=False))
    with TestClient(create_app(svc)) as c:
        r = post_image(c, image_caption="true")
        assert r.status_code == 400 and "no whole-image caption head" in r.json()["detail"]
        assert post_image(c).status_code == 200
        assert c.get("/healthz").json()["image_caption"] is False
    svc.close()


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------
def metric_state(c):
    """The metrics except the request counters / latency (what a bad request may change)."""
    lines = c.get("/metrics").text.splitlines()
    return [ln for ln in lines if not ln.startswith(("densecap_request", "# ")) and "_created" not in ln]


def test_bad_inputs_are_refused_and_change_nothing(tmp_path):
    model = FakeDenseCapModel(with_image_caption=True)
    svc = fake_service(model, max_batch=4, max_wait_ms=1, max_pixels=100_000)
    c = TestClient(create_app(svc, max_upload_mb=0.05))  # 51 KiB
    with c:
        assert post_image(c).status_code == 200
        before = (metric_state(c), len(model.seen_inputs), {k: v.clone() for k, v in model.state_dict().items()})
        big_noise = png_bytes(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8))  # ~120 KB
        jpeg = png_bytes(scene(320, 240)[0], "JPEG")
        cases = [
            # (fields, file bytes, status, words in the message)
            ({}, big_noise, 413, "upload limit"),
            ({}, b"\x00" * (3 << 20), 413, "Content Too Large"),  # stopped while reading the body
            ({}, b"this is not an image", 400, "not an image file"),
            ({}, b"", 400, "empty"),
            ({}, PNG[: len(PNG) // 2], 400, "truncated"),
            ({}, jpeg[: len(jpeg) // 3], 400, "truncated"),
            ({}, png_bytes(np.zeros((400, 400, 3), np.uint8)), 400, "over the limit of 100000 pixels"),
            ({}, bomb_png(30000, 30000), 400, "decompression bomb"),  # Pillow's own guard
            ({}, bomb_png(12000, 10000), 400, "12000 x 10000 = 120000000 pixels is over the limit"),
            ({"boxes": "[[1, 2, 3"}, PNG, 422, "not valid JSON"),
            ({"boxes": '{"a": 1}'}, PNG, 422, "list of [x, y, w, h]"),
            ({"boxes": "[[1, 2, 3]]"}, PNG, 422, "list of [x, y, w, h]"),
            ({"boxes": '[["1", 2, 3, 4]]'}, PNG, 422, "list of [x, y, w, h]"),
            ({"boxes": "[[1, 2, true, 4]]"}, PNG, 422, "list of [x, y, w, h]"),
            ({"boxes": "[]"}, PNG, 422, "empty"),
            ({"boxes": "[[10, 10, 0, 5]]"}, PNG, 422, "zero or negative"),
            ({"boxes": "[[10, 10, NaN, 5]]"}, PNG, 422, "NaN"),
            ({"boxes": "[[300, 10, 30, 5]]"}, PNG, 400, "not inside the 320 x 240 image"),
            ({"boxes": "[[-1, 10, 30, 5]]"}, PNG, 400, "not inside"),
            ({"boxes": json.dumps([[0, 0, 1, 1]] * 1001)}, PNG, 422, "at most 1000"),
            ({"max_regions": "-1"}, PNG, 422, "greater than or equal to 0"),
            ({"max_regions": "many"}, PNG, 422, "integer"),
            ({"min_score": "1.5"}, PNG, 422, "less than or equal to 1"),
            ({"image_caption": "perhaps"}, PNG, 422, "boolean"),
        ]
        for fields, data, status, words in cases:
            r = post_image(c, data=data, **fields)
            assert r.status_code == status, (fields, len(data), r.status_code, r.text[:300])
            assert words in r.text, (fields, r.text[:300])
        r = c.post("/v1/caption", data={"boxes": "[[1, 2, 3, 4]]"})  # no image at all
        assert r.status_code == 422 and "image" in r.text
        r = c.post("/v1/caption", content=b"x" * 100, headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 422
        after = (metric_state(c), len(model.seen_inputs), model.state_dict())
        assert after[0] == before[0]  # batches, images captioned, queue: unchanged
        assert after[1] == before[1]  # the model never saw a bad request
        assert all(torch.equal(before[2][k], after[2][k]) for k in before[2])
        assert post_image(c).status_code == 200  # still serving
        counts = c.get("/metrics").text
        assert 'densecap_requests_total{endpoint="/v1/caption",method="POST",status="413"} 2.0' in counts
        assert 'densecap_requests_total{endpoint="/v1/caption",method="POST",status="422"}' in counts
    svc.close()


def test_parse_boxes_messages():
    assert parse_boxes("[[1, 2, 3, 4]]", 10, 10).tolist() == [[1, 2, 3, 4]]
    with pytest.raises(ValueError, match=r"box 1 \[5, 5, 6, 1\] is not inside the 10 x 10 image"):
        parse_boxes("[[0, 0, 10, 10], [5, 5, 6, 1]]", 10, 10)


def test_token(tmp_path, monkeypatch):
    svc = fake_service()
    with TestClient(create_app(svc, token="s3cret")) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"},
                        {"Authorization": "s3cret"}, {"Authorization": "Bearer s3cret2"}):
            r = c.post("/v1/caption", files={"image": ("a.png", PNG, "image/png")}, headers=headers)
            assert r.status_code == 401 and "Bearer" in r.json()["detail"], headers
            assert c.post("/v1/search", json={"query": "a"}, headers=headers).status_code == 401
            assert c.get("/v1/images/x.png", headers=headers).status_code == 401
            assert c.get("/metrics", headers=headers).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert c.post("/v1/caption", files={"image": ("a.png", PNG, "image/png")}, headers=ok).status_code == 200
        assert c.get("/metrics", headers=ok).status_code == 200
        h = c.get("/healthz")  # open: the page learns that it must ask for the token
        assert h.status_code == 200 and h.json()["token_required"] is True
        assert c.get("/").status_code == 200 and c.get("/static/app.js").status_code == 200
        assert c.get("/openapi.json").status_code == 200
    svc.close()


def test_command_line(tmp_path, capsys):
    from densecap.serve.cli import build_parser as serve_parser
    from densecap.serve.cli import main as serve_main

    args = serve_parser().parse_args(["--weights", "w.pth"])
    assert args.host == "127.0.0.1" and args.port == 8000 and args.max_upload_mb == 20.0 and args.token is None
    assert args.max_batch == 8 and args.max_wait_ms == 10.0
    for argv, words in [
        (["--weights", str(tmp_path / "missing.pth")], "missing.pth: file not found"),
        (["--weights", __file__, "--max-batch", "0"], "--max-batch must be >= 1"),
        (["--weights", __file__, "--index", str(tmp_path / "nope")], "nope: not a folder"),
    ]:
        with pytest.raises(SystemExit) as e:
            serve_main(argv)
        assert e.value.code == 2 and words in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# dynamic batching
# ------------------------------------------------------------------------------------------
def distinct_images(n):
    out = []
    for i in range(n):
        img, _ = scene(320, 240)
        img[200:230, 10 + 20 * i: 30 + 20 * i] = (30, 180, 40)  # a green patch that moves
        out.append(png_bytes(img))
    return out


def test_batched_results_equal_single_and_batches_form():
    images = distinct_images(8)
    single_model = FakeDenseCapModel(with_image_caption=True)
    single = fake_service(single_model, max_batch=1, max_wait_ms=0)
    with TestClient(create_app(single)) as c:
        want = [post_image(c, data=d, name=f"{i}.png", image_caption="true").json() for i, d in enumerate(images)]
    single.close()
    assert set(single_model.batch_sizes) == {1}

    model = FakeDenseCapModel(with_image_caption=True)
    svc = fake_service(model, max_batch=4, max_wait_ms=5000)  # a batch waits until 4 requests are there
    with TestClient(create_app(svc)) as c:
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda a: post_image(c, data=a[1], name=f"{a[0]}.png", image_caption="true").json(),
                                enumerate(images)))
        metrics = c.get("/metrics").text
    svc.close()
    assert got == want  # identical to one at a time
    assert model.batch_sizes == [4, 4], model.batch_sizes  # two forward passes of 4 images
    assert "densecap_batch_size_count 2.0" in metrics and "densecap_batch_size_sum 8.0" in metrics
    assert 'densecap_batch_size_bucket{le="3.0"} 0.0' in metrics
    assert "densecap_images_captioned_total 8.0" in metrics


class BlockingModel(FakeDenseCapModel):
    """Waits for ``release`` in every forward pass; fails on images 77 pixels wide."""

    def __init__(self):
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def forward(self, batched_inputs):
        self.entered.set()
        assert self.release.wait(60)
        if any(int(x["width"]) == 77 for x in batched_inputs):
            raise RuntimeError("cannot caption a 77-pixel-wide image")
        return super().forward(batched_inputs)


def test_healthz_answers_while_the_model_works_and_a_bad_image_fails_alone():
    model = BlockingModel()
    svc = fake_service(model, max_batch=4, max_wait_ms=300)
    with TestClient(create_app(svc)) as c:
        with ThreadPoolExecutor(3) as pool:
            good = pool.submit(post_image, c, PNG, "good.png")
            bad = pool.submit(post_image, c, scene_png(77, 60), "bad.png")
            assert model.entered.wait(30)
            h = c.get("/healthz")  # the model is busy: the event loop is not
            assert h.status_code == 200 and h.json()["busy"] is True
            third = pool.submit(post_image, c, PNG, "third.png")
            import time

            for _ in range(200):  # the third request is queued behind the running batch
                if c.get("/healthz").json()["queue_depth"] == 1:
                    break
                time.sleep(0.02)
            assert c.get("/healthz").json()["queue_depth"] == 1
            assert "densecap_queue_depth 1.0" in c.get("/metrics").text
            model.release.set()
            g, b, t = good.result(60), bad.result(60), third.result(60)
    svc.close()
    assert g.status_code == 200 and t.status_code == 200 and g.json()["captions"] == t.json()["captions"]
    assert b.status_code == 500 and "77-pixel-wide" in b.json()["detail"]
    # the images differ in shape (one forward pass each); the failed batch was re-run image by image
    assert set(model.batch_sizes) == {1} and 2 <= len(model.batch_sizes) <= 4, model.batch_sizes
    assert all(int(x["width"]) != 77 for x in model.seen_inputs)


# ------------------------------------------------------------------------------------------
# /v1/search and /v1/images
# ------------------------------------------------------------------------------------------
def test_search_matches_the_retrieval_api(real, serve_assets):
    from densecap.retrieval.index import RegionIndex
    from densecap.retrieval.search import search_text

    c, svc = real
    for mode in ("exact", "fast"):
        r = c.post("/v1/search", json={"query": "a red circle", "topk": 5, "mode": mode})
        assert r.status_code == 200, r.text
        d = r.json()
        want = search_text(RegionIndex.open(serve_assets["index"]), svc.retrieval, "a red circle", topk=5, mode=mode)
        assert d["mode"] == mode and len(d["hits"]) == 5 and d["num_regions"] == want.num_regions
        assert [h["caption"] for h in d["hits"]] == [h["caption"] for h in want.hits]
        assert [h["box"] for h in d["hits"]] == [h["box"] for h in want.hits]
        assert [h["score"] for h in d["hits"]] == pytest.approx([h["score"] for h in want.hits], abs=1e-5)
        rel = {os.path.relpath(h["image"], serve_assets["images"]).replace(os.sep, "/") for h in want.hits}
        assert {h["image"] for h in d["hits"]} == rel
        for h in d["hits"]:
            assert h["image_url"] == "/v1/images/" + h["image"]
            img = c.get(h["image_url"])
            assert img.status_code == 200 and img.headers["content-type"] == "image/png"
            assert img.content == open(os.path.join(serve_assets["images"], h["image"]), "rb").read()
    d = c.post("/v1/search", json={"query": "zebra red", "topk": 3}).json()  # default mode exact
    assert d["mode"] == "exact" and d["oov"] == ["zebra"] and d["tokens"][0] == "<UNK>"


def index_state(root):
    """Every file of an index directory with its bytes (what a bad request must not change)."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


def test_search_bad_requests(real, fake, serve_assets):
    c, svc = real
    before = (index_state(serve_assets["index"]), metric_state(c),
              {k: v.clone() for k, v in svc.predictor.model.state_dict().items()})
    for body, status, words in [
        ({"query": ""}, 422, "at least 1 character"),
        ({"query": "!!! ???"}, 400, "has no words"),
        ({"query": "a red circle", "mode": "fuzzy"}, 422, "'fast' or 'exact'"),
        ({"query": "a red circle", "topk": 0}, 422, "greater than or equal to 1"),
        ({"query": "x" * 1001}, 422, "at most 1000"),
        ({"topk": 3}, 422, "Field required"),
    ]:
        r = c.post("/v1search".replace("v1search", "v1/search"), json=body)
        assert r.status_code == status and words in r.text, (body, r.text)
    assert c.post("/v1/search", content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 422
    assert c.post("/v1/search", content=b"x" * (100 << 10), headers={"Content-Type": "application/json"}).status_code == 413
    assert post_image(c, data=b"not an image").status_code == 400
    assert post_image(c, data=scene_png(64, 48), boxes="[[0, 0, 65, 10]]").status_code == 400
    after = (index_state(serve_assets["index"]), metric_state(c), svc.predictor.model.state_dict())
    assert after[0] == before[0] and after[1] == before[1]  # index files, searches, batches: unchanged
    assert all(torch.equal(before[2][k], after[2][k]) for k in before[2])
    fc, _ = fake  # no index loaded
    r = fc.post("/v1/search", json={"query": "a red circle"})
    assert r.status_code == 404 and "--index" in r.json()["detail"]
    assert fc.get("/v1/images/im0.png").status_code == 404


def test_images_only_indexed_files_inside_the_folder(real, serve_assets, tmp_path):
    c, svc = real
    images = serve_assets["images"]
    assert svc.images_root == os.path.realpath(images)
    assert c.get("/v1/images/im0.png").status_code == 200
    assert c.get("/v1/images/sub/im4.png").status_code == 200
    secret = tmp_path / "secret.png"
    secret.write_bytes(PNG)
    link = os.path.join(images, "escape.png")
    os.symlink(str(secret), link)  # a link inside the folder pointing out of it
    os.symlink(os.path.join(images, "im0.png"), os.path.join(images, "alias.png"))
    try:
        for name, status in [
            ("not_indexed.png", 404),  # in the folder but not indexed
            ("escape.png", 403),
            ("alias.png", 200),  # resolves to an indexed image inside the folder
            ("..%2F..%2Fsecret.png", 403),
            ("sub/..%2F..%2F..%2Fetc%2Fpasswd", 403),
            ("%2Fetc%2Fpasswd", 404),
            ("sub", 404),
            ("missing.png", 404),
            ("im0.png%00.txt", 404),
        ]:
            r = c.get("/v1/images/" + name)
            assert r.status_code == status, (name, r.status_code, r.text)
            if status != 200:
                assert "detail" in r.json() and r.content != PNG
    finally:
        os.remove(link)
        os.remove(os.path.join(images, "alias.png"))


# ------------------------------------------------------------------------------------------
# status, metrics, docs, page
# ------------------------------------------------------------------------------------------
def test_healthz_metrics_docs_page(real):
    c, svc = real
    h = c.get("/healthz").json()
    assert h["status"] == "ok" and h["model"] == "model.pth" and h["index"] is True
    assert h["num_images"] == 5 and h["fast_search"] is True and h["token_required"] is False
    assert post_image(c, data=scene_png(160, 120)).status_code == 200
    m = c.get("/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    for family in ("densecap_requests_total", "densecap_request_seconds_bucket", "densecap_batch_size_bucket",
                   "densecap_queue_depth", "densecap_inference_seconds_count", "densecap_images_captioned_total"):
        assert family in m.text, family
    assert 'densecap_requests_total{endpoint="/healthz",method="GET",status="200"}' in m.text
    assert c.get("/docs").status_code == 200
    paths = c.get("/openapi.json").json()["paths"]
    assert {"/v1/caption", "/v1/search", "/v1/images/{name}", "/healthz", "/metrics"} <= set(paths)
    page = c.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/static/app.js"' in page.text and "http" not in page.text.replace("http-equiv", "")
    js = c.get("/static/app.js").text
    assert "innerHTML" not in js and "textContent" in js
    assert c.get("/static/style.css").status_code == 200


def test_metrics_registries_are_per_app():
    a, b = fake_service(), fake_service()
    with TestClient(create_app(a)) as ca, TestClient(create_app(b)) as cb:
        post_image(ca)
        assert "densecap_images_captioned_total 1.0" in ca.get("/metrics").text
        assert "densecap_images_captioned_total 0.0" in cb.get("/metrics").text
    a.close()
    b.close()


def test_static_files_ship_with_the_package():
    import re

    setup = open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "setup.py")).read()
    assert re.search(r'"densecap\.serve":\s*\["static/\*"\]', setup)
    from densecap.serve.app import STATIC_DIR

    assert sorted(os.listdir(STATIC_DIR)) == ["app.js", "index.html", "style.css"]


def test_search_relational_query_returns_pairs(real, serve_assets):
    """With a relation geometry model in the index, a query naming a relation is grounded as a
    pair of regions: each hit is a union box with its subject and object."""
    from densecap.modeling.relation_geometry import GEOMETRY_FILE, RelationGeometry

    from test_pairs import _random_triples

    c, _ = real
    path = os.path.join(serve_assets["index"], GEOMETRY_FILE)
    RelationGeometry.fit(_random_triples(300, 0), steps=50).save(path)
    try:
        d = c.post("/v1/search", json={"query": "a red circle left of a blue square", "topk": 3}).json()
    finally:
        os.remove(path)
    assert d["mode"] == "exact+pairs" and 0 < len(d["hits"]) <= 3
    for h in d["hits"]:
        assert {"box", "caption"} <= set(h["subject"]) and {"box", "caption"} <= set(h["object"])
        (sx, sy, sw, sh), (ox, oy, ow, oh) = h["subject"]["box"], h["object"]["box"]
        assert h["box"] == pytest.approx([min(sx, ox), min(sy, oy), max(sx + sw, ox + ow) - min(sx, ox),
                                          max(sy + sh, oy + oh) - min(sy, oy)], abs=1e-3)

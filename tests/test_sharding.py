"""tools/infer.py and tools/retrieve.py index under torchrun on the CPU (2 processes, gloo): inputs
split by shard, merged into the normal outputs, a rank killed mid-shard and a rerun completing
only the missing shards."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, os.path.dirname(__file__))

from fake_model import save_tiny_checkpoint  # noqa: E402

from densecap.utils.sharding import plan_shards, rank_shards  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
N_IMAGES, SHARD = 9, 2  # 5 shards: rank 0 gets 0, 2, 4; rank 1 gets 1, 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharding")
    ckpt = str(root / "tiny.pth")
    save_tiny_checkpoint(ckpt)
    d = root / "images"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 255, (48 + 8 * (i % 3), 64, 3), dtype=np.uint8)).save(d / f"img{i}.png")
    (d / "img4.png").write_bytes(b"not an image")  # a bad file inside rank 0's shard 2
    return {"root": root, "ckpt": ckpt, "images": str(d)}


def _torchrun(which, argv, log, fail_rank=None, fail_at=0, nproc=2):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
               SHARD_TEST_LOG=log)
    env.pop("SHARD_TEST_FAIL_RANK", None)
    if fail_rank is not None:
        env.update(SHARD_TEST_FAIL_RANK=str(fail_rank), SHARD_TEST_FAIL_AT=str(fail_at))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           os.path.join(HERE, "shard_worker.py"), which, *argv]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _logged(log):
    out = []
    for r in (0, 1):
        if os.path.exists(f"{log}.{r}"):
            with open(f"{log}.{r}") as f:
                out += [os.path.basename(line.strip()) for line in f]
    return out


def test_shard_plan_is_deterministic_and_covers_everything():
    items = [f"/x/{i}.jpg" for i in range(11)]
    plan = plan_shards(items, 3)
    assert [s.items for s in plan] == [items[0:3], items[3:6], items[6:9], items[9:11]]
    assert [s.name for s in plan] == [s.name for s in plan_shards(list(items), 3)]
    assert plan_shards(items[:10], 3)[3].name != plan[3].name  # other inputs, other shard
    mine = [rank_shards(plan, r, 3) for r in range(3)]
    assert [[s.index for s in m] for m in mine] == [[0, 3], [1], [2]]
    assert sorted(i for m in mine for s in m for i in s.items) == sorted(items)


@pytest.mark.slow
def test_infer_under_torchrun_with_a_failed_rank_and_rerun(setup, tmp_path):
    from densecap.inference.cli import main

    ref = str(tmp_path / "ref")
    assert main(["--weights", setup["ckpt"], "--input", setup["images"], "--output", ref, "--no-progress",
                 "--image-size", "64"]) == 0
    out, log = str(tmp_path / "out"), str(tmp_path / "calls")
    argv = ["--weights", setup["ckpt"], "--input", setup["images"], "--output", out, "--no-progress", "--image-size", "64",
            "--shard-images", str(SHARD)]
    # rank 1 dies on its 3rd image: its shard 1 (img2, img3) is complete, shard 3 (img6) is not
    first = _torchrun("infer", argv, log, fail_rank=1, fail_at=3)
    assert first.returncode != 0, first.stderr[-2000:]
    assert not os.path.exists(os.path.join(out, "results.json"))
    done1 = sorted(n for n in os.listdir(os.path.join(out, "shards")) if not n.startswith("."))
    assert "shard_00001" in " ".join(done1) and "shard_00003" not in " ".join(done1)
    run1 = _logged(log)
    os.rename(f"{log}.0", f"{log}.first0")
    os.rename(f"{log}.1", f"{log}.first1")
    second = _torchrun("infer", argv, log)
    assert second.returncode == 0, second.stderr[-3000:]
    run2 = _logged(log)
    # the rerun ran only what was not complete: rank 1's unfinished shard 3 (img6, img7) and the
    # shards rank 0 had not reached when the group was torn down -- never a completed shard
    assert "img2.png" in run1 and "img3.png" in run1
    assert not {"img2.png", "img3.png"} & set(run2)
    assert {"img6.png", "img7.png"} <= set(run2)
    assert len(run2) == len(set(run2))
    assert sorted(set(run1 + run2)) == sorted(f"img{i}.png" for i in range(N_IMAGES) if i != 4)
    # the merged outputs are the single-process outputs, in the same order
    with open(os.path.join(ref, "results.json")) as f:
        want = json.load(f)
    with open(os.path.join(out, "results.json")) as f:
        got = json.load(f)
    assert got["results"] == want["results"]
    assert got["errors"] == want["errors"] and len(got["errors"]) == 1 and got["errors"][0]["path"].endswith("img4.png")
    assert sorted(os.listdir(os.path.join(out, "vis"))) == sorted(os.listdir(os.path.join(ref, "vis")))
    assert os.path.isfile(os.path.join(out, "index.html"))
    left = sorted(os.listdir(os.path.join(out, "shards")))  # the 5 complete shards, no temporary leftovers
    assert len(left) == 5 and [n.split("-")[0] for n in left] == [f"shard_{k:05d}" for k in range(5)]


@pytest.mark.slow
def test_retrieve_index_under_torchrun_with_a_failed_rank_and_rerun(setup, tmp_path):
    from densecap.retrieval.cli import main
    from densecap.retrieval.index import RegionIndex

    ref = str(tmp_path / "ref_index")
    assert main(["index", "--weights", setup["ckpt"], "--input", setup["images"], "--index", ref,
                 "--image-size", "64", "--shard-images", str(SHARD)]) == 0
    idx, log = str(tmp_path / "index"), str(tmp_path / "calls")
    argv = ["index", "--weights", setup["ckpt"], "--input", setup["images"], "--index", idx, "--image-size", "64",
            "--shard-images", str(SHARD)]
    first = _torchrun("retrieve", argv, log, fail_rank=1, fail_at=3)
    assert first.returncode != 0
    run1 = _logged(log)
    for r in (0, 1):
        if os.path.exists(f"{log}.{r}"):
            os.rename(f"{log}.{r}", f"{log}.first{r}")
    second = _torchrun("retrieve", argv, log)
    assert second.returncode == 0, second.stderr[-3000:]
    run2 = _logged(log)
    assert "img2.png" in run1 and not {"img2.png", "img3.png"} & set(run2) and len(run2) == len(set(run2))
    a, b = RegionIndex.open(ref), RegionIndex.open(idx)
    assert b.num_images == a.num_images == N_IMAGES - 1 and b.num_regions == a.num_regions
    assert [im["path"] for _, im in b.images()] == [im["path"] for _, im in a.images()]
    ids = np.arange(a.num_regions)
    np.testing.assert_allclose(b.gather_codes(ids), a.gather_codes(ids), atol=1e-3)
    assert os.listdir(os.path.join(idx, "parts")) == []

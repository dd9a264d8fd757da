"""`make demo`'s driver end to end at toy scale: every stage runs and leaves its outputs."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from densecap.evaluation.densecap_eval import IOU_THRESHOLDS, METEOR_THRESHOLDS, ap_key

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_demo_pipeline_toy_scale(tmp_path, java):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "densecap.demo", "--output", str(out), "--num-images", "20",
           "--config-file", os.path.join(ROOT, "configs", "synthetic", "densecap_tiny.yaml"),
           "SOLVER.MAX_ITER", "4", "MODEL.EMBEDDING.ENABLED", "True", "MODEL.IMAGE_CAPTION.ENABLED", "True",
           "MODEL.IMAGE_CAPTION.VOCAB_MIN_COUNT", "1", "MODEL.IMAGE_CAPTION.EMBED_SIZE", "16",
           "MODEL.IMAGE_CAPTION.HIDDEN_SIZE", "16", "MODEL.IMAGE_CAPTION.ATTENTION_SIZE", "16"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    for rel in ("data/images", "data/region_descriptions.json", "data/captions.json", "data/prepared/test.npz",
                "model_final.pth", "eval.json", "infer/results.json", "infer/index.html", "retrieval/fast.json",
                "retrieval/exact.json"):
        assert (out / rel).exists(), rel
    ev = json.loads((out / "eval.json").read_text())
    test_ids = json.loads((out / "data" / "densecap_splits.json").read_text())["test"]
    # the whole test split (TEST.MAX_IMAGES 0); mAP = the mean of the 30 APs with a METEOR threshold
    assert ev["dataset"].endswith(":test") and ev["num_images"] == len(test_ids)
    lang = [ev["ap"][ap_key(i, m)] for i in IOU_THRESHOLDS for m in METEOR_THRESHOLDS if m >= 0]
    assert len(lang) == 30 and ev["map"] == pytest.approx(float(np.mean(lang)))
    assert {"cider", "bleu4", "attention_grounding"} <= set(ev["image_caption"])  # the joint whole-image head
    res = json.loads((out / "infer" / "results.json").read_text())
    assert sorted(r["image_id"] for r in res["results"]) == sorted(test_ids) and not res["errors"]
    assert len(os.listdir(out / "infer" / "vis")) == len(test_ids)
    assert all(isinstance(r["image_caption"], str) for r in res["results"])
    assert len(os.listdir(out / "attention" / "attention")) == min(6, len(test_ids))  # per-word attention figures
    hits = json.loads((out / "retrieval" / "fast.json").read_text())
    assert hits and set(hits[0]) >= {"image", "box", "score", "caption"}
    # the relational example: the index holds a relation geometry model, hits are pairs of regions
    assert (out / "retrieval_index" / "relations.json").exists()
    for mode in ("fast", "exact"):
        rel = json.loads((out / "retrieval" / f"relational_{mode}.json").read_text())
        assert isinstance(rel, list) and all({"subject", "object"} <= set(h) for h in rel)
    # idempotent: a second run reuses every stage's output
    r2 = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "reusing" in r2.stderr and "train: reusing" in r2.stderr

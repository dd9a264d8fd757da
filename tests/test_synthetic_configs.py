"""Every config in configs/synthetic/ trains from the command line where ``make demo`` left its data.

The test lays out a tiny synthetic dataset where the demo writes its own (``output/demo/data/``,
relative to the working directory) and runs ``tools/train_net.py``'s ``main`` from there on each
config with only schedule, image size and layer width overrides: no dataset paths, no weights. ``embedding_small.yaml`` starts
from the demo's model (``output/demo/model_final.pth``), which the run of the demo's config
(``densecap_small_joint.yaml``, output to ``output/demo``) writes first.
"""
import glob
import json
import math
import os

import pytest

from densecap.engine.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "configs", "synthetic", "*.yaml")))
# the demo's config first: embedding_small.yaml trains on top of its model_final.pth
DEMO_CONFIG = "densecap_small_joint.yaml"
ORDER = [DEMO_CONFIG] + [c for c in CONFIGS if c != DEMO_CONFIG]

# what the evaluation at the end of training reports (None: the config evaluates nothing)
EVAL_METRIC = {
    "densecap_small.yaml": "map", "densecap_small_joint.yaml": "map", "densecap_tiny.yaml": "map",
    "embedding_small.yaml": None,
    "image_caption_nic.yaml": "cider", "image_caption_sat_hard.yaml": "cider", "image_caption_sat_soft.yaml": "cider",
}
TINY_SCHEDULE = [
    "SOLVER.MAX_ITER", "2", "SOLVER.MAX_TIME_SECONDS", "0", "SOLVER.WARMUP_ITERS", "0",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "100",
    "INPUT.MAX_SIZE", "64", "DATALOADER.NUM_WORKERS", "0", "NUM_THREADS", "1",
    "TEST.MAX_IMAGES", "2", "TEST.IMS_PER_BATCH", "2",
    # narrow layers (the same for every config, so embedding_small.yaml loads the demo config's model)
    "MODEL.BACKBONE.WIDTH", "8", "MODEL.RPN.HEAD_CHANNELS", "16", "MODEL.ROI.FC_DIM", "32",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "200", "MODEL.RPN.POST_NMS_TOPK_TEST", "20",
    "MODEL.CAPTION.EMBED_SIZE", "16", "MODEL.CAPTION.HIDDEN_SIZE", "16",
    "MODEL.IMAGE_CAPTION.EMBED_SIZE", "16", "MODEL.IMAGE_CAPTION.HIDDEN_SIZE", "16", "MODEL.IMAGE_CAPTION.ATTENTION_SIZE", "16",
    "MODEL.EMBEDDING.DIM", "16", "MODEL.EMBEDDING.WORD_SIZE", "16", "MODEL.EMBEDDING.HIDDEN_SIZE", "16",
]


@pytest.fixture(scope="module")
def demo_home(synthetic_root, tmp_path_factory):
    """A working directory whose ``output/demo/data`` is a generated synthetic dataset, as after
    ``make demo``."""
    home = tmp_path_factory.mktemp("demo_home")
    os.makedirs(home / "output" / "demo")
    os.symlink(synthetic_root, home / "output" / "demo" / "data")
    return home


def test_the_synthetic_configs_are_all_listed():
    assert CONFIGS == sorted(EVAL_METRIC)  # a new config needs its expected metric here


@pytest.mark.slow
def test_every_synthetic_config_trains_after_the_demo(demo_home, monkeypatch, java):
    monkeypatch.chdir(demo_home)
    for name in ORDER:
        out = os.path.join("output", "demo") if name == DEMO_CONFIG else os.path.join("output", "runs", name[:-5])
        argv = ["--config-file", os.path.join(ROOT, "configs", "synthetic", name), *TINY_SCHEDULE, "OUTPUT_DIR", out]
        assert main(argv) == 0, name
        assert os.path.isfile(os.path.join(out, "model_final.pth")), name
        with open(os.path.join(out, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f if line.strip()]
        train = [r for r in records if "total_loss" in r]
        assert train[-1]["iteration"] == 2 and math.isfinite(train[-1]["total_loss"]), (name, records)
        evals = [r["eval"] for r in records if "eval" in r]
        if EVAL_METRIC[name] is None:  # DATASETS.TEST is empty
            assert evals == [], name
        else:  # the config's test set was found and evaluated at the end
            assert len(evals) == 1 and EVAL_METRIC[name] in evals[0], (name, evals)

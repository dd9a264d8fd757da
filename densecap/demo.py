"""``make demo``: the whole system on the built-in synthetic dataset.

Stages (each reuses what a previous run already finished, so a second run is quick):

1. ``data``:  generate the synthetic Visual-Genome-format dataset and prepare it -> ``output/demo/data``
   and fit the relation geometry model on its training split -> ``output/demo/relations.json``
2. ``train``: train ``configs/synthetic/densecap_small_joint.yaml`` (the dense captioner and a
   soft-attention whole-image caption head on one backbone) -> ``output/demo/model_final.pth``;
   evaluation and inference run it with pair regions (``MODEL.ROI_HEADS.PAIR_BOXES``, test time
   only, ranked after the detections they tie with: ``MODEL.ROI_HEADS.PAIR_SCORE_SCALE``) whose
   captions are composed with that geometry model (``MODEL.ROI_HEADS.PAIR_RELATIONS``)
3. ``eval``:  DenseCap mAP on the test split, and the whole-image captions' BLEU/METEOR/ROUGE-L/CIDEr
   and attention grounding -> ``output/demo/eval.json``
4. ``infer``: ``tools/infer.py`` on the test images -> ``output/demo/infer/`` (results.json, vis/,
   index.html; every image with its regions and its whole-image caption), and the per-word
   attention figures of the first test images -> ``output/demo/attention/attention/*.png``
5. ``retrieve``: index the test images (``output/demo/retrieval_index``), copy the relation geometry
   model into it (``relations.json``), and run an example text query and a
   relational one ("... left of ...", grounded as pairs of regions) in fast and exact mode ->
   ``output/demo/retrieval/`` (hits JSON and contact sheets)

Run ``python -m densecap.demo --help`` for options (output dir, number of images, time budget).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time

logger = logging.getLogger("densecap.demo")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "synthetic", "densecap_small_joint.yaml")


def _run(cmd) -> None:
    logger.info("$ %s", " ".join(cmd))
    subprocess.run(cmd, check=True, cwd=ROOT)


def stage_data(out: str, num_images: int, seed: int) -> str:
    data = os.path.join(out, "data")
    prepared = os.path.join(data, "prepared")
    if os.path.exists(os.path.join(prepared, "test.npz")):
        logger.info("data: reusing %s", prepared)
        return prepared
    _run([sys.executable, "-m", "densecap.data.synthetic", "--out", data, "--num-images", str(num_images),
          "--seed", str(seed), "--prepare"])
    return prepared


PAIR_BOXES = 5  # test time: unions of pairs of each image's 5 best detections (densecap/modeling/pair_captions.py)
PAIR_SCORE_SCALE = 0.9  # their scores x 0.9: ranked after the detections they tie with (chosen on val)


def stage_relations(out: str, prepared: str) -> str:
    path = os.path.join(out, "relations.json")
    if os.path.exists(path):
        logger.info("relations: reusing %s", path)
        return path
    _run([sys.executable, os.path.join(ROOT, "tools", "retrieve.py"), "fit-relations", "--data", prepared,
          "--output", path])
    return path


def pair_opts(relations: str):
    return ["MODEL.ROI_HEADS.PAIR_BOXES", str(PAIR_BOXES), "MODEL.ROI_HEADS.PAIR_SCORE_SCALE", str(PAIR_SCORE_SCALE),
            "MODEL.ROI_HEADS.PAIR_RELATIONS", relations]


def dataset_opts(prepared: str, out: str):
    return [
        "DATASETS.TRAIN", f"('{prepared}:train',)",
        "DATASETS.TEST", f"('{prepared}:val',)",
        "OUTPUT_DIR", out,
    ]


def stage_train(out: str, prepared: str, config: str, extra) -> str:
    final = os.path.join(out, "model_final.pth")
    if os.path.exists(final):
        logger.info("train: reusing %s", final)
        return final
    _run([sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file", config, "--resume",
          *dataset_opts(prepared, out), *extra])
    return final


def stage_eval(out: str, prepared: str, config: str, weights: str, extra=()) -> dict:
    path = os.path.join(out, "eval.json")
    if _newer_than(path, weights):
        logger.info("eval: reusing %s", path)
        with open(path) as f:
            return json.load(f)
    _run([sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file", config, "--eval-only",
          *dataset_opts(prepared, out), "DATASETS.TEST", f"('{prepared}:test',)", "TEST.MAX_IMAGES", "0",
          "MODEL.WEIGHTS", weights, *extra])
    with open(path) as f:
        return json.load(f)


def _test_images(data: str):
    with open(os.path.join(data, "densecap_splits.json")) as f:
        return [os.path.join(data, "images", f"{i}.jpg") for i in json.load(f)["test"]]


def _newer_than(path: str, weights: str) -> bool:
    return os.path.exists(path) and os.path.getmtime(path) > os.path.getmtime(weights)


def stage_infer(out: str, data: str, weights: str, extra=()) -> str:
    infer = os.path.join(out, "infer")
    if os.path.exists(os.path.join(infer, "index.html")) and _newer_than(os.path.join(infer, "results.json"), weights):
        logger.info("infer: reusing %s", infer)
        return infer
    inputs = _test_images(data)
    _run([sys.executable, os.path.join(ROOT, "tools", "infer.py"), "--weights", weights, "--input", *inputs,
          "--output", infer, *extra])
    return infer


def stage_attention(out: str, data: str, weights: str, num_images: int = 6) -> str:
    """Attention figures (tools/infer.py --attention-maps) for the first test images, when the
    checkpoint has an attention-based whole-image caption head."""
    from densecap.engine.checkpoint import cfg_from_checkpoint, load_checkpoint

    att = os.path.join(out, "attention")
    cfg = cfg_from_checkpoint(load_checkpoint(weights))
    if not cfg.MODEL.IMAGE_CAPTION.ENABLED or cfg.MODEL.IMAGE_CAPTION.HEAD == "nic":
        return ""
    if _newer_than(os.path.join(att, "results.json"), weights):
        logger.info("attention: reusing %s", att)
        return att
    inputs = _test_images(data)[:num_images]
    _run([sys.executable, os.path.join(ROOT, "tools", "infer.py"), "--weights", weights, "--input", *inputs,
          "--output", att, "--image-caption", "--num-captions", "3", "--attention-maps"])
    return att


def stage_retrieve(out: str, data: str, weights: str, query: str, relational_query: str, relations: str) -> str:
    index = os.path.join(out, "retrieval_index")
    res = os.path.join(out, "retrieval")
    inputs = _test_images(data)
    tool = os.path.join(ROOT, "tools", "retrieve.py")
    # incremental: a second run skips the images already indexed with this checkpoint
    _run([sys.executable, tool, "index", "--weights", weights, "--input", *inputs, "--index", index])
    shutil.copyfile(relations, os.path.join(index, "relations.json"))  # relational queries: pairs of regions
    for name, q in (("", query), ("relational_", relational_query)):
        for mode in ("fast", "exact"):
            _run([sys.executable, tool, "query", "--index", index, "--query", q, "--mode", mode, "--topk", "10",
                  "--json", os.path.join(res, f"{name}{mode}.json"), "--output", os.path.join(res, name + mode)])
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=os.path.join(ROOT, "output", "demo"))
    p.add_argument("--num-images", type=int, default=3000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config-file", default=CONFIG, help="training config (default: the demo's)")
    p.add_argument("--query", default="a large red circle", help="example retrieval query")
    p.add_argument("--relational-query", default="a red star left of a green square",
                   help="example relational query (grounded as pairs of regions)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for training")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s demo] %(message)s", datefmt="%H:%M:%S")
    t0 = time.time()
    out = os.path.abspath(args.output)
    os.makedirs(out, exist_ok=True)
    prepared = stage_data(out, args.num_images, args.seed)
    relations = stage_relations(out, prepared)
    pairs = pair_opts(relations)
    weights = stage_train(out, prepared, args.config_file, args.opts)
    metrics = stage_eval(out, prepared, args.config_file, weights, [*pairs, *args.opts])
    infer = stage_infer(out, os.path.dirname(prepared), weights, pairs)
    stage_attention(out, os.path.dirname(prepared), weights)
    # the index holds the detections alone (pair regions would crowd the fast stage's candidates):
    # relational queries are grounded as pairs of them at query time
    retrieval = stage_retrieve(out, os.path.dirname(prepared), weights, args.query, args.relational_query,
                               relations)
    ic = metrics.get("image_caption") or {}
    logger.info("done in %.0f s: mAP %.2f, detection mAP %.2f, whole-image CIDEr %.3f; results in %s (open %s; "
                "retrieval hits in %s)", time.time() - t0, metrics.get("map", float("nan")),
                metrics.get("detmap", float("nan")), ic.get("cider", float("nan")), out,
                os.path.join(infer, "index.html"), retrieval)
    return 0


if __name__ == "__main__":
    sys.exit(main())

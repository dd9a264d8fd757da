"""A DenseCap model and a whole-image captioner answering as one model (infer --caption-weights)."""
import os

import pytest
import torch

from densecap.config import load_config
from densecap.data.dataset import DenseCapDataset, collate
from densecap.modeling import build_model
from densecap.modeling.composite import DenseCapWithImageCaptioner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def models(synthetic_root, tiny_model_cfg):
    torch.manual_seed(0)
    prepared = os.path.join(synthetic_root, "prepared")
    ds = DenseCapDataset(prepared, "test", max_size=128)
    dense = build_model(tiny_model_cfg(), ds.vocab).eval()
    cap_cfg = load_config(
        os.path.join(ROOT, "configs/synthetic/image_caption_sat_soft.yaml"),
        ["MODEL.BACKBONE.WIDTH", "8", "MODEL.IMAGE_CAPTION.EMBED_SIZE", "8", "MODEL.IMAGE_CAPTION.HIDDEN_SIZE", "8",
         "MODEL.IMAGE_CAPTION.ATTENTION_SIZE", "8", "MODEL.IMAGE_CAPTION.MAX_TOKENS", "5"],
    )
    captioner = build_model(cap_cfg, ds.vocab).eval()
    return ds, dense, captioner


def test_outputs_are_the_dense_outputs_plus_the_image_caption(models):
    ds, dense, captioner = models
    batch = collate([ds[0], ds[1]])
    both = DenseCapWithImageCaptioner(dense, captioner).eval()
    out = both(batch)
    ref_dense = dense(batch)
    ref_cap = captioner(batch)
    for o, d, c in zip(out, ref_dense, ref_cap):
        assert torch.equal(o["instances"].pred_boxes, d["instances"].pred_boxes)
        assert o["instances"].pred_captions == d["instances"].pred_captions
        assert o["image_caption"] == c["image_caption"]
        assert o["image_caption_logprob"] == pytest.approx(c["image_caption_logprob"])
        assert o["attention"].shape == c["attention"].shape  # SAT: one map per generated word


def test_options_reach_the_dense_model_and_given_boxes_pass_through(models):
    ds, dense, captioner = models
    both = DenseCapWithImageCaptioner(dense, captioner).eval()
    both.beam_size = 2  # test-time options set on the wrapper reach the dense model
    assert dense.beam_size == 2 and both.beam_size == 2
    both.beam_size = 1
    assert both.roi_heads is dense.roi_heads and both.vocab is dense.vocab
    x = ds[0]
    x["given_boxes"] = torch.tensor([[5.0, 6.0, 20.0, 30.0], [0.0, 0.0, 10.0, 10.0]])
    out = both([x])[0]
    assert torch.equal(out["instances"].pred_boxes, x["given_boxes"])
    assert isinstance(out["image_caption"], str)
    with pytest.raises(RuntimeError, match="inference"):
        both.train()([x])


def test_infer_cli_combines_a_dense_checkpoint_with_a_captioner_checkpoint(models, synthetic_root, tmp_path, tiny_model_cfg):
    import json

    from densecap.config import get_cfg  # noqa: F401
    from densecap.engine.checkpoint import save_checkpoint
    from densecap.inference.cli import main

    ds, dense, captioner = models
    dense_ckpt, cap_ckpt = str(tmp_path / "dense.pth"), str(tmp_path / "cap.pth")
    save_checkpoint(dense_ckpt, model=dense, cfg=tiny_model_cfg(),
                    vocab=ds.vocab, iteration=0)
    cap_cfg = load_config(
        os.path.join(ROOT, "configs/synthetic/image_caption_sat_soft.yaml"),
        ["MODEL.BACKBONE.WIDTH", "8", "MODEL.IMAGE_CAPTION.EMBED_SIZE", "8", "MODEL.IMAGE_CAPTION.HIDDEN_SIZE", "8",
         "MODEL.IMAGE_CAPTION.ATTENTION_SIZE", "8", "MODEL.IMAGE_CAPTION.MAX_TOKENS", "5"],
    )
    save_checkpoint(cap_ckpt, model=captioner, cfg=cap_cfg, vocab=ds.vocab, iteration=0)
    images = sorted(os.listdir(os.path.join(synthetic_root, "images")))[:2]
    out = tmp_path / "out"
    rc = main(["--weights", dense_ckpt, "--image-caption", "--caption-weights", cap_ckpt, "--num-captions", "2",
               "--input", *[os.path.join(synthetic_root, "images", f) for f in images], "--output", str(out),
               "--no-progress"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())["results"]
    assert len(res) == 2
    for r in res:
        assert isinstance(r["image_caption"], str) and isinstance(r["image_caption_logprob"], float)
        assert len(r["image_captions"]) == 2
        assert len(r["boxes"]) == len(r["captions"]) > 0  # the dense results are still there

"""Self-critical training (SOLVER.SCST.*): the CIDEr-D reward, the loss, the sampler, the stage."""
import json
import os

import numpy as np
import pytest
import torch

from densecap.data.tokenizer import END
from densecap.evaluation.cider import CiderD
from densecap.modeling.image_caption.losses import self_critical_loss

from test_joint_image_caption import _batch, _joint, _model

REFS = [
    ["a red circle and a blue square", "a blue square next to a red circle", "two shapes on a dark background"],
    ["a green star above a small triangle", "three shapes on a light background"],
    ["a large striped hexagon", "a hexagon left of a red diamond", "a red diamond", "one shape"],
    ["two shapes on a noisy background", "a yellow star and a blue circle"],
]
HYPS = ["a red circle next to a blue square", "a green star above a triangle", "a red hexagon", "a blue star on a background"]


def test_cider_d_equals_pycocoevalcap():
    """On the corpus it was built from, CiderD gives pycocoevalcap's CIDEr(-D) per caption."""
    from pycocoevalcap.cider.cider import Cider

    mean, per = Cider().compute_score({i: r for i, r in enumerate(REFS)}, {i: [h] for i, h in enumerate(HYPS)})
    ours = CiderD(REFS).score(HYPS, REFS)
    assert np.allclose(ours, per, rtol=1e-12, atol=1e-12)
    assert ours.mean() == pytest.approx(mean, abs=1e-12)
    assert ours[0] > ours[3] > 0  # a sensible ordering on this case
    # a reference scores high against itself; the length penalty (sigma 6) and clipping bite
    c = CiderD(REFS)
    assert c.score_one(REFS[2][1], REFS[2]) > c.score_one(REFS[2][1] + " " + REFS[2][1], REFS[2])


def test_cider_d_fixed_corpus_scores_any_subset():
    """The df of the training corpus stays fixed: scoring one caption does not depend on the others."""
    c = CiderD(REFS)
    one = c.score([HYPS[1]], [REFS[1]])
    assert one[0] == pytest.approx(c.score(HYPS, REFS)[1], abs=1e-12)
    assert c.score_one("", REFS[0]) == 0.0
    with pytest.raises(ValueError, match="empty"):
        CiderD([[]])


def test_self_critical_loss_gradient_sign_and_baseline():
    """-(r - b) log p: a better-than-greedy sample becomes more likely, a worse one less, an equal one
    gets no gradient."""
    for reward, sign in ((2.0, 1), (0.5, -1), (1.0, 0)):
        logits = torch.zeros(5, requires_grad=True)
        logp = torch.log_softmax(logits, 0)[3:4]  # the sampled word 3
        loss = self_critical_loss(logp, torch.tensor([reward]), torch.tensor([1.0]))
        loss.backward()
        with torch.no_grad():
            new = torch.log_softmax(logits - 0.1 * logits.grad, 0)[3]
        if sign == 0:
            assert torch.equal(logits.grad, torch.zeros(5))
        else:
            assert (float(new) - float(logp.detach())) * sign > 0
    # the value is the mean over samples of -(r - b) log p; reward and baseline are constants
    lp = torch.tensor([-1.0, -2.0], requires_grad=True)
    r = torch.tensor([3.0, 1.0], requires_grad=True)
    loss = self_critical_loss(lp, r, torch.tensor([1.0, 2.0]))
    assert loss.item() == pytest.approx(-((2.0 * -1.0) + (-1.0 * -2.0)) / 2)
    loss.backward()
    assert r.grad is None and torch.allclose(lp.grad, torch.tensor([-1.0, 0.5]))


def test_head_sample_greedy_equals_beam_one_and_logprob_is_the_score(tiny_cfg):
    cfg = _joint(tiny_cfg)
    model, vocab = _model(cfg)
    model.eval()
    head = model.image_caption_head
    with torch.no_grad():  # END about as likely as any word, so that some samples finish
        head.logits.bias[END] += 2.5
    feats = torch.randn(6, model.backbone.out_channels, 8, 8)
    tok, lp = head.sample(feats, None, max_len=12, greedy=True)
    ref = head.generate(feats, None, beam_size=1, max_len=12)["tokens"][:, 0]
    assert torch.equal(tok[:, : ref.shape[1]], ref) and not tok[:, ref.shape[1]:].any()
    # sampled captions: log-probability with gradient, equal to the teacher-forced score of the caption
    torch.manual_seed(0)
    tok, lp = head.sample(feats, None, max_len=12)
    assert lp.requires_grad and tok.dtype == torch.int64 and tok.shape == (6, 12)
    finished = (tok != 0).sum(1) < 12  # the ones that emitted END within max_len
    assert finished.any()
    s = head.score(feats, tok)
    assert torch.allclose(lp[finished], s[finished], atol=1e-4)


def test_scst_step_losses_baseline_and_only_the_head_learns(tiny_cfg):
    from densecap.engine.build import build_train_loader
    from densecap.engine.scst import SelfCriticalStep, training_references

    cfg = _joint(tiny_cfg)
    cfg.SOLVER.SCST.ENABLED = True
    cfg.SOLVER.SCST.NUM_SAMPLES = 3
    model, vocab = _model(cfg)
    loader = build_train_loader(cfg, vocab)
    corpus = training_references(loader.dataset)
    assert len(corpus) == len(loader.dataset) and all(isinstance(r, str) for r in corpus[0])
    step = SelfCriticalStep(cfg, loader.dataset, vocab)
    batch = _batch(cfg, vocab, 2)
    model.train()
    torch.manual_seed(0)
    out = step(model, batch)
    assert set(out) == {"loss_scst", "scst_reward_sample", "scst_reward_greedy"}
    # the baseline is the CIDEr-D (training df) of the greedy captions
    head = model.image_caption_head
    model.eval()
    with torch.no_grad():
        images, sizes = model.preprocess_image(batch)
        feats, mask = model._image_caption_features(model.backbone(images), sizes)
        greedy, _ = head.sample(feats, mask, cfg.MODEL.IMAGE_CAPTION.MAX_TOKENS, greedy=True)
    caps = [vocab.decode_str(t.tolist()) for t in greedy]
    expect = CiderD(corpus).score(caps, [x["gt_image_captions"] for x in batch]).mean()
    assert out["scst_reward_greedy"].item() == pytest.approx(expect, rel=1e-5)
    model.train()
    model.zero_grad()
    out["loss_scst"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is None for p in model.caption_head.parameters())
    # region captioner too (SOLVER.SCST.REGIONS)
    cfg.SOLVER.SCST.REGIONS = True
    step = SelfCriticalStep(cfg, loader.dataset, vocab)
    model.zero_grad()
    out = step(model, batch)
    assert {"loss_scst", "loss_scst_regions", "scst_region_reward_greedy"} <= set(out)
    out["loss_scst_regions"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.caption_head.parameters())
    assert all(p.grad is None for p in model.backbone.parameters())


def test_scst_stage_from_a_cross_entropy_checkpoint(tiny_cfg):
    """Trainer: a CE run, then an SCST stage from its model_final.pth (MODEL.WEIGHTS): loss_scst and
    the rewards are logged; the backbone is unchanged, the whole-image head changed."""
    from densecap.engine.checkpoint import load_checkpoint
    from densecap.engine.trainer import Trainer

    cfg = _joint(tiny_cfg)
    cfg.SOLVER.MAX_ITER = 2
    cfg.DATASETS.TEST = ()
    Trainer(cfg).train()
    ce = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    s = cfg.clone()
    s.defrost()
    s.MODEL.WEIGHTS = ce
    s.OUTPUT_DIR = cfg.OUTPUT_DIR + "_scst"
    s.SOLVER.SCST.ENABLED = True
    s.SOLVER.SCST.NUM_SAMPLES = 2
    s.SOLVER.BASE_LR = 1e-2
    Trainer(s).train()
    lines = [json.loads(x) for x in open(os.path.join(s.OUTPUT_DIR, "metrics.jsonl"))]
    rec = [r for r in lines if "loss_scst" in r]
    assert rec and "scst_reward_greedy" in rec[0] and "loss_caption" not in rec[0]
    assert rec[0]["total_loss"] == pytest.approx(rec[0]["loss_scst"])
    a, b = load_checkpoint(ce)["model"], load_checkpoint(os.path.join(s.OUTPUT_DIR, "model_final.pth"))["model"]
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(("backbone.", "caption_head.", "rpn.")))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("image_caption_head."))

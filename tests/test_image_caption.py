"""Whole-image caption heads (NIC, soft / hard attention), data loaders and the ImageCaptioner."""
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from densecap.config import get_cfg
from densecap.data.tokenizer import END, PAD, START, UNK, Vocabulary
from densecap.modeling.image_caption import build_image_caption_head, teacher_forcing_io
from densecap.modeling.image_caption.losses import attention_entropy, doubly_stochastic_penalty

WORDS = "a red blue circle square on dark background".split()
HEADS = ("nic", "sat_soft", "sat_hard")


def small_cfg(head, **kw):
    cfg = get_cfg()
    c = cfg.MODEL.IMAGE_CAPTION
    c.HEAD = head
    c.EMBED_SIZE, c.HIDDEN_SIZE, c.ATTENTION_SIZE = 16, 24, 12
    c.DROPOUT = 0.0
    for k, v in kw.items():
        setattr(c, k, v)
    return cfg


def make_head(head, seed=0, **kw):
    torch.manual_seed(seed)
    return build_image_caption_head(small_cfg(head, **kw), Vocabulary(WORDS), in_channels=6)


def feats(B=3, H=3, W=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 6, H, W, generator=g)


CAPS = torch.tensor([[4, 5, 7, 0, 0], [4, 6, 8, 9, 11], [4, 8, 0, 0, 0]])


def test_teacher_forcing_io():
    inputs, targets, mask = teacher_forcing_io(torch.tensor([[7, 8, 0], [9, 0, 0]]))
    assert inputs.tolist() == [[START, 7, 8, 0], [START, 9, 0, 0]]
    assert targets.tolist() == [[7, 8, END, 0], [9, END, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]


@pytest.mark.parametrize("name", HEADS)
def test_shapes_and_finite_losses(name):
    head = make_head(name).train()
    f = feats()
    valid = torch.ones(3, 3, 4, dtype=torch.bool)
    valid[2, :, 2:] = False  # a padded image
    losses = head(f, CAPS, valid)
    expected = {"loss_image_caption"}
    if name != "nic":
        expected.add("loss_image_caption_doubly_stochastic")
    if name == "sat_hard":
        expected |= {"loss_image_caption_reinforce", "loss_image_caption_entropy"}
    assert set(losses) == expected
    for v in losses.values():
        assert v.dim() == 0 and torch.isfinite(v)
    # untrained: the NLL is about log(V - 2) per token (PAD and START are never predicted)
    assert abs(float(losses["loss_image_caption"].detach()) - math.log(len(WORDS) + 2)) < 0.5
    sum(losses.values()).backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in head.parameters())
    out = head.generate(f, valid, beam_size=3, max_len=7, num_captions=2)
    assert out["tokens"].shape == (3, 2, 7) and out["tokens"].dtype == torch.int64
    assert out["logprobs"].shape == (3, 2) and torch.isfinite(out["logprobs"]).all()
    assert not ((out["tokens"] == START) | (out["tokens"] == END)).any()
    if name == "nic":
        assert out["attention"] is None
    else:
        att = out["attention"]
        assert att.shape == (3, 7, 3, 4)
        n_words = (out["tokens"][:, 0] != PAD).sum(1)
        for b in range(3):
            sums = att[b].sum(dim=(1, 2))
            assert torch.allclose(sums[: n_words[b]], torch.ones(int(n_words[b])), atol=1e-5)
            assert (sums[n_words[b]:] == 0).all()
        assert (att[2, :, :, 2:] == 0).all()  # never looks at padding
    assert head.score(f, CAPS, valid).shape == (3,)


@pytest.mark.parametrize("name", HEADS)
def test_score_matches_generation_and_loss(name):
    head = make_head(name).eval()
    f = feats()
    out = head.generate(f, beam_size=2, max_len=12)
    s = head.score(f, out["tokens"][:, 0])
    # captions that finished: generation log-prob == teacher-forced score
    done = (out["tokens"][:, 0] != PAD).sum(1) < 12
    assert torch.allclose(s[done], out["logprobs"][done, 0], atol=1e-4)
    head.train()
    if name == "sat_hard":
        head.hard_expectation_prob = 1.0  # deterministic: the expectation everywhere
    head.dropout.p = 0.0
    loss = head(f, CAPS)["loss_image_caption"]
    n_tokens = (CAPS != PAD).sum() + 3
    assert torch.allclose(loss, -head.score(f, CAPS).sum() / n_tokens, atol=1e-5)


def test_doubly_stochastic_value_on_paper():
    # 3 steps over 2 locations, the last step is padding (ignored)
    alpha = torch.tensor([[[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]])
    step_mask = torch.tensor([[1.0, 1.0, 0.0]])
    loc = torch.ones(1, 2)
    # sum_t alpha = (1.5, 0.5): (1 - 1.5)^2 + (1 - 0.5)^2 = 0.5
    assert torch.allclose(doubly_stochastic_penalty(alpha, step_mask, loc), torch.tensor([0.5]))
    # a location off the image does not count: only (1 - 1.5)^2
    assert torch.allclose(doubly_stochastic_penalty(alpha, step_mask, torch.tensor([[1.0, 0.0]])), torch.tensor([0.25]))


def test_doubly_stochastic_loss_uses_lambda():
    f = feats()
    vals = {}
    for lam in (1.0, 2.5):
        head = make_head("sat_soft", DOUBLY_STOCHASTIC_WEIGHT=lam).train()
        out = head.decode_teacher(f, CAPS)
        pen = doubly_stochastic_penalty(out["alpha"], out["step_mask"], out["loc_mask"].float()).sum()
        vals[lam] = float(head.losses(out)["loss_image_caption_doubly_stochastic"].detach())
        assert math.isclose(vals[lam], lam * float(pen.detach()) / float(out["step_mask"].sum()), rel_tol=1e-5)
    assert math.isclose(vals[2.5], 2.5 * vals[1.0], rel_tol=1e-5)
    assert "loss_image_caption_doubly_stochastic" not in make_head("sat_soft", DOUBLY_STOCHASTIC_WEIGHT=0.0)(f, CAPS)


def _capture_attention_logits(head):
    captured = []

    def hook(_m, _inp, out):
        out.retain_grad()
        captured.append(out)

    head.attention.register_forward_hook(hook)
    return captured


def test_reinforce_gradient_only_through_sampled_log_probs():
    head = make_head("sat_hard", DOUBLY_STOCHASTIC_WEIGHT=0.0, ENTROPY_WEIGHT=0.0, HARD_EXPECTATION_PROB=0.0).train()
    head.baseline.fill_(-7.0)
    head.baseline_count.fill_(3)
    f = feats()
    valid = torch.ones(3, 3, 4, dtype=torch.bool)
    valid[1, 2:, :] = False
    captured = _capture_attention_logits(head)
    out = head.decode_teacher(f, CAPS, valid)
    losses = head.losses(out)
    assert float(head.baseline) != -7.0 and int(head.baseline_count) == 4  # the moving average moved
    assert set(losses) == {"loss_image_caption", "loss_image_caption_reinforce"}

    # 1) the word loss alone sends no gradient into the attention (the sample is discrete)
    losses["loss_image_caption"].backward(retain_graph=True)
    assert all(e.grad is None or (e.grad == 0).all() for e in captured)
    assert all(p.grad is None or (p.grad == 0).all() for p in head.attention.parameters())
    assert head.lstm.weight_ih.grad.abs().sum() > 0  # while the decoder learns

    # 2) the REINFORCE term: d/de_t = -(R - b) / n_tokens * (onehot(s_t) - alpha_t) on valid steps
    for e in captured:
        e.grad = None
    losses["loss_image_caption_reinforce"].backward()
    tok = F.log_softmax(out["logits"].detach(), -1).gather(2, out["targets"][:, :, None])[:, :, 0]
    reward = tok.masked_fill(out["step_mask"] == 0, 0.0).sum(1)  # log p(y | s, a)
    adv = reward - (-7.0)
    assert torch.allclose(out["advantage"], adv, atol=1e-5)
    n_tokens = out["step_mask"].sum()
    loc = valid.flatten(1)
    for t, e in enumerate(captured):
        alpha = F.softmax(e.detach(), dim=-1)
        onehot = F.one_hot(out["sample"][:, t], alpha.shape[1]).float()
        assert loc.gather(1, out["sample"][:, t:t + 1]).all()  # samples lie on the image
        expected = -(adv / n_tokens)[:, None] * (onehot - alpha) * out["step_mask"][:, t:t + 1]
        g = e.grad.masked_fill(~loc, 0.0)
        assert torch.allclose(g, expected, atol=1e-6), t


def test_entropy_term_gradient():
    head = make_head("sat_hard", DOUBLY_STOCHASTIC_WEIGHT=0.0, ENTROPY_WEIGHT=0.3, HARD_EXPECTATION_PROB=0.0).train()
    f = feats()
    captured = _capture_attention_logits(head)
    out = head.decode_teacher(f, CAPS)
    loss = head.losses(out)["loss_image_caption_entropy"]
    ent = attention_entropy(out["att_logits"], out["loc_mask"])
    assert torch.allclose(loss, -0.3 * (ent * out["step_mask"]).sum() / out["step_mask"].sum())
    loss.backward()
    n = out["step_mask"].sum()
    for t, e in enumerate(captured):
        p = F.softmax(e.detach(), -1)
        logp = torch.log(p)
        h = -(p * logp).sum(-1, keepdim=True)
        dH = -p * (logp + h)  # dH/de
        assert torch.allclose(e.grad, -0.3 / n * dH * out["step_mask"][:, t:t + 1], atol=1e-6)


def test_baseline_in_state_dict():
    head = make_head("sat_hard").train()
    head(feats(), CAPS)
    sd = head.state_dict()
    # one training step with hard samples: one update, the baseline = that step's mean log-likelihood (< 0)
    assert int(sd["baseline_count"]) == 1 and float(sd["baseline"]) < 0
    other = make_head("sat_hard", seed=5)
    other.load_state_dict(sd)
    assert float(other.baseline) == float(head.baseline)


@pytest.mark.parametrize("name", ("nic", "sat_soft"))
def test_no_finished_beam_still_returns(name):
    head = make_head(name).eval()
    with torch.no_grad():
        head.logits.bias[END] = -1e4  # END is never chosen
    out = head.generate(feats(), beam_size=3, max_len=5, num_captions=2)
    assert (out["tokens"] != PAD).all()  # 5 words each, unfinished
    assert torch.isfinite(out["logprobs"]).all()
    assert (out["logprobs"][:, 0] >= out["logprobs"][:, 1]).all()


def test_beam_larger_than_vocab_and_block_repeats():
    head = make_head("sat_soft").eval()
    out = head.generate(feats(), beam_size=40, max_len=6, num_captions=5)
    assert out["tokens"].shape == (3, 5, 6) and torch.isfinite(out["logprobs"]).all()
    assert ((out["tokens"] >= UNK) | (out["tokens"] == PAD)).all()
    with torch.no_grad():
        head.logits.bias[6] = 50.0  # a loop: "blue blue blue ..."
    loop = head.generate(feats(), beam_size=2, max_len=6)["tokens"][:, 0]
    assert (loop == 6).sum(1).min() >= 4
    blocked = head.generate(feats(), beam_size=2, max_len=6, block_repeats=1)["tokens"][:, 0]
    assert ((blocked == 6).sum(1) <= 1).all()


@pytest.mark.parametrize("name", HEADS)
def test_batched_equals_per_image(name):
    head = make_head(name).eval()
    f = feats(B=3)
    valid = torch.ones(3, 3, 4, dtype=torch.bool)
    valid[1, :, 3:] = False
    full = head.generate(f, valid, beam_size=3, max_len=8, num_captions=2, length_penalty=0.7)
    for b in range(3):
        one = head.generate(f[b:b + 1], valid[b:b + 1], beam_size=3, max_len=8, num_captions=2, length_penalty=0.7)
        assert torch.equal(one["tokens"][0], full["tokens"][b])
        assert torch.allclose(one["logprobs"][0], full["logprobs"][b], atol=1e-5)
        if one["attention"] is not None:
            assert torch.allclose(one["attention"][0], full["attention"][b], atol=1e-6)


def test_word_vectors_with_oov(tmp_path):
    path = tmp_path / "glove.txt"
    path.write_text("red 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n"
                    "circle " + " ".join(["0.5"] * 16) + "\n"
                    "zebra " + " ".join(["9"] * 16) + "\n")
    cfg = small_cfg("sat_soft")
    cfg.MODEL.CAPTION.WORD_VECTORS = str(path)
    torch.manual_seed(0)
    vocab = Vocabulary(WORDS)
    head = build_image_caption_head(cfg, vocab, in_channels=6)
    w = head.embed.weight.detach()
    assert torch.equal(w[vocab.token_to_idx["red"]], torch.arange(1, 17, dtype=torch.float32))
    assert torch.equal(w[vocab.token_to_idx["circle"]], torch.full((16,), 0.5))
    assert head.embed.oov_count == len(WORDS) - 2
    # OOV words keep their random uniform(+-0.08) init
    oov_rows = w[vocab.token_to_idx["blue"]]
    assert oov_rows.abs().max() <= 0.08 and oov_rows.abs().sum() > 0
    cfg.MODEL.IMAGE_CAPTION.EMBED_SIZE = 8  # wrong dimension: a clear error
    with pytest.raises(ValueError, match="dimension"):
        build_image_caption_head(cfg, vocab, in_channels=6)


def test_nic_init_and_image_first_input():
    head = make_head("nic")
    for name, p in head.named_parameters():
        if not name.startswith("embed."):
            assert p.abs().max() <= 0.08, name
    assert head.image_embed.bias is None


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def _write_img(path, color, size=(40, 30)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_karpathy_loader(tmp_path):
    from densecap.data.captions import build_caption_vocab, load_caption_records, CaptionDataset

    root = tmp_path / "coco"
    _write_img(str(root / "train2014" / "a.jpg"), (255, 0, 0))
    _write_img(str(root / "val2014" / "b.jpg"), (0, 255, 0))
    _write_img(str(root / "val2014" / "c.jpg"), (0, 0, 255))
    data = {"images": [
        {"filepath": "train2014", "filename": "a.jpg", "split": "train", "cocoid": 11,
         "sentences": [{"tokens": ["a", "red", "thing"], "raw": "A red thing."}, {"raw": "Red, red!"}]},
        {"filepath": "val2014", "filename": "b.jpg", "split": "restval", "cocoid": 12,
         "sentences": [{"tokens": ["green", "thing"]}]},
        {"filepath": "val2014", "filename": "c.jpg", "split": "test", "cocoid": 13,
         "sentences": [{"raw": "A blue thing"}]},
    ]}
    jpath = root / "dataset_coco.json"
    jpath.write_text(json.dumps(data))
    train = load_caption_records(f"captions:{jpath}:train")
    assert [r["image_id"] for r in train] == [11, 12]  # restval counts as train
    assert train[0]["captions"] == [["a", "red", "thing"], ["red", "red"]]
    assert train[1]["captions"] == [["green", "thing"]]  # from tokens when raw is missing
    assert train[0]["file_name"] == os.path.join(str(root), "train2014", "a.jpg")
    vocab = build_caption_vocab(train, min_count=2)
    assert vocab.idx_to_token[4:] == ["red", "thing"]  # red 3x, thing 2x; a, green once
    test = load_caption_records(f"captions:{jpath}:test")
    ds = CaptionDataset(test, vocab, max_size=20, max_tokens=2)
    item = ds[0]
    assert item["image"].shape == (3, 15, 20) and item["image"].dtype == torch.uint8
    assert item["image"][2].float().mean() > 200  # blue channel, RGB order
    assert item["image_captions"].tolist() == [[UNK, UNK]]  # "a blue" (truncated to 2 words)
    assert item["gt_captions"] == ["a blue thing"]
    assert (item["image_id"], item["height"], item["width"]) == (13, 30, 40)
    with pytest.raises(ValueError, match="splits present"):
        load_caption_records(f"captions:{jpath}:nosuchsplit")


def test_coco_annotation_loader(tmp_path):
    from densecap.data.captions import CaptionDataset, load_caption_records

    root = tmp_path / "coco"
    _write_img(str(root / "val2014" / "COCO_val2014_000000000042.jpg"), (10, 20, 30))
    ann = {"images": [{"id": 42, "file_name": "COCO_val2014_000000000042.jpg"}, {"id": 7, "file_name": "x.jpg"}],
           "annotations": [{"id": 1, "image_id": 42, "caption": "A Cat on a mat."},
                           {"id": 2, "image_id": 42, "caption": "a cat"}]}
    os.makedirs(root / "annotations")
    apath = root / "annotations" / "captions_val2014.json"
    apath.write_text(json.dumps(ann))
    recs = load_caption_records(f"coco_captions:{apath}")
    assert len(recs) == 1 and recs[0]["image_id"] == 42  # image 7 has no caption
    assert recs[0]["captions"] == [["a", "cat", "on", "a", "mat"], ["a", "cat"]]
    assert os.path.isfile(recs[0]["file_name"])  # ../val2014 found next to annotations/
    item = CaptionDataset(recs, Vocabulary(["a", "cat"]), max_size=40, max_tokens=6)[0]
    assert item["image_captions"].tolist() == [[4, 5, UNK, 4, UNK, 0], [4, 5, 0, 0, 0, 0]]


def test_image_captioner_end_to_end(tmp_path):
    from densecap.modeling import build_model
    import densecap.modeling.image_captioner  # noqa: F401

    cfg = small_cfg("sat_soft")
    cfg.MODEL.META_ARCHITECTURE = "ImageCaptioner"
    cfg.MODEL.BACKBONE.NAME = "small_cnn"
    cfg.MODEL.BACKBONE.WIDTH = 8
    cfg.MODEL.BACKBONE.WEIGHTS = ""
    cfg.MODEL.IMAGE_CAPTION.NUM_CAPTIONS = 2
    cfg.MODEL.IMAGE_CAPTION.MAX_TOKENS = 6
    vocab = Vocabulary(WORDS)
    torch.manual_seed(0)
    model = build_model(cfg, vocab)
    imgs = [torch.randint(0, 255, (3, 64, 48), dtype=torch.uint8), torch.randint(0, 255, (3, 40, 64), dtype=torch.uint8)]
    batch = [{"image": imgs[0], "image_captions": CAPS[:2], "image_id": 5},
             {"image": imgs[1], "image_captions": CAPS[2:], "image_id": 6}]
    model.train()
    losses = model(batch)
    assert set(losses) == {"loss_image_caption", "loss_image_caption_doubly_stochastic"}
    model.train_captions = "all"
    assert all(torch.isfinite(v) for v in model(batch).values())
    model.eval()
    out = model(batch)
    assert [o["image_id"] for o in out] == [5, 6]
    for o in out:
        assert isinstance(o["image_caption"], str) and len(o["image_captions"]) == 2
        assert o["image_caption"] == o["image_captions"][0]["caption"]
        assert o["image_caption_logprob"] == o["image_captions"][0]["logprob"]
        assert o["attention"].shape[0] == len(o["image_caption"].split())
    # the attention grid is 4x3 (64x48 at stride 16), the second image's padding is never attended
    assert out[1]["attention"].shape[1:] == (4, 4)
    if out[1]["attention"].shape[0]:
        assert (out[1]["attention"][:, 3:, :] == 0).all()


def test_attention_figure(tmp_path):
    from densecap.inference.attention_maps import save_attention_figure, upsample_attention

    att = np.zeros((2, 2), np.float32)
    att[0, 1] = 1.0  # top-right cell
    # cells of 10 px from the top-left: the grid covers 20x20 of a 15x30 image (the rest is off-grid)
    up = upsample_attention(att, (15, 30), cell=(10, 10))
    assert up.shape == (15, 30)
    assert up[2, 17] > 0.99 * up.max() and up[2, 2] < 0.1 and (up[:, 20:] == 0).all()
    stretched = upsample_attention(att, (20, 40))  # no cell: the grid spans the image
    assert stretched[5, 35] > 0.9 * stretched.max() and stretched[15, 10] == 0
    img = np.zeros((15, 30, 3), np.uint8)
    path = save_attention_figure(str(tmp_path / "a.png"), img, ["a", "star"], np.stack([att, att.T]), cell=(10, 10))
    assert Image.open(path).size[0] > 100


def test_infer_image_caption_and_attention_maps(tmp_path):
    """tools/infer.py --image-caption --num-captions 2 --attention-maps with an ImageCaptioner."""
    from densecap.inference.cli import build_parser, run
    from densecap.inference.predictor import DenseCapPredictor
    from densecap.modeling.image_captioner import ImageCaptioner

    cfg = small_cfg("sat_soft")
    cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.WIDTH, cfg.MODEL.BACKBONE.WEIGHTS = "small_cnn", 8, ""
    cfg.MODEL.IMAGE_CAPTION.NUM_CAPTIONS, cfg.MODEL.IMAGE_CAPTION.MAX_TOKENS = 2, 5
    torch.manual_seed(0)
    model = ImageCaptioner.from_config(cfg, Vocabulary(WORDS))
    _write_img(str(tmp_path / "in" / "x.png"), (200, 30, 30), size=(80, 48))
    out = tmp_path / "out"
    args = build_parser().parse_args(["--weights", "unused.pth", "--input", str(tmp_path / "in" / "x.png"), "--output", str(out),
                                      "--image-caption", "--num-captions", "2", "--attention-maps", "--no-progress"])
    run(args, predictor=DenseCapPredictor(model, image_size=64, image_caption=True))
    rec = json.loads((out / "results.json").read_text())["results"][0]
    assert isinstance(rec["image_caption"], str) and len(rec["image_captions"]) == 2
    assert rec["image_captions"][0]["caption"] == rec["image_caption"]
    assert (out / "attention" / "x.png").is_file()

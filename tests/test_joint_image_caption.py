"""The whole-image caption head trained jointly on the DenseCap model (MODEL.IMAGE_CAPTION.ENABLED):
data (captions beside the regions, one vocabulary, COCO-id matching), losses, eval outputs, the
trainer's evaluation and tools/infer.py on a joint checkpoint."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from densecap.data.captions import image_caption_index
from densecap.data.dataset import DenseCapDataset
from densecap.data.prepared import load_split, load_vocab
from densecap.data.tokenizer import UNK
from densecap.engine.build import build_dataset, build_train_loader, freeze_all_but, load_train_vocab
from densecap.modeling import build_model


def _joint(cfg, head="sat_soft", train_captions="all"):
    c = cfg.MODEL.IMAGE_CAPTION
    c.ENABLED, c.HEAD, c.TRAIN_CAPTIONS = True, head, train_captions
    c.EMBED_SIZE, c.HIDDEN_SIZE, c.ATTENTION_SIZE, c.DROPOUT = 16, 16, 16, 0.0
    c.VOCAB_MIN_COUNT, c.MAX_TOKENS, c.BEAM_SIZE = 1, 12, 2
    return cfg


def _model(cfg):
    """The joint model (seeded) and its vocabulary."""
    vocab = load_train_vocab(cfg)
    torch.manual_seed(0)
    return build_model(cfg, vocab), vocab


def _batch(cfg, vocab, n=2):
    ds = build_dataset(cfg, cfg.DATASETS.TRAIN[0], is_train=False, vocab=vocab)
    return [ds[i] for i in range(n)]


def test_one_vocabulary_region_words_first(tiny_cfg, synthetic_root):
    cfg = _joint(tiny_cfg)
    vocab = load_train_vocab(cfg)
    region = load_vocab(os.path.join(synthetic_root, "prepared"))
    # the prepared region captions keep their word ids; the scene words are appended
    assert vocab.idx_to_token[: len(region)] == region.idx_to_token
    for w in ("background", "on", "shapes"):
        assert w in vocab and w not in region
    ds = build_dataset(cfg, cfg.DATASETS.TRAIN[0], is_train=True, vocab=vocab)
    assert ds.num_images_with_captions() == len(ds) > 0
    item = ds[0]
    caps = item["image_captions"]
    assert caps.dtype == torch.int64 and caps.shape[1] == 12 and caps.shape[0] == len(item["gt_image_captions"]) >= 1
    assert not (caps == UNK).any()
    assert vocab.decode_str(caps[0].tolist()) == " ".join(item["gt_image_captions"][0].split()[:12])


@pytest.mark.parametrize("head", ["nic", "sat_soft", "sat_hard"])
def test_joint_losses_train_the_shared_backbone(tiny_cfg, head):
    cfg = _joint(tiny_cfg, head)
    model, vocab = _model(cfg)
    model.train()
    losses = model(_batch(cfg, vocab))
    expected = {"loss_image_caption"}
    if head != "nic":
        expected.add("loss_image_caption_doubly_stochastic")
    if head == "sat_hard":
        expected |= {"loss_image_caption_reinforce", "loss_image_caption_entropy"}
    assert expected <= set(losses) and {"loss_caption", "loss_rpn_cls", "loss_cls"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    # the caption loss alone reaches the backbone: one backbone, two tasks
    conv = next(p for p in model.backbone.parameters() if p.dim() == 4)
    (g,) = torch.autograd.grad(losses["loss_image_caption"], conv, retain_graph=True)
    assert float(g.abs().sum()) > 0


def test_images_without_captions_only_train_regions(tiny_cfg):
    cfg = _joint(tiny_cfg)
    model, vocab = _model(cfg)
    model.train()
    batch = _batch(cfg, vocab)
    alone = model(batch[:1])["loss_image_caption"]
    batch[1]["image_captions"] = batch[1]["image_captions"][:0]  # K = 0: not in the caption file
    mixed = model(batch)
    assert torch.allclose(mixed["loss_image_caption"], alone, rtol=1e-5)
    for b in batch:
        b["image_captions"] = b["image_captions"][:0]
    none = model(batch)
    # same loss keys as any other step (DDP ranks log the same dict), zero value, still differentiable
    assert set(none) == set(mixed)
    assert float(none["loss_image_caption"].detach()) == 0.0 and none["loss_image_caption"].requires_grad
    sum(none.values()).backward()


def test_joint_eval_outputs_regions_and_image_caption(tiny_cfg):
    cfg = _joint(tiny_cfg)
    cfg.MODEL.IMAGE_CAPTION.NUM_CAPTIONS = 2
    model, vocab = _model(cfg)
    model.eval()
    batch = _batch(cfg, vocab)
    out = model(batch)
    assert len(out) == 2
    for o, x in zip(out, batch):
        inst = o["instances"]
        assert inst.image_size == (x["height"], x["width"]) and inst.pred_boxes.shape[1] == 4
        assert isinstance(o["image_caption"], str) and len(o["image_captions"]) == 2
        assert o["image_caption"] == o["image_captions"][0]["caption"]
        assert np.isfinite(o["image_caption_logprob"])
        n_words = len(o["image_caption"].split())
        # 128-px input, stride 8 -> a 16x16 attention grid; each cell covers 8x8 input pixels
        assert tuple(o["attention"].shape) == (n_words, 16, 16)
        assert o["attention_cell"] == (8.0, 8.0)
    # the attention over the reference captions (teacher forcing), always in eval mode
    refs = model.image_caption_attention(batch)
    k, t = batch[0]["image_captions"].shape
    assert refs[0]["attention"].shape == (k, t, 16, 16) and len(refs[0]["captions"]) == k
    model.train()
    again = model.image_caption_attention(batch)
    assert model.training and torch.allclose(again[0]["attention"], refs[0]["attention"])


def test_train_only_the_head_on_a_frozen_model(tiny_cfg):
    cfg = _joint(tiny_cfg, "nic")
    vocab = load_train_vocab(cfg)
    model = build_model(cfg, vocab)
    freeze_all_but(model, ["image_caption_head"])
    model.train()
    losses = model(_batch(cfg, vocab))
    sum(v for v in losses.values() if v.requires_grad).backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.image_caption_head.parameters())


@pytest.mark.slow
def test_joint_training_evaluation_and_infer(tiny_cfg, tmp_path, java):
    """Trainer: losses in metrics.jsonl, eval.json's image_caption metrics; infer on the checkpoint."""
    from densecap.engine.checkpoint import build_model_from_checkpoint
    from densecap.engine.trainer import Trainer
    from densecap.inference.cli import build_parser, run
    from densecap.inference.predictor import DenseCapPredictor

    cfg = _joint(tiny_cfg)
    cfg.SOLVER.MAX_ITER = 2
    cfg.TEST.MAX_IMAGES = 3
    results = Trainer(cfg).train()
    ic = results["image_caption"]
    assert ic["num_images"] == 3 and {"bleu1", "bleu4", "meteor", "rougeL", "cider"} <= set(ic)
    assert "num_words" in ic["attention_grounding"]
    refs = ic["attention_grounding_references"]  # the attention over the reference captions
    assert refs["num_words"] > 0 and refs["ratio"] == pytest.approx(refs["mass"] / refs["share"], abs=2e-3)  # mass, share rounded
    preds = json.load(open(os.path.join(cfg.OUTPUT_DIR, "image_caption_predictions.json")))
    assert len(preds) == 3 and {"image_id", "caption", "logprob"} <= set(preds[0])
    lines = [json.loads(x) for x in open(os.path.join(cfg.OUTPUT_DIR, "metrics.jsonl"))]
    assert any("loss_image_caption" in r for r in lines)

    ckpt = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    model, ckpt_cfg = build_model_from_checkpoint(ckpt)
    assert ckpt_cfg.MODEL.IMAGE_CAPTION.ENABLED and model.image_caption_head is not None
    data = os.path.dirname(cfg.DATASETS.TRAIN[0].split(":")[0])
    img = os.path.join(data, "images", "1.jpg")
    out = tmp_path / "infer"
    args = build_parser().parse_args(["--weights", ckpt, "--input", img, "--output", str(out), "--image-caption",
                                      "--attention-maps", "--no-progress"])
    run(args, predictor=DenseCapPredictor(model, image_size=128, image_caption=True))
    rec = json.loads((out / "results.json").read_text())["results"][0]
    assert isinstance(rec["image_caption"], str) and "boxes" in rec and "captions" in rec
    assert (out / "attention" / "1.png").is_file()


def test_missing_or_unmatched_caption_file_is_named(tiny_cfg, tmp_path):
    cfg = _joint(tiny_cfg)
    cfg.DATASETS.IMAGE_CAPTIONS = str(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_train_vocab(cfg)
    # a caption file whose ids match no training image: a config mistake, said as such
    other = tmp_path / "captions_train2014.json"
    other.write_text(json.dumps({"images": [{"id": 999999, "file_name": "x.jpg"}],
                                 "annotations": [{"image_id": 999999, "caption": "a cat"}]}))
    cfg.DATASETS.IMAGE_CAPTIONS = str(other)
    with pytest.raises(ValueError, match="IMAGE_CAPTIONS_MATCH"):
        load_train_vocab(cfg)


def test_captions_matched_by_coco_id(tmp_path):
    """Visual Genome + COCO: preparation keeps image_data.json's coco_id; a COCO captions file is
    matched through it; images without a COCO id get K = 0 captions."""
    from densecap.data import synthetic

    root = str(tmp_path / "vg")
    synthetic.generate(root, num_images=12, seed=1)
    meta = json.load(open(os.path.join(root, "image_data.json")))
    for m in meta:
        m["coco_id"] = 5000 + m["image_id"] if m["image_id"] % 2 == 0 else None
    json.dump(meta, open(os.path.join(root, "image_data.json"), "w"))
    synthetic.prepare(root, verbose=False)
    prepared = os.path.join(root, "prepared")
    split = load_split(prepared, "train")
    expect = np.where(split.image_ids % 2 == 0, split.image_ids + 5000, -1)
    assert split.coco_ids.tolist() == expect.tolist()

    coco = {"images": [{"id": 5000 + i, "file_name": f"COCO_{i}.jpg"} for i in range(2, 13, 2)],
            "annotations": [{"image_id": 5000 + i, "caption": f"A photo number {i}."} for i in range(2, 13, 2)]}
    path = str(tmp_path / "captions_train2014.json")
    json.dump(coco, open(path, "w"))
    vocab = load_vocab(prepared)
    ds = DenseCapDataset(prepared, "train", vocab=vocab, image_captions=image_caption_index(path),
                         image_caption_match="coco_id", image_caption_max_tokens=6)
    assert ds.num_images_with_captions() == int((split.image_ids % 2 == 0).sum()) > 0
    for i in range(len(ds)):
        item = ds[i]
        iid = item["image_id"]
        if iid % 2 == 0:
            assert item["gt_image_captions"] == [f"a photo number {iid}"]
            assert item["image_captions"].shape == (1, 6)
        else:
            assert item["image_captions"].shape == (0, 6) and item["gt_image_captions"] == []

    # a directory prepared before coco_ids existed: a clear error, not a silent mismatch
    old = str(tmp_path / "old")
    shutil.copytree(prepared, old)
    with np.load(os.path.join(old, "train.npz")) as z:
        arrays = {k: z[k] for k in z.files if k != "coco_ids"}
    np.savez(os.path.join(old, "train.npz"), **arrays)
    assert load_split(old, "train").coco_ids is None
    with pytest.raises(ValueError, match="prepare the dataset again"):
        DenseCapDataset(old, "train", vocab=vocab, image_captions={}, image_caption_match="coco_id")
    with pytest.raises(ValueError, match="IMAGE_CAPTIONS_MATCH"):
        DenseCapDataset(prepared, "train", vocab=vocab, image_captions={}, image_caption_match="flickr_id")


def test_train_loader_carries_image_captions(tiny_cfg):
    cfg = _joint(tiny_cfg)
    vocab = load_train_vocab(cfg)
    batch = next(iter(build_train_loader(cfg, vocab)))
    assert all(b["image_captions"].shape[0] >= 1 for b in batch)


def test_attention_grounding_known_values():
    from densecap.data.tokenizer import Vocabulary
    from densecap.evaluation.attention_grounding import AttentionGrounding
    from densecap.structures import Instances

    vocab = Vocabulary(["a", "red", "circle", "blue", "square", "on", "background"])
    ids = vocab.token_to_idx
    inst = Instances((16, 16), gt_boxes=torch.tensor([[0.0, 0.0, 8.0, 8.0], [8.0, 8.0, 16.0, 16.0]]),
                     gt_captions=torch.tensor([[ids["a"], ids["red"], ids["circle"]], [ids["a"], ids["blue"], ids["square"]]]))
    att = torch.zeros(4, 2, 2)
    att[0] = 0.25  # "a": in every region caption -> not a grounded word
    att[1, 0, 0] = 1.0  # "red": all on the red circle's cell
    att[2] = 0.25  # "square": uniform
    att[3, 0, 1] = 1.0  # "background": no region names it -> left out
    g = AttentionGrounding(vocab)
    g.process([{"image": torch.zeros(3, 16, 16), "instances": inst}],
              [{"image_caption": "a red square background", "attention": att, "attention_cell": (8.0, 8.0)}])
    r = g.evaluate()
    assert r["num_words"] == 2 and r["mass"] == pytest.approx(0.625) and r["share"] == pytest.approx(0.25)
    assert r["ratio"] == pytest.approx(2.5)
    assert r["entropy"] == pytest.approx(np.log(4) / 2, abs=1e-3) and r["entropy_uniform"] == pytest.approx(np.log(4), abs=1e-3)
    # padding cells (centres outside the 16x12 image) count neither as attention nor as area
    g2 = AttentionGrounding(vocab)
    g2.process([{"image": torch.zeros(3, 16, 12), "instances": inst}],
               [{"image_caption": "red", "attention": att[1:2], "attention_cell": (8.0, 8.0)}])
    assert g2.evaluate()["share"] == pytest.approx(0.5)



def test_reference_attention_grounding_scores_the_outputs_it_is_given():
    """The reference-caption grounding reads ``reference_attention`` from the outputs (it runs no
    model): a map all on the named region gives mass 1; words beyond each caption are ignored."""
    from densecap.data.tokenizer import Vocabulary
    from densecap.evaluation.attention_grounding import ReferenceAttentionGrounding
    from densecap.structures import Instances

    vocab = Vocabulary(["a", "red", "circle", "blue", "square"])
    ids = vocab.token_to_idx
    inst = Instances((16, 16), gt_boxes=torch.tensor([[0.0, 0.0, 8.0, 8.0], [8.0, 8.0, 16.0, 16.0]]),
                     gt_captions=torch.tensor([[ids["a"], ids["red"], ids["circle"]], [ids["a"], ids["blue"], ids["square"]]]))
    att = torch.zeros(2, 4, 2, 2)  # K=2 reference captions, T=4 steps
    att[0, 1, 0, 0] = 1.0  # "red" on the red circle's cell
    att[0, 2, 1, 1] = 1.0  # "circle" on the blue square's cell: mass 0
    att[1, 1, 1, 1] = 1.0  # "blue" on the blue square
    att[1, 2] = 1.0  # a step after the 2-word caption "a blue": ignored
    ref = {"captions": ["a red circle", "a blue"], "attention": att, "attention_cell": (8.0, 8.0)}
    g = ReferenceAttentionGrounding(vocab)
    g.process([{"image": torch.zeros(3, 16, 16), "instances": inst}] * 2, [{"reference_attention": ref}, {"reference_attention": None}])
    r = g.evaluate()
    assert r["num_words"] == 3 and r["mass"] == round(2 / 3, 4) and r["share"] == 0.25

def test_word_region_masks_and_supervision_loss():
    from densecap.data.tokenizer import Vocabulary
    from densecap.modeling.image_caption.attach import word_region_masks
    from densecap.modeling.image_caption.losses import attention_supervision_loss

    vocab = Vocabulary(["a", "red", "circle", "blue", "square", "background"])
    ids = vocab.token_to_idx
    cap = torch.tensor([[ids["red"], ids["circle"], ids["a"], ids["background"], 0]])  # 1 T
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0], [8.0, 0.0, 16.0, 16.0]])  # the right one covers two cells
    region_caps = torch.tensor([[ids["a"], ids["red"], ids["circle"]], [ids["a"], ids["blue"], ids["square"]]])
    m = word_region_masks(cap, boxes, region_caps, stride=8.0, shape=(2, 2))  # 1 T 2 2
    assert m.shape == (1, 5, 2, 2)
    assert m[0, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]] and m[0, 1].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert m[0, 2:].sum() == 0  # "a" is in every region caption; "background" and PAD in none
    blue = word_region_masks(torch.tensor([[ids["blue"]]]), boxes, region_caps, 8.0, (2, 2))
    assert blue[0, 0].tolist() == [[0.0, 1.0], [0.0, 1.0]]

    alpha = torch.full((1, 3, 4), 0.25, requires_grad=True)  # B S L
    regions = torch.zeros(1, 3, 4, dtype=torch.bool)
    regions[0, 0, 0] = True  # step 0: one cell of four -> mass 0.25
    regions[0, 1, :2] = True  # step 1: two cells -> mass 0.5
    regions[0, 2, :] = True  # step 2: masked out by step_mask
    total, count = attention_supervision_loss(alpha, regions, torch.tensor([[1.0, 1.0, 0.0]]))
    assert int(count) == 2 and float(total.detach()) == pytest.approx(-np.log(0.25) - np.log(0.5), rel=1e-5)
    total.backward()
    assert alpha.grad[0, 0, 0] < 0 and alpha.grad[0, 2].abs().sum() == 0


def test_attention_supervision_in_joint_training(tiny_cfg):
    cfg = _joint(tiny_cfg)
    cfg.MODEL.IMAGE_CAPTION.ATTENTION_SUPERVISION_WEIGHT = 1.0
    model, vocab = _model(cfg)
    model.train()
    losses = model(_batch(cfg, vocab))
    att = losses["loss_image_caption_attention"]
    assert torch.isfinite(att) and float(att.detach()) > 0  # synthetic captions name the regions' colours and shapes
    score = model.image_caption_head.attention.score.weight
    (g,) = torch.autograd.grad(att, score)
    assert float(g.abs().sum()) > 0
    # off by default (Xu et al.'s unsupervised attention): no such loss
    cfg.MODEL.IMAGE_CAPTION.ATTENTION_SUPERVISION_WEIGHT = 0.0
    assert "loss_image_caption_attention" not in build_model(cfg, vocab).train()(_batch(cfg, vocab))


def test_start_from_a_joint_checkpoint_with_a_dense_only_config(tiny_cfg, tmp_path):
    """embedding_small.yaml's path on a joint demo checkpoint: the trainer keeps the checkpoint's
    (longer) vocabulary, drops the image-caption head's weights, and trains."""
    from densecap.engine.checkpoint import load_checkpoint
    from densecap.engine.trainer import Trainer

    cfg = _joint(tiny_cfg.clone())
    cfg.SOLVER.MAX_ITER = 1
    cfg.DATASETS.TEST = ()
    Trainer(cfg).train()
    joint_ckpt = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    joint_vocab = load_checkpoint(joint_ckpt)["vocab"]["idx_to_token"]

    dense = tiny_cfg.clone()
    dense.MODEL.WEIGHTS = joint_ckpt
    dense.MODEL.TRAIN_ONLY = ["embedding_head"]
    dense.MODEL.EMBEDDING.ENABLED = True
    dense.SOLVER.MAX_ITER = 1
    dense.DATASETS.TEST = ()
    dense.OUTPUT_DIR = str(tmp_path / "emb")
    trainer = Trainer(dense)
    assert trainer.vocab.idx_to_token == joint_vocab
    trainer.train()

    # a checkpoint whose vocabulary is not an extension of the data's: its words keep their ids,
    # the data's missing word is appended (a new row) and the dataset translates the data's ids
    ckpt = load_checkpoint(joint_ckpt)
    lost = ckpt["vocab"]["idx_to_token"][4]
    ckpt["vocab"]["idx_to_token"] = ckpt["vocab"]["idx_to_token"][:4] + ["zebra"] + ckpt["vocab"]["idx_to_token"][5:]
    other = str(tmp_path / "other.pth")
    torch.save(ckpt, other)
    dense.MODEL.WEIGHTS = other
    dense.OUTPUT_DIR = str(tmp_path / "emb2")
    trainer = Trainer(dense)
    assert trainer.vocab.idx_to_token == ckpt["vocab"]["idx_to_token"] + [lost]
    trainer.train()

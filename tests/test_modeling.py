"""The dense captioning model end to end on tiny CPU inputs (densecap/modeling)."""
import math
import os

import pytest
import torch

from densecap.config import get_cfg
from densecap.data.tokenizer import END, PAD, START, Vocabulary
from densecap.modeling import build_model
from densecap.modeling.anchors import AnchorGenerator
from densecap.modeling.backbone import resolve_weights
from densecap.modeling.language_model import LSTMCaptionDecoder, caption_targets, load_word_vectors
from densecap.modeling.postprocess import select_detections
from densecap.modeling.transform import DenseCapTransform
from densecap.modeling.rpn import sample_boxes
from densecap.structures import Instances

VOCAB = Vocabulary([f"w{i}" for i in range(12)])
POS_LOSSES = ("loss_rpn_box", "loss_box", "loss_caption")


def tiny_cfg(backbone="small_cnn", **over):
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = backbone
    cfg.MODEL.BACKBONE.WIDTH = 16
    cfg.MODEL.ROI.FC_DIM = 32
    cfg.MODEL.ROI.POOLER_RESOLUTION = 3
    cfg.MODEL.RPN.HEAD_CHANNELS = 16
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.CAPTION.EMBED_SIZE = 16
    cfg.MODEL.CAPTION.HIDDEN_SIZE = 16
    cfg.MODEL.CAPTION.MAX_TOKENS = 6
    cfg.MODEL.RPN.ANCHORS = [[16, 16], [32, 32], [48, 24], [24, 48], [64, 64]]
    cfg.MODEL.RPN.ANCHOR_SIZES_FPN = [[16], [32], [64], [128], [256]]
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 40
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 200
    for k, v in over.items():
        cfg.merge_from_list([k, v])
    return cfg


def make_inputs(n=2, size=64, G=3, seed=0, empty=()):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        h, w = size, size - 8 * i
        img = torch.randint(0, 255, (3, h, w), dtype=torch.uint8, generator=g)
        k = 0 if i in empty else G
        xy = torch.rand(k, 2, generator=g) * (w * 0.4)
        wh = 12 + torch.rand(k, 2, generator=g) * (w * 0.4)
        boxes = torch.cat([xy, xy + wh], 1)
        caps = torch.randint(4, len(VOCAB), (k, 5), generator=g)
        caps[:, 3:] = 0
        out.append({"image": img, "height": 2 * h, "width": 2 * w, "scale": 0.5, "image_id": i,
                    "file_name": f"{i}.jpg", "instances": Instances((h, w), gt_boxes=boxes, gt_captions=caps)})
    return out


def train_step(model, inputs):
    model.train()
    losses = model(inputs)
    total = sum(losses.values())
    total.backward()
    return losses


@pytest.mark.parametrize("backbone", ["small_cnn", "vgg16", "resnet50_c4", "resnet50_fpn"])
def test_train_step_every_backbone(backbone):
    torch.manual_seed(0)
    cfg = tiny_cfg(backbone)
    model = build_model(cfg, VOCAB)
    inputs = make_inputs(2 if backbone == "small_cnn" else 1, size=64)  # the big ones: 1 image, for time
    losses = train_step(model, inputs)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box", "loss_rpn_delta_l2", "loss_cls", "loss_box", "loss_caption"}
    for k, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v), (k, v)
    # random-init objectness starts near BCE(0) = log 2, times the weights
    assert losses["loss_rpn_cls"].item() == pytest.approx(0.1 * math.log(2), rel=0.3)
    assert losses["loss_caption"].item() > 0
    grads = [p.grad for p in model.caption_head.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.backbone.stages[0][0].weight.grad is not None  # random init: nothing frozen


def test_eval_output_contract():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(), VOCAB)
    model.eval()
    inputs = make_inputs(2)
    out = model(inputs)
    assert len(out) == 2
    for x, o in zip(inputs, out):
        inst = o["instances"]
        assert inst.image_size == (x["height"], x["width"])
        n = len(inst)
        assert n > 0
        assert inst.pred_boxes.dtype == torch.float32 and inst.pred_boxes.shape == (n, 4)
        assert inst.scores.dtype == torch.float32 and inst.scores.shape == (n,)
        assert inst.pred_caption_tokens.dtype == torch.int64 and inst.pred_caption_tokens.shape == (n, 6)
        assert inst.pred_caption_logprobs.dtype == torch.float32 and inst.pred_caption_logprobs.shape == (n,)
        assert inst.region_codes.dtype == torch.float32 and inst.region_codes.shape == (n, 32)
        assert isinstance(inst.pred_captions, list) and len(inst.pred_captions) == n
        assert torch.all((inst.scores >= 0) & (inst.scores <= 1))
        assert torch.all(inst.scores[:-1] >= inst.scores[1:])
        b = inst.pred_boxes  # x y w h in the original frame (2x the input)
        assert torch.all(b[:, 2:] >= 0)
        assert torch.all(b[:, 0] >= 0) and torch.all(b[:, 0] + b[:, 2] <= x["width"] + 1e-3)
        assert torch.all(b[:, 1] >= 0) and torch.all(b[:, 1] + b[:, 3] <= x["height"] + 1e-3)
        assert torch.all(inst.pred_caption_logprobs <= 0)
        for cap, tok in zip(inst.pred_captions, inst.pred_caption_tokens):
            assert cap == VOCAB.decode_str(tok.tolist())
            assert not {PAD, START, END} & set(t for t in tok.tolist() if t != PAD)
        # the logprob is the caption's log-likelihood under the model
        s = model.caption_head.score(inst.region_codes, inst.pred_caption_tokens)
        assert torch.allclose(s, inst.pred_caption_logprobs, atol=1e-4)
    # final NMS 0.3: no two kept boxes overlap more than that
    from torchvision.ops import box_iou

    b = out[0]["instances"].pred_boxes
    xyxy = torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], 1)
    iou = box_iou(xyxy, xyxy).fill_diagonal_(0)
    assert iou.max() <= 0.3 + 1e-5
    # eval options are attributes
    model.roi_heads.detections_per_image = 2
    model.roi_heads.score_thresh = 0.0
    assert all(len(o["instances"]) <= 2 for o in model(inputs))


def test_images_without_regions_train_and_infer():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(), VOCAB)
    inputs = make_inputs(2, empty=(0, 1))
    losses = train_step(model, inputs)
    for k in POS_LOSSES:
        assert losses[k].item() == 0.0 and losses[k].requires_grad
    assert losses["loss_cls"].item() > 0 and losses["loss_rpn_cls"].item() > 0
    assert model.roi_heads.objectness.weight.grad.abs().sum() > 0  # learns from negatives
    # a mixed batch: one empty image, one with regions
    model.zero_grad()
    mixed = train_step(model, make_inputs(2, empty=(0,)))
    assert all(torch.isfinite(v) for v in mixed.values()) and mixed["loss_caption"].item() > 0
    model.eval()
    out = model(inputs)
    assert all(o["instances"].pred_boxes.shape[1] == 4 for o in out)


def test_given_boxes_kept_exactly_and_in_order():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(), VOCAB)
    model.eval()
    inputs = make_inputs(2)
    given = torch.tensor([[50.0, 10.0, 30.0, 40.0], [0.0, 0.0, 128.0, 128.0], [3.5, 7.25, 10.0, 0.0],
                          [100.0, 90.0, 60.0, 60.0]])
    inputs[0]["given_boxes"] = given
    out = model(inputs)
    inst = out[0]["instances"]
    assert torch.equal(inst.pred_boxes, given)
    assert len(inst.pred_captions) == 4 and torch.all((inst.scores >= 0) & (inst.scores <= 1))
    # the other image of the batch still goes through the RPN and NMS
    assert len(out[1]["instances"]) > 0
    # alone, the same boxes get the same codes, scores and captions
    alone = model([inputs[0]])[0]["instances"]
    assert torch.allclose(alone.region_codes, inst.region_codes, atol=1e-5)
    assert torch.allclose(alone.scores, inst.scores, atol=1e-6)
    assert alone.pred_captions == inst.pred_captions
    # the order is the user's: reversing the boxes reverses the results
    inputs[0]["given_boxes"] = given.flip(0)
    rev = model([inputs[0]])[0]["instances"]
    assert torch.allclose(rev.region_codes, inst.region_codes.flip(0), atol=1e-5)
    inputs[0]["given_boxes"] = torch.zeros(0, 4)
    assert len(model([inputs[0]])[0]["instances"]) == 0


@pytest.mark.parametrize("backprop", [True, False])
def test_recognition_losses_reach_rpn_deltas_only_with_backprop_boxes(backprop):
    torch.manual_seed(0)
    cfg = tiny_cfg(**{"MODEL.ROI.BACKPROP_BOXES": backprop, "MODEL.RPN.LOSS_WEIGHT_BOX": 0.0,
                      "MODEL.RPN.LOSS_WEIGHT_CLS": 0.0, "MODEL.RPN.DELTA_L2_WEIGHT": 0.0})
    model = build_model(cfg, VOCAB)
    train_step(model, make_inputs(2))
    g = model.rpn.head.deltas.weight.grad
    if backprop:
        assert g is not None and g.abs().sum() > 0
    else:
        assert g is None or g.abs().sum() == 0
    # the recognition side learns either way
    assert model.roi_heads.recognition.fc6.weight.grad.abs().sum() > 0


def test_roi_align_sampler_trains():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**{"MODEL.ROI.SAMPLER": "roi_align"}), VOCAB)
    losses = train_step(model, make_inputs(2))
    assert all(torch.isfinite(v) for v in losses.values())


# ---- caption head -----------------------------------------------------------------------------
def caption_head(decoder="lstm", seed=0, every_step=False, layers=1):
    torch.manual_seed(seed)
    cfg = tiny_cfg(**{"MODEL.CAPTION.DECODER": decoder, "MODEL.CAPTION.CODE_EVERY_STEP": every_step,
                      "MODEL.CAPTION.NUM_LAYERS": layers})
    from densecap.modeling.language_model import build_caption_decoder

    head = build_caption_decoder(cfg, VOCAB, input_dim=10)
    # sharpen the output so decoding is not a coin flip
    with torch.no_grad():
        head.out.weight.mul_(8.0)
    return head.eval()


@torch.no_grad()
def manual_greedy(head, code, max_len):
    state = head.init_state(code[None])
    tok = torch.tensor([START])
    words, total = [], 0.0
    for t in range(max_len + 1):
        lp, state = head.step(state, tok)
        if t == max_len:  # the caption is closed after max_len words
            total += float(lp[0, END])
            break
        k = int(lp[0].argmax())
        total += float(lp[0, k])
        if k == END:
            break
        words.append(k)
        tok = torch.tensor([k])
    return words, total


@pytest.mark.parametrize("decoder,every_step", [("lstm", False), ("gru", False), ("lstm", True)])
def test_beam_one_equals_greedy(decoder, every_step):
    head = caption_head(decoder, every_step=every_step)
    codes = torch.randn(9, 10)
    tokens, logprobs = head.generate(codes, beam_size=1)
    assert tokens.shape == (9, 6) and logprobs.shape == (9,)
    for i in range(9):
        words, total = manual_greedy(head, codes[i], 6)
        assert tokens[i, : len(words)].tolist() == words and torch.all(tokens[i, len(words):] == PAD)
        assert logprobs[i].item() == pytest.approx(total, abs=1e-4)


def test_batched_beam_search_equals_per_image():
    head = caption_head()
    codes = torch.randn(8, 10)
    # "images" of 3, 1 and 4 regions decoded together or one image at a time
    tokens, logprobs = head.generate(codes, beam_size=3)
    start = 0
    for n in (3, 1, 4):
        t, lp = head.generate(codes[start : start + n], beam_size=3)
        assert torch.equal(t, tokens[start : start + n])
        assert torch.allclose(lp, logprobs[start : start + n], atol=1e-5)
        start += n
    # beam search never does worse than greedy on its own objective
    _, greedy_lp = head.generate(codes, beam_size=1)
    assert torch.all(logprobs >= greedy_lp - 1e-5)
    top, top_lp = head.generate(codes, beam_size=3, num_results=2)
    assert top.shape == (8, 2, 6) and torch.all(top_lp[:, 0] >= top_lp[:, 1])


@pytest.mark.parametrize("decoder,every_step,layers", [("lstm", False, 1), ("lstm", True, 1), ("gru", False, 1),
                                                       ("lstm", True, 2), ("gru", True, 2)])
def test_score_agrees_with_teacher_forced_loss(decoder, every_step, layers):
    # score() and the loss run the fused nn.LSTM/GRU; step() and generate() the step-by-step cell
    head = caption_head(decoder, every_step=every_step, layers=layers).train()
    codes = torch.randn(5, 10)
    caps = torch.tensor([[4, 5, 6, 0, 0], [7, 0, 0, 0, 0], [8, 9, 10, 11, 12], [4, 4, 0, 0, 0], [15, 5, 0, 0, 0]])
    loss = head.loss(codes, caps)
    head.eval()
    s = head.score(codes, caps)
    assert loss.item() == pytest.approx(-s.sum().item() / 5, rel=1e-5)
    # by hand: the first caption's log-likelihood from the step interface
    state = head.init_state(codes[:1])
    tok, total = torch.tensor([START]), 0.0
    for t in [4, 5, 6, END]:
        lp, state = head.step(state, tok)
        total += lp[0, t].item()
        tok = torch.tensor([t])
    assert s[0].item() == pytest.approx(total, abs=1e-4)
    # generated captions score to their reported log-probabilities
    tokens, logprobs = head.generate(codes, beam_size=2)
    assert torch.allclose(head.score(codes, tokens), logprobs, atol=1e-4)
    # no regions
    assert head.score(codes[:0], caps[:0]).shape == (0,)
    assert head.loss(codes[:0], caps[:0]).item() == 0.0


def test_caption_targets_and_forget_bias():
    caps = torch.tensor([[4, 5, 0], [6, 7, 8], [0, 0, 0]])
    assert caption_targets(caps).tolist() == [[4, 5, END, 0], [6, 7, 8, END], [END, 0, 0, 0]]
    head = LSTMCaptionDecoder(vocab_size=10, input_dim=4, embed_size=6, hidden_size=5)
    b = head.rnn.bias_ih_l0 + head.rnn.bias_hh_l0
    assert torch.all(b[5:10] == 1.0)


def test_word_vectors_with_oov_words(tmp_path):
    p = tmp_path / "vec.txt"
    p.write_text("3 4\nw1 1 2 3 4\nzebra 9 9 9 9\nw3 0.5 0.5 0.5 0.5\n")
    vecs, found = load_word_vectors(str(p), VOCAB, 4)
    i1, i3 = VOCAB.token_to_idx["w1"], VOCAB.token_to_idx["w3"]
    assert found.sum() == 2 and found[i1] and found[i3]
    assert vecs[i1].tolist() == [1, 2, 3, 4]
    cfg = tiny_cfg(**{"MODEL.CAPTION.EMBED_SIZE": 4, "MODEL.CAPTION.WORD_VECTORS": str(p)})
    model = build_model(cfg, VOCAB)
    emb = model.caption_head.embed.weight
    assert emb[i1].tolist() == [1, 2, 3, 4]
    assert emb[VOCAB.token_to_idx["w2"]].abs().sum() > 0  # OOV keeps its random init
    with pytest.raises(ValueError):
        load_word_vectors(str(p), VOCAB, 5)


# ---- pieces ---------------------------------------------------------------------------------------
def test_anchor_layout():
    gen = AnchorGenerator(sizes_wh=[[(10, 20), (30, 30)]], strides=[8])
    (a,) = gen([(2, 3)], torch.device("cpu"))
    assert a.shape == (2 * 3 * 2, 4)
    # row 0, column 1, anchor 0: centre (12, 4), 10 x 20
    assert a[2].tolist() == [7.0, -6.0, 17.0, 14.0]
    # row 1, column 0, anchor 1: centre (4, 12), 30 x 30
    assert a[7].tolist() == [-11.0, -3.0, 19.0, 27.0]
    cfg = tiny_cfg()
    fpn = AnchorGenerator.from_config(cfg, [4, 8, 16, 32, 64])
    assert fpn.num_anchors == 3
    wh = fpn.cell_anchors[1]
    assert torch.allclose(wh[:, 0] * wh[:, 1], torch.full((3,), 32.0 * 32.0))


def test_box_sampler_rules():
    torch.manual_seed(0)
    gt = torch.tensor([[10.0, 10.0, 50.0, 50.0], [60.0, 60.0, 90.0, 70.0]])
    boxes = torch.tensor([
        [10.0, 10.0, 50.0, 52.0],   # 0: IoU 0.95 with gt0 -> positive
        [12.0, 12.0, 48.0, 48.0],   # 1: IoU 0.81 -> positive
        [10.0, 10.0, 30.0, 50.0],   # 2: IoU 0.5 -> ignored
        [55.0, 55.0, 95.0, 85.0],   # 3: best box of gt1 (IoU 0.25) -> forced positive
        [0.0, 70.0, 20.0, 95.0],    # 4: IoU 0 -> negative
        [70.0, 0.0, 99.0, 20.0],    # 5: negative
        [-5.0, 0.0, 20.0, 20.0],    # 6: crosses the border -> excluded
        [80.0, 80.0, 120.0, 99.0],  # 7: crosses the border (x2 > 100) -> excluded
    ])
    pos, neg, matched = sample_boxes(boxes, gt, (100, 100), batch_size=256, positive_fraction=0.5,
                                     iou_thresholds=(0.3, 0.7), ignore_cross_boundary=True)
    assert dict(zip(pos.tolist(), matched.tolist())) == {0: 0, 1: 0, 3: 1}
    assert sorted(neg.tolist()) == [4, 5]
    # caps: at most batch * fraction positives, negatives fill the rest
    pos, neg, _ = sample_boxes(boxes, gt, (100, 100), batch_size=4, positive_fraction=0.5,
                               iou_thresholds=(0.3, 0.7), ignore_cross_boundary=True)
    assert len(pos) == 2 and len(neg) == 2
    # without the border rule, box 6 (IoU 0.21 with gt0) is a negative
    _, neg, _ = sample_boxes(boxes, gt, (100, 100), batch_size=256, positive_fraction=0.5,
                             iou_thresholds=(0.3, 0.7), ignore_cross_boundary=False)
    assert 6 in neg.tolist()
    # no ground truth: all valid boxes are negatives
    pos, neg, _ = sample_boxes(boxes, gt[:0], (100, 100), batch_size=256, positive_fraction=0.5,
                               iou_thresholds=(0.3, 0.7), ignore_cross_boundary=True)
    assert len(pos) == 0 and sorted(neg.tolist()) == [0, 1, 2, 3, 4, 5]


def test_postprocess_functions():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0],
                          [40.0, 40.0, 50.0, 50.0]])
    scores = torch.tensor([0.5, 0.9, 0.1, 0.7])
    assert select_detections(boxes, scores, nms_thresh=0.3).tolist() == [1, 3, 2]
    assert select_detections(boxes, scores, nms_thresh=0.3, max_detections=2).tolist() == [1, 3]
    assert select_detections(boxes, scores, nms_thresh=0.3, score_thresh=0.2).tolist() == [1, 3]
    assert select_detections(boxes, scores, nms_thresh=1.0).tolist() == [1, 3, 0, 2]
    tf = DenseCapTransform(pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3)
    xywh = tf.postprocess(torch.tensor([[10.0, 20.0, 30.0, 60.0], [-4.0, 0.0, 300.0, 8.0]]), 0.5, 100, 120)
    assert xywh.tolist() == [[20.0, 40.0, 40.0, 60.0], [0.0, 0.0, 120.0, 16.0]]


def test_weights_resolution_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError) as e:
        resolve_weights("VGG16_Weights.IMAGENET1K_V1")
    msg = str(e.value)
    assert "vgg16-397923af.pth" in msg and str(tmp_path / "hub" / "checkpoints") in msg
    with pytest.raises(ValueError):
        resolve_weights("NoSuchWeights.V1")
    with pytest.raises(FileNotFoundError):
        resolve_weights(str(tmp_path / "missing.pth"))
    # a file in the hub cache under torchvision's name is used
    os.makedirs(tmp_path / "hub" / "checkpoints")
    torch.save({"a": torch.ones(1)}, tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth")
    assert resolve_weights("VGG16_Weights.IMAGENET1K_V1")["a"].item() == 1.0


def test_local_weights_file_and_freeze_at(tmp_path):
    torch.manual_seed(0)
    src = build_model(tiny_cfg(), VOCAB).backbone
    path = tmp_path / "small.pth"
    torch.save({"model": src.state_dict()}, path)
    torch.manual_seed(1)
    model = build_model(tiny_cfg(**{"MODEL.BACKBONE.WEIGHTS": str(path), "MODEL.BACKBONE.FREEZE_AT": 2}), VOCAB)
    for k, v in src.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k
    frozen = [all(not p.requires_grad for p in s.parameters()) for s in model.backbone.stages]
    assert frozen == [True, True, False, False]


def test_small_cnn_rgb_skip_carries_the_input_colour():
    cfg = tiny_cfg(**{"MODEL.BACKBONE.RGB_SKIP": True, "MODEL.BACKBONE.STRIDE": 8})
    model = build_model(cfg, VOCAB).eval()
    assert model.backbone.out_channels == 2 * 16 + 3
    images, _ = model.preprocess_image(make_inputs(1, size=64))
    out = model.backbone(images)["out"]  # 1 C 8 8
    assert out.shape == (1, 35, 8, 8)
    expected = images[0, :, :8, :8].mean(dim=(1, 2))  # the top-left 8 x 8 cell
    assert torch.allclose(out[0, -3:, 0, 0], expected, atol=1e-5)
    losses = train_step(model, make_inputs(2))
    assert all(torch.isfinite(v) for v in losses.values())

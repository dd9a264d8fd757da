"""Visual context for the region captioner (MODEL.ROI_HEADS.CONTEXT, densecap/modeling/context.py)."""
import pytest
import torch

from densecap.modeling import build_model
from densecap.modeling.context import enlarged_boxes, fuse_context, parse_context, whole_image_boxes

from test_modeling import VOCAB, make_inputs, tiny_cfg, train_step

F = 32  # tiny_cfg's FC_DIM


def test_parse_context():
    assert parse_context("") == () and parse_context("none") == () and parse_context(None) == ()
    assert parse_context("global") == ("global",)
    assert parse_context("union+global") == ("global", "union")
    assert parse_context(" Global , union ") == ("global", "union")
    assert parse_context(["union"]) == ("union",)
    with pytest.raises(ValueError, match="unknown context.*'local'"):
        parse_context("global,local")


def test_context_boxes():
    b = torch.tensor([[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 60.0, 10.0]])
    e = enlarged_boxes(b, 2.0, (50, 64))  # image h 50, w 64
    assert torch.allclose(e[0], torch.tensor([0.0, 10.0, 40.0, 50.0]))  # centre (20, 30), 40x40, clipped
    assert torch.allclose(e[1], torch.tensor([0.0, 0.0, 64.0, 15.0]))
    assert torch.equal(whole_image_boxes([(50, 64)], b)[0], torch.tensor([[0.0, 0.0, 64.0, 50.0]]))


def test_fuse_context_layout():
    codes = torch.arange(3 * 2, dtype=torch.float32).view(3, 2)  # K=3 regions of 2 images (2 + 1)
    boxes = [torch.tensor([[0.0, 0, 4, 4], [2.0, 2, 6, 6]]), torch.tensor([[1.0, 1, 3, 3]])]
    seen = []

    def encode(lists):  # a fake recognition network: the code of a box is its width and height
        seen.append([x.clone() for x in lists])
        allb = torch.cat(lists)
        return torch.stack([allb[:, 2] - allb[:, 0], allb[:, 3] - allb[:, 1]], 1)

    out = fuse_context(encode, codes, boxes, [(10, 20), (8, 8)], ("global", "union"), 2.0)
    assert out.shape == (3, 6)
    assert torch.equal(out[:, :2], codes)
    assert torch.equal(out[:, 2:4], torch.tensor([[20.0, 10.0], [20.0, 10.0], [8.0, 8.0]]))  # image sizes
    assert torch.equal(out[:, 4:], torch.tensor([[6.0, 6.0], [8.0, 8.0], [4.0, 4.0]]))  # 2x, clipped at 0
    assert fuse_context(encode, codes, boxes, [(10, 20), (8, 8)], ()) is codes


@pytest.mark.parametrize("context", ["global", "union", "global,union"])
def test_context_shapes_and_gradients(context):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**{"MODEL.ROI_HEADS.CONTEXT": context}), VOCAB)
    n_ctx = len(parse_context(context))
    assert model.roi_heads.code_dim == F * (1 + n_ctx)
    assert model.caption_head.image_proj[0].in_features == F * (1 + n_ctx)
    train_step(model, make_inputs(2))
    g = model.caption_head.image_proj[0].weight.grad  # E, F * (1 + n)
    for k in range(n_ctx):  # the caption loss reaches every context block of the input projection ...
        assert g[:, F * (k + 1) : F * (k + 2)].abs().sum() > 0
    # ... and through the context codes the recognition network: with the region's own codes
    # detached from the captioner, the caption loss still trains fc6
    model.zero_grad()
    heads = model.roi_heads
    orig = heads._recognize

    def detached(features, box_lists):
        codes, logits, deltas = orig(features, box_lists)
        return codes.detach(), logits.detach(), deltas.detach()

    heads._recognize = detached
    losses = model(make_inputs(2))
    losses["loss_caption"].backward()
    assert heads.recognition.fc6.weight.grad is not None and heads.recognition.fc6.weight.grad.abs().sum() > 0
    model.eval()
    out = model(make_inputs(2))
    for o in out:
        inst = o["instances"]
        assert inst.region_codes.shape == (len(inst), F * (1 + n_ctx))
        s = model.caption_head.score(inst.region_codes, inst.pred_caption_tokens)
        assert torch.allclose(s, inst.pred_caption_logprobs, atol=1e-4)


def test_context_off_gives_identical_outputs():
    """CONTEXT "" builds the same parameters and gives bit-identical losses and predictions."""
    torch.manual_seed(0)
    ref = build_model(tiny_cfg(), VOCAB)
    torch.manual_seed(0)
    off = build_model(tiny_cfg(**{"MODEL.ROI_HEADS.CONTEXT": "none"}), VOCAB)
    assert ref.state_dict().keys() == off.state_dict().keys()
    for k, v in ref.state_dict().items():
        assert torch.equal(v, off.state_dict()[k]), k
    torch.manual_seed(1)
    l_ref = ref(make_inputs(2))
    torch.manual_seed(1)
    l_off = off(make_inputs(2))
    assert {k: v.item() for k, v in l_ref.items()} == {k: v.item() for k, v in l_off.items()}
    ref.eval(), off.eval()
    a, b = ref(make_inputs(2)), off(make_inputs(2))
    for x, y in zip(a, b):
        assert torch.equal(x["instances"].pred_boxes, y["instances"].pred_boxes)
        assert x["instances"].pred_captions == y["instances"].pred_captions
        assert torch.equal(x["instances"].region_codes, y["instances"].region_codes)


def test_context_does_not_change_detection():
    """Objectness and boxes read the region's own code: with context the detections are those of the
    same weights without it."""
    torch.manual_seed(0)
    ctx = build_model(tiny_cfg(**{"MODEL.ROI_HEADS.CONTEXT": "global,union"}), VOCAB).eval()
    plain = build_model(tiny_cfg(), VOCAB).eval()
    sd = {k: v for k, v in ctx.state_dict().items() if not k.startswith(("caption_head.",))}
    plain.load_state_dict(sd, strict=False)
    a, b = ctx(make_inputs(2)), plain(make_inputs(2))
    for x, y in zip(a, b):
        assert torch.equal(x["instances"].pred_boxes, y["instances"].pred_boxes)
        assert torch.equal(x["instances"].region_codes[:, :F], y["instances"].region_codes)


def test_context_images_without_regions():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**{"MODEL.ROI_HEADS.CONTEXT": "global,union"}), VOCAB)
    losses = train_step(model, make_inputs(2, empty=(0, 1)))
    assert losses["loss_caption"].item() == 0.0 and losses["loss_caption"].requires_grad
    model.zero_grad()
    mixed = train_step(model, make_inputs(2, empty=(0,)))
    assert all(torch.isfinite(v) for v in mixed.values()) and mixed["loss_caption"].item() > 0
    model.eval()
    model.roi_heads.score_thresh = 1.1  # no detection survives: empty outputs, still well-formed
    out = model(make_inputs(2))
    assert all(len(o["instances"]) == 0 and o["instances"].region_codes.shape == (0, 3 * F) for o in out)
    # given boxes: context is computed for exactly these boxes
    model.roi_heads.score_thresh = 0.0
    inputs = make_inputs(1)
    inputs[0]["given_boxes"] = torch.tensor([[0.0, 0.0, 40.0, 30.0], [10.0, 20.0, 50.0, 60.0]])
    inst = model(inputs)[0]["instances"]
    assert inst.region_codes.shape == (2, 3 * F)


# ---- joint inference (MODEL.ROI_HEADS.JOINT_INFERENCE) ------------------------------------------
def test_final_hidden_is_the_state_that_predicts_end():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(), VOCAB)
    head = model.caption_head
    codes = torch.randn(3, F)
    caps = torch.tensor([[5, 6, 0, 0], [7, 0, 0, 0], [4, 5, 6, 7]])
    h = head.final_hidden(codes, caps)
    assert h.shape == (3, 16)
    # the logits from that state are the ones that score END (step L of the targets w_1 .. w_L END)
    logits = head(codes, caps)  # N T+1 V
    for i, L in enumerate([2, 1, 4]):
        assert torch.allclose(head._logits(h[i]), logits[i, L], atol=1e-5)
        assert not torch.allclose(head._logits(h[i]), logits[i, L - 1], atol=1e-3)
    assert head.final_hidden(codes[:0], caps[:0]).shape == (0, 16)


def test_joint_inference_loss_gradients_and_box_refinement():
    torch.manual_seed(0)
    cfg = tiny_cfg(**{"MODEL.ROI_HEADS.JOINT_INFERENCE": "True", "MODEL.ROI_HEADS.CONTEXT": "global"})
    model = build_model(cfg, VOCAB)
    losses = train_step(model, make_inputs(2))
    assert "loss_box_joint" in losses and losses["loss_box_joint"].item() > 0
    model.zero_grad()
    losses = model(make_inputs(2))
    losses["loss_box_joint"].backward()  # the box loss trains the caption decoder (and the joint layer)
    assert model.joint_box_head.deltas.weight.grad.abs().sum() > 0
    # zero-initialised: the decoder gets no gradient until the layer has moved; after a step it does
    with torch.no_grad():
        model.joint_box_head.deltas.weight.normal_(std=0.1)
    model.zero_grad()
    model(make_inputs(2))["loss_box_joint"].backward()
    assert model.caption_head.rnn.weight_hh_l0.grad.abs().sum() > 0
    assert model.roi_heads.recognition.fc7.weight.grad.abs().sum() > 0
    # test time: boxes move by the caption's deltas; a zero layer leaves them as the plain model's
    model.eval()
    moved = model(make_inputs(2))
    with torch.no_grad():
        model.joint_box_head.deltas.weight.zero_()
        model.joint_box_head.deltas.bias.zero_()
    still = model(make_inputs(2))
    ref = model.joint_box_head
    model.joint_box_head = None
    plain = model(make_inputs(2))
    model.joint_box_head = ref
    for a, b, c in zip(moved, still, plain):
        assert torch.equal(b["instances"].pred_boxes, c["instances"].pred_boxes)
        assert b["instances"].pred_captions == c["instances"].pred_captions
        assert not torch.allclose(a["instances"].pred_boxes, c["instances"].pred_boxes)
    # given boxes are never moved
    with torch.no_grad():
        model.joint_box_head.deltas.bias.fill_(0.3)
    inputs = make_inputs(1)
    given = torch.tensor([[0.0, 0.0, 40.0, 30.0], [10.0, 20.0, 50.0, 60.0]])
    inputs[0]["given_boxes"] = given
    assert torch.equal(model(inputs)[0]["instances"].pred_boxes, given)


def test_joint_inference_images_without_regions():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(**{"MODEL.ROI_HEADS.JOINT_INFERENCE": "True"}), VOCAB)
    losses = train_step(model, make_inputs(2, empty=(0, 1)))
    assert losses["loss_box_joint"].item() == 0.0 and losses["loss_box_joint"].requires_grad
    model.eval()
    model.roi_heads.score_thresh = 1.1
    assert all(len(o["instances"]) == 0 for o in model(make_inputs(2)))

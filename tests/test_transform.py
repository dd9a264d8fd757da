"""The image/box transform (``densecap.modeling.transform``): resize/normalise/pad in, boxes to
original-pixel ``[x, y, w, h]`` out; the score threshold and the final clip happen once."""
import numpy as np
import pytest
import torch

import densecap.modeling.roi_heads as roi_heads_mod
import densecap.modeling.transform as transform_mod
from densecap.data.image_io import resize_longest_side
from densecap.data.tokenizer import Vocabulary
from densecap.inference.predictor import DenseCapPredictor
from densecap.modeling import build_model
from densecap.modeling.transform import DenseCapTransform, OriginalImageTransform

VOCAB = Vocabulary([f"w{i}" for i in range(12)])


def _images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (333, 500, 3), dtype=np.uint8), rng.integers(0, 255, (97, 131, 3), dtype=np.uint8)]


@pytest.fixture()
def tiny_model(tiny_model_cfg):
    cfg = tiny_model_cfg("MODEL.DEVICE", "cpu")
    torch.manual_seed(0)
    return cfg, build_model(cfg, VOCAB).eval()


def test_round_trip_original_resized_original():
    tf = DenseCapTransform(pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3, max_size=128)
    img = np.zeros((333, 500, 3), np.uint8)
    resized, scale = tf.resize(img)
    assert resized.shape == (85, 128, 3) and scale == pytest.approx(128 / 500)
    boxes = torch.tensor([[0.0, 0.0, 500.0, 333.0], [10.5, 20.25, 30.0, 40.0], [499.0, 1.0, 1.0, 2.0]])
    inside = tf.boxes_to_resized(boxes, scale)  # xyxy, resized frame
    assert torch.allclose(inside[1], torch.tensor([10.5, 20.25, 40.5, 60.25]) * scale)
    back = tf.postprocess(inside, scale, 333, 500)
    assert back.dtype == torch.float32 and torch.allclose(back, boxes, atol=1e-3)


def test_postprocess_clips_to_the_original_image():
    tf = DenseCapTransform(pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3)
    xyxy = torch.tensor([[-4.0, 2.0, 70.0, 30.0]])  # resized frame, scale 0.5; the image is 120 x 50
    assert tf.postprocess(xyxy, 0.5, 50, 120).tolist() == [[0.0, 4.0, 120.0, 46.0]]
    assert tf.postprocess(torch.zeros((0, 4)), 0.5, 50, 120).shape == (0, 4)


def test_forward_normalises_and_pads_to_the_size_divisibility():
    tf = DenseCapTransform(pixel_mean=[10.0, 20.0, 30.0], pixel_std=[2.0, 4.0, 5.0], size_divisibility=32)
    a = torch.full((3, 40, 50), 50, dtype=torch.uint8)
    b = torch.full((3, 33, 20), 100, dtype=torch.uint8)
    batch, sizes = tf([{"image": a}, {"image": b}])
    assert batch.shape == (2, 3, 64, 64) and sizes == [(40, 50), (33, 20)]
    assert batch[0, :, 0, 0].tolist() == [20.0, 7.5, 4.0]
    assert batch[1, :, 0, 0].tolist() == [45.0, 20.0, 14.0]
    assert float(batch[0, :, 40:].abs().sum()) == 0 and float(batch[1, :, :, 20:].abs().sum()) == 0


def test_original_transform_bgr_no_padding_no_clip():
    tf = OriginalImageTransform(pixel_mean=[1.0, 2.0, 3.0], pixel_std=[1.0] * 3, max_size=64)
    img = np.zeros((30, 50, 3), np.uint8)
    img[..., 0] = 255  # red
    resized, scale = tf.resize(img)
    assert resized.dtype == np.float32 and resized.shape == (38, 64, 3) and scale == pytest.approx(38 / 30)
    batch, sizes = tf([{"image": torch.from_numpy(resized).permute(2, 0, 1)}])
    assert batch.shape == (1, 3, 38, 64) and sizes == [(38, 64)]  # no padding to a divisibility
    assert batch[0, :, 5, 5].tolist() == pytest.approx([-1.0, -2.0, 252.0])  # BGR x 255 - mean
    # the original's 1-based resized-frame xywh -> original pixels, NOT clipped
    out = tf.postprocess_original(torch.tensor([[1.0, 1.0, 64.0, 38.0], [60.0, 30.0, 20.0, 20.0]]), (38, 64), 30, 50)
    assert torch.allclose(out[0], torch.tensor([0.0, 0.0, 50.0, 30.0]))
    assert float(out[1, 0] + out[1, 2]) > 50  # past the right edge: kept as the original reports it


def test_models_select_their_transform(tiny_model):
    _, model = tiny_model
    assert type(model.transform) is DenseCapTransform
    assert model.transform.size_divisibility == max(int(model.backbone.size_divisibility), 1)
    from densecap.modeling.original import OriginalDenseCapModel

    assert OriginalDenseCapModel.transform_class is OriginalImageTransform
    # no checkpoint state: old checkpoints load unchanged
    assert not any(k.startswith("transform.") for k in model.state_dict())


def test_image_with_no_regions(tiny_model):
    cfg, model = tiny_model
    predictor = DenseCapPredictor.from_config(cfg, model)
    model.roi_heads.score_thresh = 1.1  # nothing survives
    assert predictor.score_thresh == 1.1  # the model's threshold, not a copy
    out = model([predictor.prepare(_images()[0])])[0]["instances"]
    assert out.pred_boxes.shape == (0, 4) and out.image_size == (333, 500) and out.pred_captions == []
    pred = predictor(_images()[1])
    assert pred.boxes.shape == (0, 4) and len(pred) == 0
    pred = predictor(_images()[1], given_boxes=np.zeros((0, 4)))  # no given boxes either
    assert pred.boxes.shape == (0, 4) and pred.given_boxes


def test_score_threshold_applied_once_by_the_model(tiny_model, monkeypatch):
    cfg, model = tiny_model
    images = _images()
    predictor = DenseCapPredictor.from_config(cfg, model)
    predictor.image_size = 128
    predictor.score_thresh = 0.0
    base = predictor.predict(images)
    thr = float(np.median(base[0].scores))
    calls = []
    real = roi_heads_mod.select_detections

    def spy(*a, **k):
        calls.append(k["score_thresh"])
        return real(*a, **k)

    monkeypatch.setattr(roi_heads_mod, "select_detections", spy)
    predictor.score_thresh = thr
    assert model.roi_heads.score_thresh == thr
    got = predictor.predict(images)
    assert calls == [thr, thr]  # one selection per image, with the threshold
    assert 0 < int((base[0].scores >= thr).sum()) < len(base[0])  # the threshold drops some, keeps some
    for b, g in zip(base, got):
        keep = b.scores >= thr
        np.testing.assert_array_equal(g.scores, b.scores[keep])
        np.testing.assert_array_equal(g.boxes, b.boxes[keep])
        assert g.captions == [c for c, k in zip(b.captions, keep) if k]


def test_predictor_does_not_threshold_or_clip_again():
    """The predictor passes the model's regions through: a model that reports a low score or a box
    past the image's edge keeps them (the model thresholds; its transform clips)."""

    class Fixed(torch.nn.Module):
        score_thresh = 0.0

        def forward(self, batched):
            from densecap.structures import Instances

            return [{"instances": Instances((x["height"], x["width"]), pred_boxes=torch.tensor([[1.0, 2.0, 3.0, 4.0], [25.0, 2.0, 10.0, 4.0]]),
                                            scores=torch.tensor([0.9, 0.2]), pred_captions=["a", "b"])}
                    for x in batched]

    p = DenseCapPredictor(Fixed(), score_thresh=0.5, image_size=32)
    assert p.model.score_thresh == 0.5
    pred = p(np.zeros((20, 30, 3), np.uint8))
    assert pred.captions == ["a", "b"] and pred.boxes.tolist() == [[1.0, 2.0, 3.0, 4.0], [25.0, 2.0, 10.0, 4.0]]


def test_final_clip_happens_once_in_the_transform(tiny_model, monkeypatch):
    cfg, model = tiny_model
    calls = []
    real = transform_mod.clip_xyxy

    def spy(b, h, w):
        calls.append((h, w))
        return real(b, h, w)

    monkeypatch.setattr(transform_mod, "clip_xyxy", spy)
    predictor = DenseCapPredictor.from_config(cfg, model)
    predictor.image_size = 128
    preds = predictor.predict(_images())
    assert calls == [(333.0, 500.0), (97.0, 131.0)]  # once per image, to its original size
    for p in preds:
        x1, y1 = p.boxes[:, 0], p.boxes[:, 1]
        assert (x1 >= 0).all() and (y1 >= 0).all()
        assert (x1 + p.boxes[:, 2] <= p.width + 1e-3).all() and (y1 + p.boxes[:, 3] <= p.height + 1e-3).all()
    calls.clear()
    predictor.predict(_images()[:1], [[[0, 0, 500, 333]]])  # given boxes are returned as given: no clip
    assert calls == []


def test_predictor_resizes_with_the_model_transform(tiny_model):
    cfg, model = tiny_model
    predictor = DenseCapPredictor.from_config(cfg, model)
    predictor.image_size = 100
    inp = predictor.prepare(_images()[0])
    want, scale = resize_longest_side(_images()[0], 100)
    assert tuple(inp["image"].shape) == (3,) + want.shape[:2] and inp["scale"] == scale

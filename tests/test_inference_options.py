"""Test-time options: one typed object built from the config, overridden by one helper."""
import pytest

from densecap.config import get_cfg, load_config
from densecap.data.tokenizer import Vocabulary
from densecap.inference.options import CONFIG_KEYS, InferenceOptions
from densecap.inference.predictor import apply_eval_options, options_to_opts
from densecap.modeling import build_model


def test_defaults_are_the_configs():
    assert InferenceOptions.from_config(get_cfg()) == InferenceOptions()
    assert InferenceOptions().as_dict() == {
        "image_size": 720, "rpn_nms": 0.7, "final_nms": 0.3, "pre_nms_proposals": 6000, "num_proposals": 1000,
        "beam_size": 1, "length_penalty": 0.0, "score_thresh": 0.0, "max_detections": 0, "max_tokens": 15,
        "device": "cpu",
    }


def test_override_validates_and_none_keeps():
    o = InferenceOptions().override(rpn_nms=0.5, beam_size="3", final_nms=None)
    assert (o.rpn_nms, o.beam_size, o.final_nms) == (0.5, 3, 0.3)
    with pytest.raises(ValueError, match=r"rpn_nms must be in \(0, 1\], got 1.5"):
        InferenceOptions().override(rpn_nms=1.5)
    with pytest.raises(ValueError, match="image_size must be an integer >= 16, got 'big'"):
        InferenceOptions().override(image_size="big")
    with pytest.raises(TypeError, match="unknown inference option"):
        InferenceOptions().override(nms=0.5)


def test_to_opts_round_trips_through_the_config():
    o = InferenceOptions().override(image_size=480, num_proposals=50, length_penalty=0.5, max_detections=10)
    assert InferenceOptions.from_config(load_config(None, o.to_opts())) == o
    # the predictor's keyword options are these fields: only the given ones become overrides
    assert options_to_opts(num_proposals=50, beam_size=None) == [CONFIG_KEYS["num_proposals"], 50]


def test_apply_sets_every_layer_once():
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.WIDTH, cfg.MODEL.BACKBONE.WEIGHTS = "small_cnn", 8, ""
    cfg.MODEL.RPN.HEAD_CHANNELS, cfg.MODEL.ROI.FC_DIM = 8, 16
    cfg.MODEL.CAPTION.EMBED_SIZE = cfg.MODEL.CAPTION.HIDDEN_SIZE = 8
    model = build_model(cfg, Vocabulary(["a", "b"]))
    cfg.merge_from_list(InferenceOptions.from_config(cfg).override(
        rpn_nms=0.6, final_nms=0.4, pre_nms_proposals=100, num_proposals=20, beam_size=2, length_penalty=0.3,
        score_thresh=0.2, max_detections=5, max_tokens=7).to_opts())
    apply_eval_options(model, cfg)
    got = (model.rpn.nms_thresh, model.rpn.pre_nms_topk, model.rpn.post_nms_topk, model.roi_heads.nms_thresh,
           model.roi_heads.score_thresh, model.roi_heads.detections_per_image, model.beam_size, model.length_alpha,
           model.max_caption_len)
    assert got == (0.6, 100, 20, 0.4, 0.2, 5, 2, 0.3, 7)


def test_the_command_line_flags_are_the_options():
    from densecap.inference.cli import build_parser
    from densecap.inference.options import options_from_args

    args = build_parser().parse_args(["--weights", "w.pth", "--input", "x.jpg", "--output", "out",
                                      "--rpn-nms", "0.5", "--num-proposals", "40", "--image-size", "256"])
    assert options_from_args(args) == {"image_size": 256, "rpn_nms": 0.5, "num_proposals": 40}

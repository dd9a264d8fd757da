"""Fast checks of the ``infer`` benchmark's original-architecture path (VGG-16 floor peer, stage
profile) at narrow widths and a tiny image; the benchmark itself is slow: not here."""
import argparse
import os

import numpy as np
import torch

from densecap.benchmarks import _vgg16_floor as F
from densecap.benchmarks import infer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORIGINAL = os.path.join(ROOT, "configs", "densecap_vgg16_original.yaml")
NARROW = ["MODEL.ORIGINAL.CONV_WIDTHS", "[8, 8, 16, 16, 16]", "MODEL.RPN.HEAD_CHANNELS", "8", "MODEL.ROI.FC_DIM", "32",
          "MODEL.CAPTION.EMBED_SIZE", "16", "MODEL.CAPTION.HIDDEN_SIZE", "16", "MODEL.RPN.POST_NMS_TOPK_TEST", "40"]


def test_the_original_config_selects_the_vgg16_floor():
    assert F.is_original(ORIGINAL)
    assert not F.is_original(os.path.join(ROOT, "configs", "densecap_R50_FPN_vg.yaml"))


def test_the_floor_is_vgg16_conv1_1_to_relu5_3():
    floor = F.build_floor()
    convs = [m for m in floor if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in floor) == 4
    assert isinstance(floor[-1], torch.nn.ReLU)  # relu5_3, not pool5
    with torch.no_grad():
        assert floor(torch.zeros(1, 3, 64, 80)).shape == (1, 512, 4, 5)  # four poolings: stride 16


def _narrow_model():
    from densecap.benchmarks import _rcnn_common as C

    model, _ = C.build_densecap(ORIGINAL, NARROW, C.vocabulary(20), 0)
    return model.eval()


def test_the_stage_timer_times_every_stage_and_changes_nothing():
    from densecap.benchmarks import _rcnn_common as C
    from densecap.modeling.original import ops

    model = _narrow_model()
    img = C.make_images(1, 96, 0.75, seed=0)[0]
    batch = C.densecap_inputs([img])
    with torch.no_grad():
        ref = model(batch)[0]["instances"]
    nms = ops.nms
    timer = F.StageTimer(model)
    with torch.no_grad():
        got = model(batch)[0]["instances"]
    timer.undo()
    core = {"backbone (VGG-16 conv1_1..relu5_3)", "rpn_head", "rpn_nms", "final_nms", "bilinear_sampler", "fc6",
            "fc7", "greedy_lstm"}
    # a separate scoring pass of the kept captions is timed too when the model makes one
    assert core <= set(timer.seconds) <= core | {"caption_logprobs (kept boxes)"}
    assert all(v > 0 for v in timer.seconds.values())
    assert 0 < timer.counts["proposals"] <= 40 and 0 < timer.counts["captioned_regions"] <= timer.counts["proposals"]
    assert torch.equal(ref.pred_boxes, got.pred_boxes) and ref.pred_captions == got.pred_captions
    assert ops.nms is nms and "forward" not in vars(model.backbone) and "_greedy_original" not in vars(model)


def test_infer_benchmark_runs_the_original_against_the_floor():
    parser = argparse.ArgumentParser()
    infer.add_arguments(parser)
    args = parser.parse_args(["--config-file", ORIGINAL, "--image-size", "64", "--images", "1", "--repeats", "1",
                              "--warmup", "0", "--vocab-size", "20", *NARROW])
    fig = infer.run(args)
    assert fig["peer"] == "vgg16-floor" and fig["image_size_hw"] == [48, 64]
    assert fig["ratio"] == fig["densecap_seconds_per_image"]["median"] / fig["vgg16_features_seconds_per_image"]["median"]
    assert fig["rpn_post_nms_topk"] == 40 and fig["max_tokens"] == 15 and fig["beam_size"] == 1
    assert fig["vgg16_feature_map_hw"] == [3, 4]
    assert 0 < fig["rpn_proposals_per_image"] <= 40
    prof = fig["profile_seconds"]
    assert abs(sum(v for k, v in prof.items() if k != "total") - prof["total"]) < 1e-9
    assert np.isfinite(fig["flops_ratio"]) and fig["vgg16_features_gflops_per_image"] > 0


import os

import pytest

from densecap.config import get_cfg, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_defaults_match_original_densecap():
    cfg = get_cfg()
    assert cfg.INPUT.MAX_SIZE == 720
    assert len(cfg.MODEL.RPN.ANCHORS) == 12 and cfg.MODEL.RPN.ANCHORS[0] == [45, 90]
    assert (cfg.MODEL.RPN.LOSS_WEIGHT_CLS, cfg.MODEL.RPN.LOSS_WEIGHT_BOX) == (0.1, 0.05)
    assert (cfg.MODEL.ROI.LOSS_WEIGHT_CLS, cfg.MODEL.ROI.LOSS_WEIGHT_BOX) == (0.1, 0.1)
    assert cfg.MODEL.CAPTION.LOSS_WEIGHT == 1.0 and cfg.MODEL.CAPTION.MAX_TOKENS == 15
    assert cfg.MODEL.RPN.NMS_THRESH == 0.7 and cfg.MODEL.ROI.NMS_THRESH_TEST == 0.3
    assert cfg.MODEL.RPN.POST_NMS_TOPK_TEST == 1000
    assert cfg.SOLVER.BASE_LR == 1e-5 and cfg.SOLVER.WEIGHT_DECAY == 1e-6


def test_base_inheritance_and_overrides(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("SOLVER:\n  BASE_LR: 0.5\n  MAX_ITER: 10\nINPUT:\n  MAX_SIZE: 300\n")
    child = tmp_path / "child.yaml"
    child.write_text("_BASE_: base.yaml\nSOLVER:\n  MAX_ITER: 20\n")
    cfg = load_config(str(child), ["INPUT.MAX_SIZE", "128", "DATASETS.TRAIN", "('a:train', 'b:train')"])
    assert cfg.SOLVER.BASE_LR == 0.5  # inherited
    assert cfg.SOLVER.MAX_ITER == 20  # child wins over base
    assert cfg.INPUT.MAX_SIZE == 128  # command line wins over files
    assert tuple(cfg.DATASETS.TRAIN) == ("a:train", "b:train")


def test_unknown_key_is_an_error_naming_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL:\n  RPN:\n    NOT_A_KEY: 3\n")
    with pytest.raises(KeyError, match="MODEL.RPN.NOT_A_KEY"):
        load_config(str(bad))
    with pytest.raises(KeyError, match="SOLVER.BASE_LRR"):
        load_config(None, ["SOLVER.BASE_LRR", "0.1"])


def test_odd_override_list_is_an_error():
    with pytest.raises(ValueError, match="KEY VALUE"):
        load_config(None, ["SOLVER.BASE_LR"])


# what each shipped config builds: (META_ARCHITECTURE, backbone, whole-image caption head or None,
# joint embedding head)
SHIPPED = {
    "configs/Base-DenseCap.yaml": ("DenseCap", "vgg16", None, False),
    "configs/densecap_R50_FPN_vg.yaml": ("DenseCap", "resnet50_fpn", None, False),
    "configs/densecap_R50_FPN_vg_joint.yaml": ("DenseCap", "resnet50_fpn", "sat_soft", False),
    "configs/densecap_vgg16_vg.yaml": ("DenseCap", "vgg16", None, False),
    "configs/densecap_vgg16_original.yaml": ("DenseCapOriginal", "vgg16_original", None, False),
    "configs/finetune/densecap_R50_FPN_imagenet_custom.yaml": ("DenseCap", "resnet50_fpn", None, False),
    "configs/finetune/densecap_small_demo_custom.yaml": ("DenseCap", "small_cnn", None, True),
    "configs/finetune/densecap_vgg16_original_custom.yaml": ("DenseCapOriginal", "vgg16_original", None, False),
    "configs/image_caption_R50_sat_coco.yaml": ("ImageCaptioner", "resnet50_c4", "sat_soft", False),
    "configs/synthetic/densecap_small.yaml": ("DenseCap", "small_cnn", None, True),
    "configs/synthetic/densecap_small_joint.yaml": ("DenseCap", "small_cnn", "sat_soft", True),
    "configs/synthetic/densecap_tiny.yaml": ("DenseCap", "small_cnn", None, False),
    "configs/synthetic/embedding_small.yaml": ("DenseCap", "small_cnn", "sat_soft", True),
    "configs/synthetic/image_caption_nic.yaml": ("ImageCaptioner", "small_cnn", "nic", False),
    "configs/synthetic/image_caption_sat_hard.yaml": ("ImageCaptioner", "small_cnn", "sat_hard", False),
    "configs/synthetic/image_caption_sat_soft.yaml": ("ImageCaptioner", "small_cnn", "sat_soft", False),
}


def test_every_shipped_config_is_listed():
    found = sorted(os.path.relpath(os.path.join(d, f), ROOT)
                   for d, _, fs in os.walk(os.path.join(ROOT, "configs")) for f in fs if f.endswith(".yaml"))
    assert found == sorted(SHIPPED)  # a new config needs its line in SHIPPED


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_config_loads(name):
    cfg = load_config(os.path.join(ROOT, name))
    ic = cfg.MODEL.IMAGE_CAPTION
    head = ic.HEAD if (ic.ENABLED or cfg.MODEL.META_ARCHITECTURE == "ImageCaptioner") else None
    assert (cfg.MODEL.META_ARCHITECTURE, cfg.MODEL.BACKBONE.NAME, head, cfg.MODEL.EMBEDDING.ENABLED) == SHIPPED[name]

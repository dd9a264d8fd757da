"""Fast checks of the train/infer benchmark helpers (the benchmarks themselves are slow: not here)."""
import argparse

import numpy as np
import torch

from densecap.benchmarks import _rcnn_common as C
from densecap.benchmarks import infer, train


def test_targets_are_vg_like_and_shared():
    t = C.make_targets(3, 540, 720, gt_per_image=40, vocab_size=500, seed=0)
    assert len(t) == 3
    for boxes, caps in t:
        assert 30 <= len(boxes) <= 50 and boxes.dtype == np.float32 and caps.dtype == np.int64
        assert np.all(boxes[:, 0] >= 0) and np.all(boxes[:, 1] >= 0)
        assert np.all(boxes[:, 2] <= 720 + 1e-3) and np.all(boxes[:, 3] <= 540 + 1e-3)
        assert np.all(boxes[:, 2] - boxes[:, 0] >= 16 - 1e-3) and np.all(boxes[:, 3] - boxes[:, 1] >= 16 - 1e-3)
        lengths = (caps != 0).sum(1)
        assert lengths.min() >= 5 and lengths.max() <= 10
        assert caps[caps != 0].min() >= 4 and caps.max() < 500
        # words are left-aligned, 0-padded
        for row, n in zip(caps, lengths):
            assert np.all(row[:n] != 0) and np.all(row[n:] == 0)
    # same seed -> same targets; both models get the same boxes
    t2 = C.make_targets(3, 540, 720, gt_per_image=40, vocab_size=500, seed=0)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(t, t2))
    img = np.zeros((540, 720, 3), dtype=np.uint8)
    dc = C.densecap_inputs([img], t[:1])[0]
    imgs, tg = C.peer_inputs([img], t[:1])
    assert dc["image"].shape == (3, 540, 720) and dc["image"].dtype == torch.uint8
    assert dc["height"] == 540 and dc["width"] == 720 and dc["scale"] == 1.0
    assert torch.equal(dc["instances"].gt_boxes, tg[0]["boxes"])
    assert imgs[0].shape == (3, 540, 720) and imgs[0].dtype == torch.float32
    assert tg[0]["labels"].min() >= 1 and tg[0]["labels"].max() <= 90


def test_images_have_the_benchmark_size():
    ims = C.make_images(2, 96, 0.75, seed=0)
    assert [im.shape for im in ims] == [(72, 96, 3), (72, 96, 3)] and ims[0].dtype == np.uint8
    assert ims[0].std() > 5  # a scene, not a blank image
    assert not np.array_equal(ims[0], ims[1])


def test_interleaving_alternates_and_counts():
    calls = []
    ta, tb = C.interleaved(lambda i: calls.append(("a", i)), lambda i: calls.append(("b", i)),
                           batches=2, repeats=2, warmup=1)
    assert calls[:2] == [("a", 0), ("b", 0)]  # warmup
    assert calls[2:] == [("a", 0), ("b", 0), ("b", 1), ("a", 1), ("a", 0), ("b", 0), ("b", 1), ("a", 1)]
    assert len(ta) == len(tb) == 4
    assert C.paired_ratio([2.0, 4.0, 9.0], [1.0, 1.0, 3.0]) == 3.0
    s = C.summary([3.0, 1.0, 2.0])
    assert s["median"] == 2.0 and s["min"] == 1.0 and s["n"] == 3


def test_peer_keeps_the_image_size():
    peer = C.build_peer(72, 96, freeze_at=2)
    C.check_peer_keeps_size(peer, torch.rand(3, 72, 96))
    assert peer.rpn.fg_bg_sampler.batch_size_per_image == 256
    assert peer.roi_heads.fg_bg_sampler.batch_size_per_image == 512
    assert peer.rpn._post_nms_top_n["testing"] == 1000
    # stem + layer1 frozen (freeze_at=2), the rest trains
    body = peer.backbone.body
    assert not any(p.requires_grad for p in body.conv1.parameters())
    assert not any(p.requires_grad for p in body.layer1.parameters())
    assert all(p.requires_grad for p in body.layer2.parameters())


def test_arguments_and_defaults():
    for mod in (train, infer):
        p = argparse.ArgumentParser()
        mod.add_arguments(p)
        a = p.parse_args(["--images", "2", "MODEL.RPN.PRE_NMS_TOPK_TEST", "1000"])
        assert a.images == 2 and a.repeats == 3 and a.threads == 1 and a.image_size == 720
        assert a.opts == ["MODEL.RPN.PRE_NMS_TOPK_TEST", "1000"]


def test_both_benchmarks_run_end_to_end_at_toy_size():
    """run() of train and infer on one 128-px image: the figures scripts read are present and sane."""
    import argparse

    from densecap.benchmarks import infer as infer_bench
    from densecap.benchmarks import train as train_bench

    for mod, extra in ((infer_bench, ["--no-flops"]), (train_bench, [])):
        parser = argparse.ArgumentParser()
        mod.add_arguments(parser)
        args = parser.parse_args(["--images", "1", "--repeats", "1", "--image-size", "128", "--vocab-size", "50", *extra])
        figures = mod.run(args)
        assert figures["ratio"] > 0 and figures["image_size_hw"][1] == 128
        assert figures["threads"] >= 1 and len(figures["load_average_1min"]) == 2

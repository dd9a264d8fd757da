"""DenseCapDataset + collate on a tiny generated and prepared synthetic set."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from densecap.data import synthetic as syn
from densecap.data.dataset import DenseCapDataset, collate
from densecap.data.prepared import load_split, load_vocab


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("syn") / "data")
    assert syn.main(["--out", d, "--num-images", "10", "--seed", "1", "--prepare"]) == 0
    return d


def test_cli_prepare_makes_a_prepared_dir(data_dir):
    prep = os.path.join(data_dir, "prepared")
    report = json.load(open(os.path.join(prep, "report.json")))
    splits = json.load(open(os.path.join(data_dir, "densecap_splits.json")))
    assert report["images_kept"] == {s: len(v) for s, v in splits.items()}
    rd = json.load(open(os.path.join(data_dir, "region_descriptions.json")))
    assert sum(report["regions_kept"].values()) == sum(len(e["regions"]) for e in rd)
    assert all(report[k] == 0 for k in ("zero_area", "outside_image", "empty_caption", "too_long",
                                        "missing_image", "no_regions"))
    vocab = load_vocab(prep)
    assert len(vocab) <= 36 and "<UNK>" in vocab.idx_to_token
    # captions round-trip through the prepared form
    tr = load_split(prep, "train")
    by_id = {e["id"]: e["regions"] for e in rd}
    i0 = int(tr.image_ids[0])
    assert tr.caption_strings(0, vocab) == [r["phrase"] for r in by_id[i0]]
    np.testing.assert_array_equal(tr.boxes[tr.regions(0)],
                                  [[r["x"], r["y"], r["width"], r["height"]] for r in by_id[i0]])


def test_item_shapes_and_resized_boxes(data_dir):
    prep = os.path.join(data_dir, "prepared")
    ds = DenseCapDataset(prep, "train", max_size=128)
    assert len(ds) == 8
    item = ds[0]
    assert item["image"].dtype == torch.uint8 and tuple(item["image"].shape) == (3, 128, 128)
    assert item["height"] == item["width"] == 256 and item["scale"] == pytest.approx(0.5)
    inst = item["instances"]
    xywh = ds.gt_boxes_xywh(0)
    R = xywh.shape[0]
    assert tuple(inst.gt_boxes.shape) == (R, 4) and tuple(inst.gt_captions.shape) == (R, 15)
    assert inst.gt_captions.dtype == torch.int64
    expected = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1) * 0.5
    np.testing.assert_allclose(inst.gt_boxes.numpy(), expected, rtol=1e-6)
    assert item["image_id"] == int(ds.data.image_ids[0])
    assert item["file_name"].endswith(f"{item['image_id']}.jpg")


def test_flip_mirrors_boxes_and_swaps_left_right(data_dir, monkeypatch):
    prep = os.path.join(data_dir, "prepared")
    plain = DenseCapDataset(prep, "train", max_size=256)
    flipped = DenseCapDataset(prep, "train", max_size=256, flip=True)
    vocab = plain.vocab
    left, right = vocab.token_to_idx["left"], vocab.token_to_idx["right"]
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.tensor(0.0))  # always flip
    seen_lr = False
    for i in range(len(plain)):
        a, b = plain[i], flipped[i]
        assert torch.equal(b["image"], a["image"].flip(-1))
        ba, bb = a["instances"].gt_boxes, b["instances"].gt_boxes
        torch.testing.assert_close(bb[:, 0], 256 - ba[:, 2])
        torch.testing.assert_close(bb[:, 2], 256 - ba[:, 0])
        torch.testing.assert_close(bb[:, [1, 3]], ba[:, [1, 3]])
        ca, cb = a["instances"].gt_captions, b["instances"].gt_captions
        swapped = ca.clone()
        swapped[ca == left] = right
        swapped[ca == right] = left
        assert torch.equal(cb, swapped)
        seen_lr |= bool(((ca == left) | (ca == right)).any())
    assert seen_lr, "the tiny set should contain a left/right relation"


def test_unreadable_image_is_skipped(tmp_path, data_dir):
    d = str(tmp_path / "copy")
    shutil.copytree(data_dir, d)
    prep = os.path.join(d, "prepared")
    ds = DenseCapDataset(prep, "train", max_size=128)
    bad = ds.data.path(1)
    with open(bad, "wb") as f:
        f.write(b"not a jpeg at all")
    assert bad.startswith(d)  # paths are stored relative: the copy points at its own images
    assert ds[1] is None
    good = ds[0]
    assert collate([good, None]) == [good]
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate)
    batches = list(loader)
    assert sum(len(b) for b in batches) == len(ds) - 1

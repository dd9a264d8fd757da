"""Visual Genome preparation on a hand-made tiny dataset: every drop reason, both VG versions,
streaming JSON errors, atomic outputs."""
import json
import os
import re

import numpy as np
import pytest

from densecap.data.json_stream import JSONStreamError, iter_json_list, load_json
from densecap.data.prepared import load_split, load_vocab
from densecap.data.tokenizer import UNK
from densecap.data.vg import index_image_dirs, main, prepare_vg

LONG16 = " ".join(["word"] * 16)
EXACT15 = " ".join(["many"] * 15)

# (region_id, x, y, w, h, phrase) per image; sizes (w, h) per image
SIZES = {1: (100, 80), 2: (50, 50), 3: (60, 40), 4: (10, 10), 5: (30, 30), 6: (20, 20)}
REGIONS = {
    1: [
        (10, 10, 10, 20, 20, "A red CIRCLE."),  # kept
        (11, 5, 5, 0, 10, ""),  # zero_area (also empty: counted once, first reason)
        (12, 200, 10, 5, 5, LONG16),  # outside_image (also too long)
        (13, 1, 1, 5, 5, "..."),  # empty_caption
        (14, 1, 1, 5, 5, LONG16),  # too_long
        (15, 90, 10, 30, 20, "a blue square"),  # clipped to [90, 10, 10, 20]
        (16, -5, -2, 10, 12, "a red circle"),  # clipped to [0, 0, 5, 10]
        (10 + 7, 10, 10, 20, 20, "A red CIRCLE."),  # exact duplicate: kept
        (18, 0, 0, 100, 80, EXACT15),  # 15 tokens: kept
    ],
    2: [(20, 0, 0, 10, -3, "a tiny box")],  # zero_area -> image has no regions
    3: [(30, 0, 0, 60, 40, "a zebra"), (31, 5, 5, 10, 10, "a red circle")],  # val
    4: [(40, 0, 0, 5, 5, "a lost image"), (41, 0, 0, 0, 0, "")],  # file missing
    5: [(50, 2, 3, 4, 5, "a blue square")],
    6: [(60, 0, 0, 5, 5, "not in a split")],
}
SPLITS = {"train": [1, 2, 4, 5], "val": [3], "test": [7]}


def write_vg(root, version="1.2", regions=REGIONS, image_files=(("A", (1, 2)), ("B", (3, 5, 6)))):
    os.makedirs(root, exist_ok=True)
    img_key = "image_id" if version == "1.2" else "id"
    image_data = [{img_key: i, "width": w, "height": h, "url": "", "coco_id": None, "flickr_id": None}
                  for i, (w, h) in SIZES.items()]
    rd = []
    for iid, regs in regions.items():
        out = []
        for rid, x, y, w, h, phrase in regs:
            r = {"x": x, "y": y, "width": w, "height": h, "phrase": phrase}
            if version == "1.2":
                r.update(region_id=rid, image_id=iid)
            else:
                r.update(id=rid, image=iid)
            out.append(r)
        el = {"regions": out}
        el["id" if version != "top_image_id" else "image_id"] = iid
        rd.append(el)
    paths = {}
    for name, data in (("image_data.json", image_data), ("region_descriptions.json", rd),
                       ("densecap_splits.json", SPLITS)):
        paths[name] = os.path.join(root, name)
        with open(paths[name], "w", encoding="utf-8") as f:
            json.dump(data, f)
    dirs = []
    for d, ids in image_files:
        dirs.append(os.path.join(root, d))
        os.makedirs(dirs[-1], exist_ok=True)
        for i in ids:
            open(os.path.join(dirs[-1], f"{i}.jpg"), "wb").close()
    return dict(
        region_descriptions=paths["region_descriptions.json"],
        image_data=paths["image_data.json"],
        splits=paths["densecap_splits.json"],
        image_dirs=dirs,
    )


def test_every_drop_reason_counted_once(tmp_path):
    files = write_vg(str(tmp_path / "vg"))
    out = str(tmp_path / "prep")
    rep = prepare_vg(**files, output=out, max_tokens=15, min_token_count=1, verbose=False)
    assert rep["zero_area"] == 2  # image 1 and image 2 (image 4's regions are not counted)
    assert rep["outside_image"] == 1
    assert rep["empty_caption"] == 1
    assert rep["too_long"] == 1
    assert rep["missing_image"] == 1  # image 4
    assert rep["no_regions"] == 1  # image 2
    assert rep["not_in_split"] == 1  # image 6
    assert rep["not_in_region_descriptions"] == 1  # image 7
    assert rep["duplicate_regions"] == 1
    assert rep["images_kept"] == {"train": 2, "val": 1, "test": 0}
    assert rep["regions_kept"] == {"train": 6, "val": 2, "test": 0}
    assert json.load(open(os.path.join(out, "report.json"))) == rep

    tr = load_split(out, "train")
    assert tr.image_ids.tolist() == [1, 5]
    assert tr.region_start.tolist() == [0, 5, 6]
    assert tr.region_ids.tolist() == [10, 15, 16, 17, 18, 50]
    np.testing.assert_allclose(
        tr.boxes,
        [[10, 10, 20, 20], [90, 10, 10, 20], [0, 0, 5, 10], [10, 10, 20, 20], [0, 0, 100, 80], [2, 3, 4, 5]],
    )
    assert tr.heights.tolist() == [80, 30] and tr.widths.tolist() == [100, 30]
    assert tr.path(0) == os.path.join(files["image_dirs"][0], "1.jpg")
    assert tr.path(1) == os.path.join(files["image_dirs"][1], "5.jpg")  # second folder, not merged
    vocab = load_vocab(out)
    assert tr.caption_strings(0, vocab) == [
        "a red circle", "a blue square", "a red circle", "a red circle", EXACT15]
    assert tr.captions.shape == (6, 15) and tr.caption_lengths.tolist() == [3, 3, 3, 3, 15, 3]
    # vocabulary from train only: "zebra" (val only) is unknown, its caption gets <UNK>
    assert "zebra" not in vocab and "many" in vocab
    va = load_split(out, "val")
    assert va.caption_strings(0, vocab)[0] == "a <UNK>"
    assert va.captions[0, 1] == UNK
    assert len(load_split(out, "test")) == 0


def test_vocabulary_threshold_counts_train_only(tmp_path):
    files = write_vg(str(tmp_path / "vg"))
    out = str(tmp_path / "prep")
    prepare_vg(**files, output=out, min_token_count=3, verbose=False)
    # train counts: a 5, red 3, circle 3, blue 2, square 2, many 15 (val "red circle" not counted)
    assert load_vocab(out).idx_to_token[4:] == ["many", "a", "circle", "red"]
    tr = load_split(out, "train")
    assert tr.caption_strings(1, load_vocab(out)) == ["a <UNK> <UNK>"]


@pytest.mark.parametrize("version", ["1.0", "top_image_id"])
def test_v10_field_names_give_the_same_result(tmp_path, version):
    a = str(tmp_path / "a")
    b = str(tmp_path / "b")
    ra = prepare_vg(**write_vg(str(tmp_path / "v12")), output=a, min_token_count=1, verbose=False)
    rb = prepare_vg(**write_vg(str(tmp_path / "v10"), version), output=b, min_token_count=1, verbose=False)
    assert ra == rb
    for s in ("train", "val"):
        x, y = load_split(a, s), load_split(b, s)
        for k in ("image_ids", "region_ids", "boxes", "captions", "caption_lengths", "region_start"):
            np.testing.assert_array_equal(getattr(x, k), getattr(y, k))
    assert load_vocab(a) == load_vocab(b)


def test_deterministic(tmp_path):
    files = write_vg(str(tmp_path / "vg"))
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    prepare_vg(**files, output=a, min_token_count=1, verbose=False)
    prepare_vg(**files, output=b, min_token_count=1, verbose=False)
    assert open(os.path.join(a, "vocab.json")).read() == open(os.path.join(b, "vocab.json")).read()
    for s in ("train", "val", "test"):
        za, zb = np.load(os.path.join(a, f"{s}.npz")), np.load(os.path.join(b, f"{s}.npz"))
        assert za.files == zb.files
        for k in za.files:
            if k != "image_paths":
                np.testing.assert_array_equal(za[k], zb[k])


def test_image_dirs_first_folder_wins(tmp_path):
    for d in ("x", "y"):
        os.makedirs(tmp_path / d)
    for p in ("x/1.jpg", "y/1.jpg", "y/2.jpg", "y/notes.txt", "y/abc.jpg"):
        open(tmp_path / p, "wb").close()
    idx = index_image_dirs([str(tmp_path / "x"), str(tmp_path / "y")])
    assert idx == {1: str(tmp_path / "x" / "1.jpg"), 2: str(tmp_path / "y" / "2.jpg")}
    with pytest.raises(FileNotFoundError, match="nope"):
        index_image_dirs([str(tmp_path / "nope")])


def _corrupt(text, pos, junk):
    return text[:pos] + junk + text[pos:]


def test_corrupted_json_names_file_and_byte_and_writes_nothing(tmp_path):
    regions = {**REGIONS, 1: [(1, 0, 0, 5, 5, "caf\u00e9 \u00bd")] + REGIONS[1]}
    files = write_vg(str(tmp_path / "vg"), regions=regions)
    path = files["region_descriptions"]
    text = open(path, encoding="utf-8").read()
    assert "\\u00e9" in text  # json.dump escapes: write raw UTF-8 to exercise byte offsets
    text = json.dumps(json.loads(text), ensure_ascii=False)
    pos = text.index('"id": 1}') + len('"id": 1}')  # right after the first image element
    bad = _corrupt(text, pos, " @")
    with open(path, "w", encoding="utf-8") as f:
        f.write(bad)
    out = str(tmp_path / "prep")
    with pytest.raises(JSONStreamError) as ei:
        prepare_vg(**files, output=out, min_token_count=1, verbose=False)
    e = ei.value
    assert e.path == path
    assert e.byte == len(bad[: pos + 1].encode("utf-8"))  # byte offset, not characters
    assert e.byte == pos + 1 + 2  # é and ½ take 2 bytes each (1 more than a character)
    assert path in str(e) and f"byte {e.byte}" in str(e) and "line 1" in str(e)
    assert not os.path.exists(out) or os.listdir(out) == []


def test_truncated_json_error_and_cli(tmp_path, capsys):
    files = write_vg(str(tmp_path / "vg"))
    path = files["region_descriptions"]
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    out = str(tmp_path / "prep")
    with pytest.raises(JSONStreamError, match="truncated") as ei:
        prepare_vg(**files, output=out, verbose=False)
    assert ei.value.path == path and ei.value.byte <= len(data) // 2
    assert not os.path.exists(out)
    argv = ["--region-descriptions", path, "--image-data", files["image_data"], "--splits",
            files["splits"], "--image-dirs", *files["image_dirs"], "--output", out]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert path in err and "byte" in err
    assert not os.path.exists(out)
    # the intact file through the CLI: report printed and saved
    open(path, "wb").write(data)
    assert main(argv + ["--min-token-count", "1"]) == 0
    printed = capsys.readouterr().out
    assert '"missing_image": 1' in printed
    assert sorted(os.listdir(out)) == ["report.json", "test.npz", "train.npz", "val.npz", "vocab.json"]


def test_corrupt_small_json_files_name_the_file(tmp_path):
    files = write_vg(str(tmp_path / "vg"))
    with open(files["splits"], "w") as f:
        f.write('{"train": [1, 2,\n "val": [3]}')
    with pytest.raises(JSONStreamError) as ei:
        load_json(files["splits"])
    assert ei.value.path == files["splits"] and ei.value.line == 2
    with open(files["splits"], "w") as f:
        json.dump(SPLITS, f)
    with open(files["image_data"], "w") as f:
        f.write('[{"image_id": 1, "width": 5, "height": 5}, {"image_id": 2')
    with pytest.raises(JSONStreamError, match="image_data.json"):
        prepare_vg(**files, output=str(tmp_path / "o"), verbose=False)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1 << 20])
def test_stream_matches_json_load_at_any_chunk_size(tmp_path, chunk):
    data = [{"id": 12345, "regions": [{"x": 1.5e3, "p": "caf\u00e9 \u00bd \"q\""}] * 3}, 7, [], "s",
            {"n": None, "t": True, "neg": -0.25}, 1234567890123]
    p = tmp_path / "a.json"
    p.write_text("\ufeff \n" + json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    assert list(iter_json_list(str(p), chunk_chars=chunk)) == data
    p.write_text("[]", encoding="utf-8")
    assert list(iter_json_list(str(p), chunk_chars=chunk)) == []


@pytest.mark.parametrize(
    "text, byte, fragment",
    [
        ('[1, 2', 5, "truncated"),
        ('[1, 2,]', 6, "trailing comma"),
        ('[{"a": 1}\n {"b": 2}]', 11, "expected ','"),
        ('{"a": 1}', 0, "expected '['"),
        ('', 0, "empty"),
        ('[1] x', 4, "extra data"),
        ('[1,\n{"a": tru}]', 10, "Expecting value"),
        ('[1,\n{"a": "x', 10, "Unterminated string starting at (file truncated?)"),
        ('[1,\n{"a": ', 10, "Expecting value (file truncated?)"),
    ],
)
def test_stream_errors_position(tmp_path, text, byte, fragment):
    p = tmp_path / "bad.json"
    p.write_text(text, encoding="utf-8")
    for chunk in (2, 1 << 20):
        with pytest.raises(JSONStreamError, match=re.escape(fragment)) as ei:
            list(iter_json_list(str(p), chunk_chars=chunk))
        assert ei.value.byte == byte, (chunk, str(ei.value))
        assert str(p) in str(ei.value)
        assert ("truncated" in str(ei.value)) == ("truncated" in fragment)

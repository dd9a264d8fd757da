"""The one tokeniser (original DenseCap rules) and the vocabulary."""
import json
import string
from collections import Counter

import pytest

from densecap.data.tokenizer import END, PAD, START, UNK, UNK_TOKEN, Vocabulary, tokenize


@pytest.mark.parametrize(
    "phrase, expected",
    [
        ("\u00bd a pizza", ["half", "a", "pizza"]),  # ½
        ("black\u2014white", ["blackwhite"]),  # — -> "-" then punctuation removed
        ("Coke\u2122 can", ["coke", "can"]),  # ™
        ("5\u00a2 coin", ["5cent", "coin"]),  # ¢
        ("fa\u00e7ade", ["facade"]),  # ç
        ("s\u00fbr", ["sur"]),  # û
        ("caf\u00e9", ["cafe"]),  # é
        ("90\u00b0 angle", ["90", "degree", "angle"]),  # ° -> " degree"
        ("cr\u00e8me", ["creme"]),  # è
        ("wait\u2026 what", ["wait", "what"]),  # …
    ],
)
def test_each_replacement(phrase, expected):
    assert tokenize(phrase) == expected


def test_replacement_before_lowercase_and_punctuation():
    # "½" becomes a word of its own only if separated; the table runs before anything else
    assert tokenize("1\u00bd") == ["1half"]
    assert tokenize("THE Man's HAT.") == ["the", "mans", "hat"]


def test_every_punctuation_character_is_deleted():
    assert tokenize("a" + string.punctuation + "b") == ["ab"]
    assert tokenize("red, green; blue!") == ["red", "green", "blue"]
    assert tokenize('sign says "stop"') == ["sign", "says", "stop"]
    assert tokenize("...") == []


def test_unicode_accents_left_after_table_are_stripped():
    assert tokenize("na\u00efve \u00e0 la cr\u00eape") == ["naive", "a", "la", "crepe"]
    # decomposed form (e + combining acute) gives the same as the precomposed table entry
    assert tokenize("cafe\u0301") == tokenize("caf\u00e9") == ["cafe"]
    # characters without an ASCII base disappear
    assert tokenize("\u6c34 water") == ["water"]


def test_whitespace_split():
    assert tokenize("  a \t man\nwith   a\r\nhat  ") == ["a", "man", "with", "a", "hat"]
    assert tokenize("") == []
    assert tokenize("   \t\n") == []


def test_vocabulary_threshold_order_and_specials():
    counts = Counter({"dog": 5, "cat": 5, "ant": 2, "zebra": 7, "emu": 1})
    v = Vocabulary.build(counts, min_count=2)
    assert v.idx_to_token[:4] == ["<PAD>", "<START>", "<END>", "<UNK>"]
    assert (PAD, START, END, UNK) == (0, 1, 2, 3)
    # most frequent first, ties alphabetical; "emu" (1 < 2) is out
    assert v.idx_to_token[4:] == ["zebra", "cat", "dog", "ant"]
    assert v.encode(["zebra", "emu", "ant"]) == [4, UNK, 7]
    assert v.map_unknown(["emu", "cat"]) == [UNK_TOKEN, "cat"]
    assert Vocabulary.build(counts, min_count=6).idx_to_token[4:] == ["zebra"]


def test_vocabulary_deterministic_whatever_insertion_order():
    items = [("w%d" % i, (i * 7919) % 13 + 1) for i in range(200)]
    a = Vocabulary.build(dict(items), 3)
    b = Vocabulary.build(dict(reversed(items)), 3)
    assert a == b and a.idx_to_token == b.idx_to_token
    assert all(c >= 3 for w, c in items if w in a)
    assert all(w in a for w, c in items if c >= 3)


def test_vocabulary_roundtrip(tmp_path):
    v = Vocabulary.build({"a": 3, "red": 2, "circle": 2}, 1)
    p = tmp_path / "vocab.json"
    v.save(str(p))
    assert json.loads(p.read_text())["idx_to_token"][4:] == ["a", "circle", "red"]
    assert Vocabulary.load(str(p)) == v
    assert v.decode_str([v.token_to_idx["a"], v.token_to_idx["red"], END, 4]) == "a red"

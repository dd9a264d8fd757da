"""The generic batched beam search (densecap/modeling/decoding.py)."""
import itertools
import math

import pytest
import torch

from densecap.modeling.decoding import beam_search

PAD, START, END = 0, 1, 2


class ToyDecoder:
    """A decoder whose next-token distribution depends on the item and the whole history.

    state: float (B, 1) = a hash of (item, history); logprobs from a fixed random table indexed
    by that hash. PAD and START are never produced.
    """

    def __init__(self, vocab: int, seed: int = 0, end_bias: float = 0.0, never_end: bool = False):
        g = torch.Generator().manual_seed(seed)
        self.V = vocab
        self.table = torch.randn(97, vocab, generator=g) * 2.0
        self.table[:, END] += end_bias
        self.table[:, PAD] = float("-inf")
        self.table[:, START] = float("-inf")
        if never_end:
            self.table[:, END] = float("-inf")

    def init_state(self, items):
        return items.double()[:, None] * 13.0 + 5.0  # B 1

    def _hash(self, state, tok):
        return (state * 31.0 + tok.double()[:, None] * 7.0 + 3.0) % 97.0

    def step(self, state, tok):
        new = self._hash(state, tok)
        return torch.log_softmax(self.table[new[:, 0].long()], dim=-1), new

    def seq_logprob(self, item, seq):
        state = self.init_state(torch.tensor([item]))
        tok = torch.tensor([START])
        total = 0.0
        for t in seq:
            lp, state = self.step(state, tok)
            total += float(lp[0, t])
            tok = torch.tensor([t])
        return total


def run(dec, items, **kw):
    items = torch.as_tensor(items)
    return beam_search(dec.step, dec.init_state(items), torch.full((len(items),), START), end_token=END,
                       pad_token=PAD, **kw)


def greedy_loop(dec, item, max_len):
    state = dec.init_state(torch.tensor([item]))
    tok = torch.tensor([START])
    seq, total = [], 0.0
    for _ in range(max_len):
        lp, state = dec.step(state, tok)
        t = int(lp[0].argmax())
        total += float(lp[0, t])
        seq.append(t)
        tok = torch.tensor([t])
        if t == END:
            break
    return seq, total


def strip(row):
    out = []
    for t in row.tolist():
        out.append(t)
        if t == END:
            break
    while out and out[-1] == PAD:
        out.pop()
    return out


def test_beam_one_equals_plain_greedy_loop():
    dec = ToyDecoder(vocab=9, seed=3, end_bias=-1.0)
    items = list(range(12))
    res = run(dec, items, beam_size=1, max_len=8)
    for b, item in enumerate(items):
        seq, total = greedy_loop(dec, item, 8)
        assert strip(res.tokens[b, 0]) == seq
        assert res.logprobs[b, 0].item() == pytest.approx(total, abs=1e-5)
        assert bool(res.finished[b, 0]) == (seq[-1] == END)


def brute_force(dec, item, max_len, alpha=0.0):
    """All finished sequences of at most max_len tokens (END included), by score."""
    words = [t for t in range(dec.V) if t not in (PAD, START, END)]
    cands = []
    for n in range(max_len):
        for body in itertools.product(words, repeat=n):
            seq = list(body) + [END]
            lp = dec.seq_logprob(item, seq)
            cands.append((lp / (len(seq) ** alpha), lp, seq))
    cands.sort(key=lambda c: -c[0])
    return cands


@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_wide_beam_finds_the_exact_optimum_and_top_n(alpha):
    dec = ToyDecoder(vocab=5, seed=1, end_bias=0.5)  # words {3, 4}: 2 + 4 + 8 hypotheses of up to 3 words
    max_len = 4
    res = run(dec, [0, 1, 2], beam_size=8, max_len=max_len, length_alpha=alpha, num_results=3)
    for b in range(3):
        ref = brute_force(dec, b, max_len, alpha)
        for r in range(3):
            assert strip(res.tokens[b, r]) == ref[r][2]
            assert res.scores[b, r].item() == pytest.approx(ref[r][0], abs=1e-5)
            assert res.logprobs[b, r].item() == pytest.approx(ref[r][1], abs=1e-5)
            assert res.lengths[b, r].item() == len(ref[r][2])
        assert torch.all(res.scores[b, :-1] >= res.scores[b, 1:])


def test_batched_equals_per_item():
    dec = ToyDecoder(vocab=11, seed=5, end_bias=-0.5)
    items = list(range(7))
    batched = run(dec, items, beam_size=4, max_len=9, num_results=2, length_alpha=0.5)
    for b, item in enumerate(items):
        single = run(dec, [item], beam_size=4, max_len=9, num_results=2, length_alpha=0.5)
        assert torch.equal(batched.tokens[b], single.tokens[0])
        assert torch.allclose(batched.logprobs[b], single.logprobs[0])


def test_result_guaranteed_when_no_beam_finishes():
    dec = ToyDecoder(vocab=6, seed=2, never_end=True)
    res = run(dec, [0, 1], beam_size=3, max_len=5, num_results=2)
    assert not res.finished.any()
    assert torch.all(res.lengths == 5)
    assert torch.isfinite(res.logprobs).all()
    for b in range(2):
        for r in range(2):
            seq = res.tokens[b, r].tolist()
            assert END not in seq and PAD not in seq and len(seq) == 5
            assert res.logprobs[b, r].item() == pytest.approx(dec.seq_logprob(b, seq), abs=1e-5)
    # the best unfinished hypothesis comes first
    assert res.scores[0, 0] >= res.scores[0, 1]


def test_finished_hypotheses_rank_before_unfinished():
    dec = ToyDecoder(vocab=6, seed=4, end_bias=-3.0)
    res = run(dec, [0, 1, 2, 3], beam_size=3, max_len=3, num_results=3)
    for b in range(4):
        fin = res.finished[b].tolist()
        assert fin == sorted(fin, reverse=True)


def test_beam_larger_than_vocabulary():
    dec = ToyDecoder(vocab=4, seed=6)  # only words {3} and END
    res = run(dec, [0, 1], beam_size=10, max_len=4, num_results=3)
    ref = brute_force(dec, 0, 4)
    assert strip(res.tokens[0, 0]) == ref[0][2]
    assert res.tokens.shape == (2, 3, 4)
    assert torch.isfinite(res.logprobs[:, 0]).all()


@pytest.mark.parametrize("n", [1, 2])
def test_block_repeats(n):
    dec = ToyDecoder(vocab=8, seed=7, end_bias=-4.0)  # long outputs that would repeat
    free = run(dec, list(range(6)), beam_size=2, max_len=12)
    blocked = run(dec, list(range(6)), beam_size=2, max_len=12, block_ngram_repeats=n)
    had_repeat = False
    for b in range(6):
        for res, check in ((free, False), (blocked, True)):
            words = [t for t in strip(res.tokens[b, 0]) if t != END]
            grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
            if check:
                assert len(grams) == len(set(grams)), words
            else:
                had_repeat |= len(grams) != len(set(grams))
    assert had_repeat  # the test would be vacuous otherwise


def test_argument_checks_and_empty_batch():
    dec = ToyDecoder(vocab=5)
    with pytest.raises(ValueError):
        run(dec, [0], beam_size=2, max_len=3, num_results=3)
    with pytest.raises(ValueError):
        run(dec, [0], beam_size=0, max_len=3)
    res = beam_search(dec.step, torch.zeros(0, 1), torch.zeros(0, dtype=torch.long), beam_size=2, max_len=3,
                      end_token=END)
    assert res.tokens.shape == (0, 1, 3)


def test_state_nest_is_reordered():
    # state as a dict of tuples: the decoder echoes its history through it
    V = 6

    def step(state, tok):
        hist = torch.cat([state["h"][0], tok[:, None].float()], dim=1)
        lp = torch.full((tok.shape[0], V), -5.0)
        # prefer token 3 then 4 alternately, END after 3 tokens; a second-best path exists
        n = hist.shape[1]
        lp[:, 3 if n % 2 else 4] = -0.1
        lp[:, 5] = -0.3
        if n >= 4:
            lp[:, END] = -0.01
        return torch.log_softmax(lp, -1), {"h": (hist,)}

    res = beam_search(step, {"h": (torch.zeros(2, 0),)}, torch.full((2,), START), beam_size=3, max_len=6,
                      end_token=END, num_results=3)
    assert strip(res.tokens[0, 0]) == [3, 4, 3, END]
    assert math.isfinite(res.logprobs[1, 2].item())

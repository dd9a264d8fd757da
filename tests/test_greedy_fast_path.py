"""The greedy fast path of CaptionDecoder.generate (beam 1) gives what the generic beam search gives."""
import pytest
import torch

from densecap.config import get_cfg
from densecap.data.tokenizer import END, PAD, Vocabulary
from densecap.modeling.language_model import build_caption_decoder

VOCAB = Vocabulary([f"w{i}" for i in range(20)])


def head(decoder, code_every_step, seed):
    torch.manual_seed(seed)
    cfg = get_cfg()
    cfg.MODEL.CAPTION.DECODER = decoder
    cfg.MODEL.CAPTION.EMBED_SIZE = 16
    cfg.MODEL.CAPTION.HIDDEN_SIZE = 24
    cfg.MODEL.CAPTION.MAX_TOKENS = 7
    cfg.MODEL.CAPTION.CODE_EVERY_STEP = code_every_step
    h = build_caption_decoder(cfg, VOCAB, input_dim=10)
    with torch.no_grad():  # sharp outputs, END likely enough that captions have many lengths
        h.out.weight.mul_(6.0)
        h.out.bias[END] += 1.0
    return h.eval()


@pytest.mark.parametrize("decoder,code_every_step", [("lstm", False), ("lstm", True), ("gru", False)])
def test_fast_greedy_equals_beam_search(decoder, code_every_step):
    lengths = set()
    for seed in range(3):
        h = head(decoder, code_every_step, seed)
        codes = torch.randn(40, 10) * 3
        tok_fast, lp_fast = h.generate(codes, beam_size=1)
        h.fast_greedy = False
        tok_ref, lp_ref = h.generate(codes, beam_size=1)
        h.fast_greedy = True
        assert tok_fast.shape == tok_ref.shape == (40, 7) and tok_fast.dtype == torch.long
        assert torch.equal(tok_fast, tok_ref)
        torch.testing.assert_close(lp_fast, lp_ref, atol=1e-5, rtol=0)
        # the log-probabilities are those of the returned captions (END included)
        torch.testing.assert_close(h.score(codes, tok_fast), lp_fast, atol=1e-4, rtol=0)
        lengths |= set((tok_fast != PAD).sum(1).tolist())
    assert 0 in lengths or 1 in lengths  # some captions end early (rows leave the batch) ...
    assert 7 in lengths and len(lengths) >= 4  # ... others run to the length limit


def test_fast_path_only_for_plain_greedy():
    h = head("lstm", False, 0)
    codes = torch.randn(5, 10)
    calls = []
    orig = h._greedy
    h._greedy = lambda *a, **k: calls.append(1) or orig(*a, **k)
    h.generate(codes, beam_size=1)
    h.generate(codes, beam_size=2)
    h.generate(codes, beam_size=1, length_alpha=0.7)
    h.generate(codes, beam_size=1, block_ngram_repeats=2)
    assert len(calls) == 1
    tok, lp = h.generate(codes[:0], beam_size=1)
    assert tok.shape == (0, 7) and lp.shape == (0,)


def test_fast_greedy_with_int8_output_layer_equals_beam_search():
    # an int8 output layer has no float weight to fold the mask into: the step uses _logits
    h = head("lstm", False, 1)
    torch.ao.quantization.quantize_dynamic(h, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    assert type(h.out) is not torch.nn.Linear
    codes = torch.randn(30, 10) * 3
    tok_fast, lp_fast = h.generate(codes, beam_size=1)
    h.fast_greedy = False
    tok_ref, lp_ref = h.generate(codes, beam_size=1)
    assert torch.equal(tok_fast, tok_ref)
    # dynamic int8 quantizes each batch of activations with its own scale, and the fast path drops
    # finished rows from the batch, so log-probabilities agree to the quantization step only
    torch.testing.assert_close(lp_fast, lp_ref, atol=2e-2, rtol=0)
    assert len(set((tok_fast != PAD).sum(1).tolist())) >= 2  # captions of different lengths

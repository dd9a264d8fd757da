"""Models say what they produce; every caption decoder counts MAX_TOKENS the same way."""
import pytest
import torch

from densecap.config import get_cfg
from densecap.data.tokenizer import END, NUM_SPECIAL, PAD, SPECIAL_TOKENS, Vocabulary
from densecap.modeling import build_model, build_caption_decoder
from densecap.modeling.capabilities import ALL_CAPABILITIES, capabilities, capabilities_from_config
from densecap.modeling.composite import DenseCapWithImageCaptioner
from densecap.modeling.image_caption import build_image_caption_head

WORDS = "a red blue circle square on dark background".split()


def _small(cfg):
    cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.WIDTH, cfg.MODEL.BACKBONE.WEIGHTS = "small_cnn", 8, ""
    cfg.MODEL.RPN.HEAD_CHANNELS, cfg.MODEL.ROI.FC_DIM = 8, 16
    cfg.MODEL.CAPTION.EMBED_SIZE = cfg.MODEL.CAPTION.HIDDEN_SIZE = 8
    c = cfg.MODEL.IMAGE_CAPTION
    c.EMBED_SIZE = c.HIDDEN_SIZE = c.ATTENTION_SIZE = 8
    cfg.MODEL.EMBEDDING.DIM = cfg.MODEL.EMBEDDING.WORD_SIZE = cfg.MODEL.EMBEDDING.HIDDEN_SIZE = 8
    return cfg


@pytest.mark.parametrize(
    "arch, image_caption, head, embedding, expected",
    [
        ("DenseCap", False, "sat_soft", False, {"regions"}),
        ("DenseCap", True, "nic", False, {"regions", "image_caption"}),
        ("DenseCap", True, "sat_soft", True, {"regions", "image_caption", "attention_maps", "region_embeddings"}),
        ("ImageCaptioner", False, "nic", False, {"image_caption"}),
        ("ImageCaptioner", False, "sat_hard", False, {"image_caption", "attention_maps"}),
    ],
)
def test_models_declare_what_they_produce(arch, image_caption, head, embedding, expected):
    cfg = _small(get_cfg())
    cfg.MODEL.META_ARCHITECTURE = arch
    cfg.MODEL.IMAGE_CAPTION.ENABLED, cfg.MODEL.IMAGE_CAPTION.HEAD = image_caption, head
    cfg.MODEL.EMBEDDING.ENABLED = embedding
    model = build_model(cfg, Vocabulary(WORDS))
    assert capabilities(model) == capabilities_from_config(cfg) == frozenset(expected)
    wrapped = torch.nn.Module()
    wrapped.module = model  # as DistributedDataParallel holds it
    assert capabilities(wrapped) == frozenset(expected) and capabilities(torch.nn.Module()) == frozenset()
    assert expected <= ALL_CAPABILITIES


def test_composite_has_both_models_capabilities():
    vocab = Vocabulary(WORDS)
    dense = build_model(_small(get_cfg()), vocab)
    cfg = _small(get_cfg())
    cfg.MODEL.META_ARCHITECTURE, cfg.MODEL.IMAGE_CAPTION.HEAD = "ImageCaptioner", "sat_soft"
    both = DenseCapWithImageCaptioner(dense, build_model(cfg, vocab))
    assert capabilities(both) == {"regions", "image_caption", "attention_maps"}


def test_special_tokens_are_named_constants():
    v = Vocabulary(WORDS)
    assert NUM_SPECIAL == len(SPECIAL_TOKENS) == 4 and v.words == WORDS and Vocabulary(v.words) == v
    assert v.token_to_idx[WORDS[0]] == NUM_SPECIAL


@pytest.mark.parametrize("which", ["region", "nic", "sat_soft"])
def test_max_tokens_counts_words_for_every_decoder(which):
    """At most MAX_TOKENS words, then END (not counted); the returned log-prob is the teacher-forced
    score of the caption, END included, so every caption is finished."""
    torch.manual_seed(0)
    vocab = Vocabulary(WORDS)
    T = 3
    cfg = get_cfg()
    if which == "region":
        cfg.MODEL.CAPTION.EMBED_SIZE = cfg.MODEL.CAPTION.HIDDEN_SIZE = 8
        dec = build_caption_decoder(cfg, vocab, input_dim=6).eval()
        with torch.no_grad():
            dec.out.bias[END] -= 20.0  # END never wins: every caption runs to the limit
        codes = torch.randn(4, 6)
        tokens, logprobs = dec.generate(codes, beam_size=2, max_len=T)
        score = dec.score(codes, tokens)
    else:
        c = cfg.MODEL.IMAGE_CAPTION
        c.HEAD, c.EMBED_SIZE, c.HIDDEN_SIZE, c.ATTENTION_SIZE, c.DROPOUT = which, 8, 8, 8, 0.0
        head = build_image_caption_head(cfg, vocab, in_channels=6).eval()
        with torch.no_grad():
            head.logits.bias[END] -= 20.0
        f = torch.randn(4, 6, 3, 3)
        out = head.generate(f, beam_size=2, max_len=T)
        tokens, logprobs = out["tokens"][:, 0], out["logprobs"][:, 0]
        score = head.score(f, tokens)
    assert tokens.shape == (4, T)
    assert bool((tokens >= NUM_SPECIAL).all())  # T words each, no PAD: the limit was reached
    torch.testing.assert_close(logprobs.float(), score.float(), atol=1e-4, rtol=0)
    assert bool((tokens != PAD).sum(1).le(T).all())

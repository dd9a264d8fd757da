"""Fine-tuning a converted original DenseCap model: ``tools/train_net.py --config-file
configs/densecap_vgg16_original.yaml MODEL.WEIGHTS converted.pth`` on data with new words."""
import os

import torch

from densecap.modeling.original.convert import convert_torch7_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "torch7", "narrow_seed1", "checkpoint.t7")
CONFIG = os.path.join(ROOT, "configs", "densecap_vgg16_original.yaml")


def _narrow_overrides(ckpt):
    """The narrow fixture's sizes (the published model has the config's own)."""
    from densecap.engine.checkpoint import cfg_from_checkpoint

    c = cfg_from_checkpoint(ckpt)
    return [
        "MODEL.ORIGINAL.CONV_WIDTHS", str(list(c.MODEL.ORIGINAL.CONV_WIDTHS)),
        "MODEL.RPN.HEAD_CHANNELS", str(c.MODEL.RPN.HEAD_CHANNELS),
        "MODEL.ROI.FC_DIM", str(c.MODEL.ROI.FC_DIM),
        "MODEL.CAPTION.EMBED_SIZE", str(c.MODEL.CAPTION.EMBED_SIZE),
        "MODEL.CAPTION.HIDDEN_SIZE", str(c.MODEL.CAPTION.HIDDEN_SIZE),
    ]


def test_finetune_converted_model_extends_vocabulary(synthetic_root, tmp_path):
    from densecap.config import load_config
    from densecap.engine.checkpoint import load_checkpoint
    from densecap.engine.cli import main
    from densecap.engine.trainer import Trainer

    pth = str(tmp_path / "densecap_narrow.pth")
    ck = convert_torch7_checkpoint(FIXTURE, pth)
    old_tokens = ck["vocab"]["idx_to_token"]
    prepared = os.path.join(synthetic_root, "prepared")
    opts = _narrow_overrides(ck) + [
        "MODEL.WEIGHTS", pth,
        "DATASETS.TRAIN", f"('{prepared}:train',)", "DATASETS.TEST", "()",
        "INPUT.MAX_SIZE", "160", "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "3", "SOLVER.LOG_PERIOD", "1",
        "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path / "ft"),
    ]
    # the model the trainer starts from: the converted weights, old word rows kept, new words added
    cfg = load_config(CONFIG, opts)
    trainer = Trainer(cfg)
    vocab = trainer.vocab.idx_to_token
    assert vocab[: len(old_tokens)] == old_tokens
    new_words = vocab[len(old_tokens):]
    assert "circle" in new_words and "man" not in new_words
    head = trainer.model.caption_head
    n_old = len(old_tokens)
    assert head.embed.weight.shape[0] == len(vocab) == head.out.weight.shape[0]
    assert torch.equal(head.embed.weight[:n_old].detach(), ck["model"]["caption_head.embed.weight"])
    assert torch.equal(head.out.weight[:n_old].detach(), ck["model"]["caption_head.out.weight"])
    assert torch.equal(head.out.bias[:n_old].detach(), ck["model"]["caption_head.out.bias"])
    assert float(head.embed.weight[n_old:].detach().abs().sum()) > 0  # new rows initialised
    # the original recipe: Adam 1e-5, conv1-conv5 frozen (finetune_cnn_after = -1: never)
    assert isinstance(trainer.optimizer, torch.optim.Adam)
    assert trainer.optimizer.param_groups[0]["lr"] == 1e-5
    assert not any(p.requires_grad for p in trainer.model.backbone.parameters())
    # the data's word ids arrive translated into the extended vocabulary
    ds = trainer.loader.dataset
    i = next(i for i in range(len(ds)) if ds[i] is not None and len(ds[i]["instances"]))
    ids = ds[i]["instances"].gt_captions[0]
    words = [vocab[int(t)] for t in ids if int(t) != 0]
    assert words and " ".join(words) == ds.gt_captions_str(i)[0]
    del trainer

    # the command line run: a few iterations
    assert main(["--config-file", CONFIG] + opts) == 0
    final = load_checkpoint(str(tmp_path / "ft" / "model_final.pth"))
    assert final["vocab"]["idx_to_token"] == vocab and final["iteration"] == 3
    sd = final["model"]
    for k, v in ck["model"].items():
        if k.startswith("backbone."):
            assert torch.equal(sd[k], v), k  # frozen
    moved = (sd["roi_heads.recognition.fc7.weight"] - ck["model"]["roi_heads.recognition.fc7.weight"]).abs().max()
    assert 0 < float(moved) < 1e-3  # trained, by Adam steps of ~1e-5

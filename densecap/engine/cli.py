"""``tools/train_net.py``: detectron2-style training entry point."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import List, Optional

from densecap.utils import comm

logger = logging.getLogger(__name__)


def default_argument_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train or evaluate a densecap model.",
        epilog="Examples:\n  tools/train_net.py --config-file configs/synthetic/densecap_small.yaml\n"
        "  tools/train_net.py --config-file F --resume OUTPUT_DIR out/\n"
        "  tools/train_net.py --config-file F --eval-only MODEL.WEIGHTS out/model_final.pth\n"
        "  torchrun --nproc_per_node 2 tools/train_net.py --config-file F",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config-file", default="", metavar="FILE", help="path to a YAML config")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/model_last.pth if present")
    p.add_argument("--eval-only", action="store_true", help="evaluate MODEL.WEIGHTS on DATASETS.TEST and exit")
    p.add_argument("--num-gpus", type=int, default=1, help="processes to launch (DDP; gloo on CPU)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=None, help="KEY VALUE config overrides")
    return p


def setup_logging(output_dir: Optional[str] = None) -> None:
    level = logging.INFO if comm.is_main_process() else logging.WARNING
    handlers: List[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if output_dir and comm.is_main_process():
        os.makedirs(output_dir, exist_ok=True)
        handlers.append(logging.FileHandler(os.path.join(output_dir, "log.txt")))
    logging.basicConfig(level=level, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S", handlers=handlers, force=True)


def setup(args):
    from densecap.config import load_config

    cfg = load_config(args.config_file or None, args.opts)
    cfg.freeze()
    return cfg


def run(args) -> Optional[dict]:
    from densecap.engine.launch import init_distributed_from_env

    init_distributed_from_env()
    cfg = setup(args)
    setup_logging(cfg.OUTPUT_DIR)
    from densecap.engine.checkpoint import apply_num_threads

    apply_num_threads(cfg)
    if args.eval_only:
        from densecap.engine.checkpoint import build_model_from_checkpoint
        from densecap.engine.evaluation import evaluate_model
        from densecap.utils.io import atomic_write_json

        if not cfg.MODEL.WEIGHTS:
            raise SystemExit("--eval-only needs MODEL.WEIGHTS (a checkpoint path)")
        model, mcfg = build_model_from_checkpoint(cfg.MODEL.WEIGHTS, cfg)
        results = evaluate_model(mcfg, model, model.vocab)
        if comm.is_main_process() and results is not None:
            atomic_write_json(os.path.join(cfg.OUTPUT_DIR, "eval.json"), results, indent=2)
            print(json.dumps({k: v for k, v in results.items() if not isinstance(v, dict)}, indent=2))
        return results
    from densecap.engine.trainer import Trainer

    return Trainer(cfg, resume=args.resume).train()


def main(argv: Optional[List[str]] = None) -> int:
    args = default_argument_parser().parse_args(argv)
    if args.num_gpus > 1 and "WORLD_SIZE" not in os.environ:
        from densecap.engine.launch import launch

        launch(run, args.num_gpus, (args,))
    else:
        run(args)
    return 0

#!/usr/bin/env python
"""Evaluate predictions against ground truth.

Dense captioning (the DenseCap mAP, exactly the original protocol)::

    python tools/evaluate.py --gt region_descriptions.json --pred results.json \
        [--vocab vocab.json] [--split-file densecap_splits.json --split test] [--max-images N] \
        [--no-unmatched-quirk] [--lua-tensor-type {float,double}] [--stable-sort]
        [--empty-gt {fp,ignore}] [--lua-gt-boxes [--image-data image_data.json]] [--output metrics.json]

Whole-image captioning (BLEU-1..4, METEOR, ROUGE-L, CIDEr)::

    python tools/evaluate.py --task caption --gt captions.json --pred captions_pred.json \
        [--split test] [--output metrics.json]

Boxes are [x, y, w, h] in original-image pixels. METEOR needs Java
(`apt-get install default-jre-headless`). See densecap/evaluation/ for the details.
"""
import argparse
import json
import logging
import sys

from densecap.evaluation.caption_eval import evaluate_caption_files, format_caption_results
from densecap.evaluation.densecap_eval import evaluate_dense_files, format_results
from densecap.evaluation.meteor import MeteorError
from densecap.utils.io import atomic_write_json


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("dense", "caption"), default="dense")
    p.add_argument("--gt", required=True, help="dense: VG region_descriptions.json; caption: Karpathy-split JSON")
    p.add_argument("--pred", required=True, help="dense: results.json; caption: COCO results list or results.json")
    p.add_argument("--vocab", default="", help="dense: vocab.json; GT words outside it become <UNK>, "
                   "captions over --max-tokens are dropped (as the original)")
    p.add_argument("--max-tokens", type=int, default=15, help="dense, with --vocab: longest GT caption kept")
    p.add_argument("--split-file", default="", help="dense: densecap_splits.json")
    p.add_argument("--split", default="", help="split to evaluate (dense: needs --split-file; default test)")
    p.add_argument("--max-images", type=int, default=0, help="dense: first N images of the split (0 = all)")
    p.add_argument("--no-unmatched-quirk", action="store_true",
                   help="dense: do not reproduce the original's used[-1] behaviour for predictions "
                        "overlapping no GT box")
    p.add_argument("--lua-tensor-type", choices=("float", "double"), default="float",
                   help="dense: the original's tensor type: float = train.lua's validation (FloatTensor, "
                        "default), double = evaluate_model.lua (DoubleTensor: recall in float64 against "
                        "the accumulated 0.01-step thresholds)")
    p.add_argument("--stable-sort", action="store_true",
                   help="dense: rank tied scores in input order instead of Torch7's torch.sort order")
    p.add_argument("--empty-gt", choices=("fp", "ignore"), default="fp",
                   help="dense: predictions for GT images without regions: false positives (default) "
                        "or ignored")
    p.add_argument("--lua-gt-boxes", action="store_true",
                   help="dense: round GT boxes as the original pipeline did (integers in the 720-px frame, "
                        "even sizes one pixel smaller); needs image sizes (GT 'width'/'height' or --image-data)")
    p.add_argument("--image-data", default="", help="dense, with --lua-gt-boxes: VG image_data.json (image sizes)")
    p.add_argument("--output", default="", help="write the metrics JSON here")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and the table")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.task == "caption":
            result = evaluate_caption_files(args.gt, args.pred, split=args.split or None)
            table = format_caption_results(result)
        else:
            result = evaluate_dense_files(
                args.gt,
                args.pred,
                vocab_path=args.vocab or None,
                split_file=args.split_file or None,
                split=args.split or None,
                max_images=args.max_images,
                max_tokens=args.max_tokens,
                unmatched_quirk=not args.no_unmatched_quirk,
                lua_tensor_type=args.lua_tensor_type,
                stable_sort=args.stable_sort,
                empty_gt=args.empty_gt,
                lua_gt_boxes=args.lua_gt_boxes,
                image_data_path=args.image_data or None,
            )
            table = format_results(result)
    except (MeteorError, FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(table)
    if args.output:
        atomic_write_json(args.output, result, indent=2)
        print(f"wrote {args.output}")
    elif not args.quiet:
        keys = ("bleu4", "meteor", "rougeL", "cider") if args.task == "caption" else ("map", "detmap")
        print(json.dumps({k: result[k] for k in keys if k in result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

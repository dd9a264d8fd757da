"""``tools/infer.py`` under ``torchrun``: the images split across processes (and machines).

    torchrun --nproc_per_node 2 tools/infer.py --weights CKPT --input photos/ --output out/

Every rank lists the inputs the same way (folders and globs in natural sort order) and takes the
shards ``k % WORLD_SIZE == RANK`` of ``--shard-images`` images (:mod:`densecap.utils.sharding`).
Overlays and features go straight to ``out/vis`` and ``out/features`` (names are unique over the
whole list, so ranks never write the same file); a shard's records, errors and viewer entries go to
``out/shards/<shard>/`` with a completion marker. When every rank is done, rank 0 merges the shards
in input order into the usual ``out/results.json`` and ``out/index.html``: the same files, in the
same order, as one process writes. A rank that dies loses only its unfinished shard; rerunning the
same command (with any number of processes) runs just the shards without a marker, then merges.
Images only: videos and the webcam are refused in this mode.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from typing import Any, Dict, List

from densecap.data.image_io import ImageReadError
from densecap.utils import comm
from densecap.utils.io import atomic_write_json
from densecap.utils.sharding import is_complete, plan_shards, publish_shard, rank_shards, tmp_dir

from .inputs import InputItem, collect_inputs, unique_names
from .results import ResultsWriter

logger = logging.getLogger(__name__)

SHARDS_DIR = "shards"

__all__ = ["run_sharded", "merge_shards"]


def _shard_dirs(out: str):
    return os.path.join(out, SHARDS_DIR)


def run_sharded(args, predictor=None) -> Dict[str, Any]:
    """Run this rank's shards of the inputs, then (rank 0) merge all shards into the outputs."""
    from . import cli

    cli.check_args(args)
    if args.webcam is not None:
        raise cli.UsageError("--webcam cannot be split across processes: run it without torchrun")
    comm.init_from_env()
    rank, world = comm.get_rank(), comm.get_world_size()
    inputs = collect_inputs(args.input, recursive=args.recursive)
    if inputs.videos:
        raise cli.UsageError(f"videos ({inputs.videos[0]}, ...) cannot be split across processes: run them without torchrun")
    boxes = cli.load_boxes_file(args.boxes) if args.boxes else None
    names = unique_names(inputs.images)
    items = [InputItem(name=n, img_name=os.path.basename(p), path=p) for p, n in zip(inputs.images, names)]
    by_path = {it.path: it for it in items}
    lookup = cli.BoxesLookup(boxes, items) if boxes is not None else None
    plan = plan_shards([it.path for it in items], args.shard_images)
    mine = rank_shards(plan, rank, world)
    shards_dir = _shard_dirs(args.output)
    os.makedirs(shards_dir, exist_ok=True)
    todo = [s for s in mine if not is_complete(os.path.join(shards_dir, s.name), s)]
    logger.info("rank %d/%d: %d of %d shard(s) to run (%d already complete)", rank, world, len(todo), len(mine),
                len(mine) - len(todo))
    if predictor is None:
        predictor = cli.build_predictor(args)
    else:
        predictor.batch_size = args.batch_size
    t0 = time.perf_counter()
    done = 0
    for shard in todo:
        done += _run_shard(args, predictor, shard, [by_path[p] for p in shard.items], lookup, shards_dir)
    elapsed = time.perf_counter() - t0
    comm.synchronize()  # every rank finished its shards
    summary: Dict[str, Any] = {"rank": rank, "world_size": world, "images": done, "shards_run": len(todo),
                               "seconds": elapsed, "output": args.output, "merged": False, "failed": 0}
    if rank == 0:
        merged = merge_shards(args, predictor, plan, inputs.errors, by_path)
        summary.update(merged)
    comm.synchronize()
    print(f"rank {rank}: {done} image(s) in {len(todo)} shard(s), {elapsed:.1f} s"
          + (f"; merged {summary['total_images']} image(s) -> {os.path.join(args.output, 'results.json')}"
             if summary["merged"] else ""), flush=True)
    return summary


def _run_shard(args, predictor, shard, items: List[InputItem], lookup, shards_dir: str) -> int:
    """Caption one shard's images: overlays/features into the output folder, records into the shard."""
    from . import cli

    tmp = tmp_dir(shards_dir, shard)
    writer = ResultsWriter(os.path.join(tmp, "results.json"))
    outputs = cli._Outputs(args, writer)

    def report(path: str, reason: str) -> None:
        writer.add_error(path, reason)
        print(f"error: {path}: {reason}", file=sys.stderr)

    done = 0
    for a in range(0, len(items), args.batch_size):
        imgs, its, given = [], [], []
        for it in items[a : a + args.batch_size]:
            try:
                img = predictor.read(it.path)
            except ImageReadError as e:
                report(it.path, e.reason)
                continue
            imgs.append(img)
            its.append(it)
            given.append(lookup.get(it) if lookup is not None else None)
        for it, img, pred in zip(its, imgs, cli._predict_isolating_failures(predictor, imgs, its, given, report)):
            if pred is None:
                continue
            try:
                outputs.add(it, img, pred)
                done += 1
            except (OSError, ValueError) as e:
                report(it.display_path, f"cannot write outputs ({e})")
    writer.write()
    atomic_write_json(os.path.join(tmp, "viewer.json"), outputs.viewer_entries)
    publish_shard(tmp, os.path.join(shards_dir, shard.name), shard)
    return done


def merge_shards(args, predictor, plan, input_errors, by_path) -> Dict[str, Any]:
    """Concatenate complete shards in input order into ``results.json`` (+ ``index.html``)."""
    from . import cli

    shards_dir = _shard_dirs(args.output)
    missing = [s.name for s in plan if not is_complete(os.path.join(shards_dir, s.name), s)]
    if missing:
        logger.error("%d shard(s) are not complete (%s...): rerun the same command to finish them",
                     len(missing), missing[0])
        return {"merged": False, "missing_shards": missing}
    writer = ResultsWriter(os.path.join(args.output, "results.json"),
                           dict(cli._options_summary(args, predictor), world_size=comm.get_world_size(),
                                shard_images=args.shard_images))
    for path, reason in input_errors:
        writer.add_error(path, reason)
    entries: List[Dict[str, Any]] = []
    for s in plan:
        d = os.path.join(shards_dir, s.name)
        with open(os.path.join(d, "results.json"), "r", encoding="utf-8") as f:
            part = json.load(f)
        writer.results.extend(part["results"])
        writer.errors.extend(part["errors"])
        with open(os.path.join(d, "viewer.json"), "r", encoding="utf-8") as f:
            entries.extend(json.load(f))
    writer.write()
    if not args.no_vis:
        from .viewer import write_viewer

        title = f"Dense captions: {os.path.basename(os.path.abspath(args.output))}"
        write_viewer(os.path.join(args.output, "index.html"), entries, topk=args.topk, title=title, errors=writer.errors)
    # leftovers of killed runs (temporary folders, shards of an older input list) are no longer needed
    keep = {s.name for s in plan}
    for name in os.listdir(shards_dir):
        if name not in keep:
            shutil.rmtree(os.path.join(shards_dir, name), ignore_errors=True)
    return {"merged": True, "total_images": len(writer.results), "total_failed": len(writer.errors)}

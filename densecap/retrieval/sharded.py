"""``tools/retrieve.py index`` under ``torchrun``: the images split across processes (and machines).

    torchrun --nproc_per_node 2 tools/retrieve.py index --weights CKPT --input photos/ --index INDEX_DIR

Every rank lists the inputs the same way and takes the shards ``k % WORLD_SIZE == RANK`` of
``--shard-images`` images (:mod:`densecap.utils.sharding`). A shard is indexed into its own small
region index ``INDEX_DIR/parts/<shard>/`` (images already in the main index are skipped) and marked
complete. When every rank is done, rank 0 appends the parts to the main index in input order
(:meth:`RegionIndex.adopt`, one manifest update per part; a part whose images are all in the index
already is just removed) and adds the new regions to the FAISS fast stage if the index has one. A
rank that dies loses only its unfinished shard; rerunning the same command runs only the shards
without a marker, then merges.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any, Dict, List, Sequence

from densecap.utils import comm
from densecap.utils.io import atomic_write_json
from densecap.utils.sharding import is_complete, plan_shards, publish_shard, rank_shards, tmp_dir

from .index import RegionIndex

logger = logging.getLogger(__name__)

PARTS = "parts"

__all__ = ["index_images_sharded"]


def index_images_sharded(rmodel, paths: Sequence[str], index_dir: str, *, batch_size: int = 4, shard_images: int = 256,
                         max_boxes: int = 0, codes_dtype: str = "float16", progress: bool = True) -> Dict[str, Any]:
    from .index import index_images

    comm.init_from_env()
    rank, world = comm.get_rank(), comm.get_world_size()
    items, seen = [], set()
    for p in paths:
        ap = os.path.abspath(p)
        if ap not in seen:
            items.append(ap)
            seen.add(ap)
    done = set()
    if RegionIndex.exists(index_dir):
        main = RegionIndex.open(index_dir)
        rmodel.check_index(main)
        done = main.done_paths()
    plan = plan_shards(items, shard_images)
    parts_dir = os.path.join(index_dir, PARTS)
    os.makedirs(parts_dir, exist_ok=True)
    mine = [s for s in rank_shards(plan, rank, world) if not is_complete(os.path.join(parts_dir, s.name), s)]
    logger.info("rank %d/%d: %d shard(s) to index", rank, world, len(mine))
    added = 0
    for shard in mine:
        todo = [p for p in shard.items if p not in done]
        tmp = tmp_dir(parts_dir, shard)
        errors: List[Dict[str, str]] = []
        if todo:
            stats = index_images(rmodel, todo, tmp, batch_size=batch_size, shard_images=shard_images,
                                 max_boxes=max_boxes, codes_dtype=codes_dtype, progress=progress, _in_part=True)
            errors, added = stats["errors"], added + stats["added_images"]
        atomic_write_json(os.path.join(tmp, "errors.json"), errors)
        publish_shard(tmp, os.path.join(parts_dir, shard.name), shard)
    comm.synchronize()
    out: Dict[str, Any] = {"index": os.path.abspath(index_dir), "added_images": added, "skipped_images": 0,
                           "errors": [], "rank": rank, "world_size": world, "merged": False}
    if rank == 0:
        out.update(_merge(rmodel, plan, index_dir, codes_dtype=codes_dtype, max_boxes=max_boxes))
    comm.synchronize()
    if rank != 0:
        index = RegionIndex.open(index_dir) if RegionIndex.exists(index_dir) else None
        out.update(num_images=index.num_images if index else 0, num_regions=index.num_regions if index else 0)
    return out


def _merge(rmodel, plan, index_dir: str, *, codes_dtype: str, max_boxes: int) -> Dict[str, Any]:
    parts_dir = os.path.join(index_dir, PARTS)
    missing = [s.name for s in plan if not is_complete(os.path.join(parts_dir, s.name), s)]
    if RegionIndex.exists(index_dir):
        index = RegionIndex.open(index_dir)
    else:
        index = RegionIndex.create(index_dir, checkpoint=rmodel.checkpoint, region_dim=rmodel.region_dim,
                                   embed_dim=rmodel.embed_dim, codes_dtype=codes_dtype,
                                   options={"max_boxes": int(max_boxes), "image_size": rmodel.image_size})
    errors: List[Dict[str, str]] = []
    merged_images = 0
    with index:
        index.lock()
        for s in plan:
            d = os.path.join(parts_dir, s.name)
            if s.name in missing:
                continue
            with open(os.path.join(d, "errors.json"), "r", encoding="utf-8") as f:
                errors.extend(json.load(f))
            if RegionIndex.exists(d):
                part = RegionIndex.open(d)
                if not (part.done_paths() <= index.done_paths()):  # not adopted by an interrupted merge
                    merged_images += index.adopt(part)
            shutil.rmtree(d, ignore_errors=True)
        if index.ann_params:
            from .ann import update_ann

            update_ann(index)
    if missing:
        logger.error("%d shard(s) are not complete (%s...): rerun the same command to index them", len(missing), missing[0])
    else:  # leftovers of killed runs
        for name in os.listdir(parts_dir):
            shutil.rmtree(os.path.join(parts_dir, name), ignore_errors=True)
    return {"merged": not missing, "missing_shards": missing, "merged_images": merged_images, "errors": errors,
            "num_images": index.num_images, "num_regions": index.num_regions}

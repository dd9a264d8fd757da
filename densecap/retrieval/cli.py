"""``tools/retrieve.py``: index a collection, query it, evaluate retrieval. ``tools/cluster.py``.

    tools/retrieve.py index --weights CKPT [--config-file CFG] --input DIR_OR_GLOB [...] --index INDEX_DIR
    tools/retrieve.py compact --index INDEX_DIR           (merge shards; optional)
    tools/retrieve.py ann --index INDEX_DIR [--type auto|flat|ivf_flat|ivf_pq] [--nlist L] [--nprobe P]
                                            (FAISS fast stage for large collections; see retrieval/ann.py)
    tools/retrieve.py query --index INDEX_DIR --query "a red circle" [--topk 20] [--mode exact|fast]
                            [--output DIR] [--json FILE] [--relational auto|off] [--relations FILE]
    tools/retrieve.py fit-relations --data PREPARED_DIR [--split train] (--index INDEX_DIR | --output FILE)
                            (the geometry model that grounds "A left of B" queries as pairs of regions)
    tools/retrieve.py query --index INDEX_DIR --query-image IMG --query-box x,y,w,h [--topk 20]
    tools/retrieve.py train-embedding --weights CKPT --data PREPARED_DIR --output CKPT_WITH_EMBEDDING
    tools/retrieve.py eval  --weights CKPT --data PREPARED_DIR [--split test] [--num-images 1000]
                            [--num-queries 100] [--output FILE]
    tools/retrieve.py eval-relational --weights CKPT --data PREPARED_DIR [--split test] [--output FILE]
    tools/cluster.py --index INDEX_DIR --k K --output DIR

Boxes are [x, y, w, h] in original-image pixels everywhere (arguments, printout, JSON).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional

logger = logging.getLogger("densecap.retrieval")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="[%(asctime)s %(name)s] %(message)s",
                        datefmt="%H:%M:%S", force=True)


def _parse_box(s: str) -> List[float]:
    try:
        box = [float(v) for v in s.replace(" ", "").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--query-box must be x,y,w,h numbers, got {s!r}") from None
    if len(box) != 4 or box[2] <= 0 or box[3] <= 0:
        raise argparse.ArgumentTypeError(f"--query-box must be x,y,w,h with w, h > 0, got {s!r}")
    return box


def _model_args(p: argparse.ArgumentParser, weights_required: bool) -> None:
    p.add_argument("--weights", required=weights_required, metavar="CKPT", help="model checkpoint (.pth)")
    p.add_argument("--config-file", default="", metavar="CFG", help="config overriding the checkpoint's (optional)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: the config's)")
    p.add_argument("--image-size", type=int, default=None, help="longest image side (default: the config's)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="retrieve.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("index", help="run the model over images and add their regions to an index")
    _model_args(q, True)
    q.add_argument("--input", nargs="+", required=True, help="image files, folders or globs")
    q.add_argument("--index", required=True, metavar="INDEX_DIR")
    q.add_argument("--recursive", action="store_true", help="also search sub-folders")
    q.add_argument("--batch-size", type=int, default=4)
    q.add_argument("--shard-images", type=int, default=256, help="images per shard (a kill loses at most one shard)")
    q.add_argument("--max-boxes", type=int, default=0, help="keep each image's best N boxes (0 = all)")
    q.add_argument("--codes-dtype", choices=("float16", "float32"), default="float16",
                   help="storage of region codes (float16 halves the index; log-likelihoods change < 1e-2)")
    q.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")

    q = sub.add_parser("compact", help="merge an index's shards into one (faster to open and search)")
    q.add_argument("--index", required=True, metavar="INDEX_DIR")

    q = sub.add_parser("ann", help="build the FAISS fast stage of an index (or add the regions appended since)")
    q.add_argument("--index", required=True, metavar="INDEX_DIR")
    q.add_argument("--type", default="auto", choices=("auto", "flat", "ivf_flat", "ivf_pq"),
                   help="auto: flat below 200k regions, IVF-Flat below 5M, IVF-PQ above")
    q.add_argument("--nlist", type=int, default=0, help="inverted lists (0: ~sqrt(N), a power of two)")
    q.add_argument("--nprobe", type=int, default=0, help="lists scanned per query (0: nlist / 4)")
    q.add_argument("--pq-m", type=int, default=0, help="IVF-PQ bytes per region (0: embedding size / 8)")
    q.add_argument("--train-size", type=int, default=0, help="regions the quantizer is trained on (0: 64 per list)")
    q.add_argument("--update", action="store_true", help="only add regions appended since the last build (no retraining)")

    q = sub.add_parser("query", help="search an index by text or by an image region")
    q.add_argument("--index", required=True, metavar="INDEX_DIR")
    q.add_argument("--query", default=None, help="text query")
    q.add_argument("--query-image", default=None, metavar="IMG", help="query by a region of this image")
    q.add_argument("--query-box", type=_parse_box, default=None, metavar="x,y,w,h", help="the region (original pixels)")
    q.add_argument("--topk", type=int, default=20)
    q.add_argument("--mode", choices=("exact", "fast"), default="exact")
    q.add_argument("--candidates", type=int, default=1000, help="fast mode: regions re-ranked exactly")
    q.add_argument("--nprobe", type=int, default=0, help="fast mode with a FAISS stage: lists scanned (0: the index's)")
    q.add_argument("--output", default="", metavar="DIR", help="write a contact sheet of the hits here")
    q.add_argument("--json", default="", metavar="FILE", help="write the hits as JSON")
    q.add_argument("--weights", default=None, metavar="CKPT", help="the index's checkpoint, if it moved")
    q.add_argument("--device", default=None)
    q.add_argument("--relational", choices=("auto", "off"), default="auto",
                   help="auto: a query naming a relation ('A left of B') is grounded as pairs of regions when a "
                        "geometry model is available (--relations, or the index's relations.json)")
    q.add_argument("--relations", default="", metavar="FILE", help="relation geometry model (tools/retrieve.py fit-relations)")

    q = sub.add_parser("fit-relations", help="fit the relation geometry model on a prepared split's relational regions")
    q.add_argument("--data", required=True, metavar="PREPARED_DIR")
    q.add_argument("--split", default="train")
    q.add_argument("--index", default="", metavar="INDEX_DIR", help="write it as the index's relations.json")
    q.add_argument("--output", default="", metavar="FILE", help="write it here")

    q = sub.add_parser("train-embedding", help="fit the joint embedding head on a frozen checkpoint (quick second stage)")
    q.add_argument("--weights", required=True, metavar="CKPT", help="the trained DenseCap checkpoint")
    q.add_argument("--data", required=True, metavar="PREPARED_DIR")
    q.add_argument("--split", default="train")
    q.add_argument("--output", required=True, metavar="CKPT", help="the checkpoint to write (model + embedding head)")
    q.add_argument("--num-images", type=int, default=1000, help="training images whose GT boxes give the pairs (0 = all)")
    q.add_argument("--steps", type=int, default=2000)
    q.add_argument("--batch-size", type=int, default=128)
    q.add_argument("--lr", type=float, default=1e-3)
    q.add_argument("--max-seconds", type=float, default=0.0, help="stop fitting after this long (0 = no limit)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--device", default=None)
    q.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides (e.g. MODEL.EMBEDDING.DIM 128)")

    q = sub.add_parser("eval", help="the DenseCap paper's retrieval protocol on a prepared split")
    _model_args(q, True)
    q.add_argument("--data", required=True, metavar="PREPARED_DIR")
    q.add_argument("--split", default="test")
    q.add_argument("--num-images", type=int, default=1000)
    q.add_argument("--num-queries", type=int, default=100)
    q.add_argument("--captions-per-query", type=int, default=4)
    q.add_argument("--boxes-per-image", type=int, default=100)
    q.add_argument("--candidates", type=int, default=1000, help="fast mode: regions re-ranked exactly per caption")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--output", default="", metavar="FILE", help="write the metrics as JSON")
    q.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")

    q = sub.add_parser("eval-relational", help="relational region search: queries naming two objects and their "
                       "relation, unique to one image; hit = IoU >= 0.5 with the annotated box in the top k")
    _model_args(q, True)
    q.add_argument("--data", required=True, metavar="PREPARED_DIR")
    q.add_argument("--split", default="test")
    q.add_argument("--num-images", type=int, default=0, help="images in the pool (0 = the whole split)")
    q.add_argument("--num-queries", type=int, default=0, help="queries sampled (0 = every eligible one)")
    q.add_argument("--boxes-per-image", type=int, default=100)
    q.add_argument("--candidates", type=int, nargs="+", default=[1000, 100], help="fast mode: regions re-ranked exactly")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--relations", default="", metavar="FILE",
                   help="relation geometry model for the pair modes (default: fitted on --geometry-split)")
    q.add_argument("--geometry-split", default="train", help="split the geometry model is fitted on")
    q.add_argument("--no-pairs", action="store_true", help="skip the pair-grounding modes")
    q.add_argument("--output", default="", metavar="FILE", help="write the metrics as JSON")
    q.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p


def _load_model(weights, config_file, device, image_size, opts=(), known=None):
    from .search import RetrievalModel

    options = {}
    if device is not None:
        options["device"] = device
    if image_size is not None:
        options["image_size"] = image_size
    return RetrievalModel.from_checkpoint(weights, config_file=config_file or None, opts=list(opts or ()), known=known, **options)


def cmd_index(args) -> int:
    from densecap.inference.inputs import collect_inputs

    from .index import index_images

    found = collect_inputs(args.input, recursive=args.recursive)
    for path, why in found.errors:
        logger.warning("%s: %s", path, why)
    if found.videos:
        logger.warning("ignoring %d video file(s): the index holds still images", len(found.videos))
    if not found.images:
        print("no images found in --input", file=sys.stderr)
        return 2
    rmodel = _load_model(args.weights, args.config_file, args.device, args.image_size, args.opts)
    if rmodel.embedding_head is None:
        logger.warning("this checkpoint has no joint embedding head: the index supports --mode exact only")
    stats = index_images(rmodel, found.images, args.index, batch_size=args.batch_size, shard_images=args.shard_images,
                         max_boxes=args.max_boxes, codes_dtype=args.codes_dtype)
    print(f"index {stats['index']}: {stats['num_images']} images, {stats['num_regions']} regions "
          f"(added {stats['added_images']}, skipped {stats['skipped_images']} already indexed, "
          f"{len(stats['errors'])} unreadable)")
    return 0


def print_result(res, out=None) -> None:
    out = out if out is not None else sys.stdout
    if res.oov:
        print(f"note: not in the vocabulary, searched as <UNK>: {', '.join(res.oov)}", file=out)
    if res.mode in ("exact", "fast"):
        print(f"query: {' '.join(res.tokens)}   mode: {res.mode}   regions: {res.num_regions}"
              + (f"   re-ranked: {res.candidates}" if res.mode == "fast" else "")
              + f"   time: {res.seconds.get('total', 0):.3f} s", file=out)
        print("score = log-likelihood of the query given the region", file=out)
    elif res.mode.endswith("+pairs"):
        print(f"query: {' '.join(res.tokens)}   mode: {res.mode}   regions: {res.num_regions}"
              f"   time: {res.seconds.get('total', 0):.3f} s", file=out)
        print("score = log p(subject | region) + log p(object | region) + log p(relation | the two boxes); "
              "box = the pair's union", file=out)
    else:
        print(f"query: {res.query}   regions: {res.num_regions}   score = cosine similarity", file=out)
    print(f"{'rank':>4}  {'score':>9}  {'box [x, y, w, h]':<28} {'image':<40} caption", file=out)
    for h in res.hits:
        box = "[" + ", ".join(f"{v:.0f}" for v in h["box"]) + "]"
        print(f"{h['rank']:>4}  {h['score']:>9.3f}  {box:<28} {h['image']:<40} {h['caption']}", file=out)


def cmd_query(args) -> int:
    from densecap.utils.io import atomic_write_json

    from .index import RegionIndex
    from .search import search_by_region, search_text
    from .visualize import hits_sheet

    if (args.query is None) == (args.query_image is None):
        print("give either --query TEXT or --query-image IMG --query-box x,y,w,h", file=sys.stderr)
        return 2
    if args.query_image is not None and args.query_box is None:
        print("--query-image needs --query-box x,y,w,h", file=sys.stderr)
        return 2
    index = RegionIndex.open(args.index)
    weights = args.weights or index.checkpoint["path"]
    index.check_checkpoint(weights)  # a clear error before building the model
    rmodel = _load_model(weights, "", args.device, index.manifest.get("options", {}).get("image_size") or None,
                         known=index.checkpoint)
    if args.query is not None:
        from .pairs import load_geometry

        res = search_text(index, rmodel, args.query, topk=args.topk, mode=args.mode, candidates=args.candidates,
                          nprobe=args.nprobe, relational=args.relational,
                          geometry=load_geometry(args.relations) if args.relations else None)
    else:
        res = search_by_region(index, rmodel, args.query_image, args.query_box, topk=args.topk)
    print_result(res)
    if args.json:
        atomic_write_json(args.json, res.to_json(), indent=1)
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        path = hits_sheet(res, os.path.join(args.output, "hits.jpg"))
        atomic_write_json(os.path.join(args.output, "hits.json"), res.to_json(), indent=1)
        print(f"contact sheet: {path}")
    return 0


def cmd_fit_relations(args) -> int:
    from densecap.data.prepared import load_split, load_vocab

    from .pairs import GEOMETRY_FILE, RelationGeometry, split_triples

    if bool(args.index) == bool(args.output):
        print("give one of --index INDEX_DIR or --output FILE", file=sys.stderr)
        return 2
    if args.index and not os.path.isdir(args.index):
        raise FileNotFoundError(f"--index {args.index}: no such index directory")
    triples = split_triples(load_split(args.data, args.split), load_vocab(args.data))
    if not triples:
        raise ValueError(f"{args.data} ({args.split}): no relational regions whose two objects are annotated")
    geo = RelationGeometry.fit(triples)
    path = os.path.join(args.index, GEOMETRY_FILE) if args.index else args.output
    geo.save(path)
    print(f"relation geometry: {len(triples)} triples, relations {', '.join(geo.relations)}, "
          f"training accuracy {geo.train_accuracy:.3f} -> {path}")
    return 0


def cmd_eval(args) -> int:
    from densecap.utils.io import atomic_write_json

    from .evaluate import evaluate_retrieval, format_metrics

    rmodel = _load_model(args.weights, args.config_file, args.device, args.image_size, args.opts)
    metrics = evaluate_retrieval(
        rmodel, args.data, args.split, num_images=args.num_images, num_queries=args.num_queries,
        captions_per_query=args.captions_per_query, boxes_per_image=args.boxes_per_image,
        candidates=args.candidates, seed=args.seed,
    )
    print(format_metrics(metrics))
    if args.output:
        atomic_write_json(args.output, metrics, indent=2)
    return 0


def cmd_eval_relational(args) -> int:
    from densecap.utils.io import atomic_write_json

    from .pairs import RelationGeometry
    from .relational import evaluate_relational_retrieval, format_relational

    rmodel = _load_model(args.weights, args.config_file, args.device, args.image_size, args.opts)
    metrics = evaluate_relational_retrieval(
        rmodel, args.data, args.split, num_images=args.num_images, num_queries=args.num_queries,
        boxes_per_image=args.boxes_per_image, candidates=args.candidates, seed=args.seed,
        pairs=not args.no_pairs, geometry=RelationGeometry.load(args.relations) if args.relations else None,
        geometry_split=args.geometry_split,
    )
    print(format_relational(metrics))
    if args.output:
        atomic_write_json(args.output, metrics, indent=2)
    return 0


def cmd_train_embedding(args) -> int:
    from .train import train_embedding

    s = train_embedding(args.weights, args.data, args.output, split=args.split, num_images=args.num_images,
                        steps=args.steps, batch_size=args.batch_size, lr=args.lr, max_seconds=args.max_seconds,
                        seed=args.seed, opts=args.opts, device=args.device)
    val = f", val recall@10 {s['val_recall@10']:.3f}" if "val_recall@10" in s else ""
    print(f"embedding head: {s['pairs']} pairs, {s['steps']} steps in {s['seconds']:.0f} s, final loss "
          f"{s['history'][-1]['loss']:.4f}, train recall@10 {s['train_recall@10']:.3f}{val}; wrote {s['output']}")
    return 0


def cmd_compact(args) -> int:
    from .index import RegionIndex

    index = RegionIndex.open(args.index)
    before = len(index.shards)
    with index:
        index.lock()
        index.compact()
    print(f"index {index.root}: {before} shard(s) -> {len(index.shards)}; {index.num_images} images, {index.num_regions} regions")
    return 0


def cmd_ann(args) -> int:
    from .ann import build_ann, update_ann
    from .index import RegionIndex

    index = RegionIndex.open(args.index)
    with index:
        index.lock()
        if args.update:
            added = update_ann(index)
            p = index.ann_params
            if not p:
                print(f"index {index.root} has no fast stage yet; run without --update", file=sys.stderr)
                return 1
            print(f"index {index.root}: added {added} region(s) to the {p['type']} fast stage ({p['count']} regions)")
            return 0
        p = build_ann(index, kind=args.type, nlist=args.nlist, nprobe=args.nprobe, pq_m=args.pq_m,
                      train_size=args.train_size)
    print(f"index {index.root}: fast stage {p['type']} ({p['factory']}, nprobe {p['nprobe']}) over {p['count']} "
          f"regions in {p['build_seconds']:.1f} s")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    from .index import RegionIndexError

    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return {"index": cmd_index, "query": cmd_query, "eval": cmd_eval, "eval-relational": cmd_eval_relational,
                "train-embedding": cmd_train_embedding, "compact": cmd_compact, "ann": cmd_ann,
                "fit-relations": cmd_fit_relations}[args.command](args)
    except (RegionIndexError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def cluster_main(argv: Optional[List[str]] = None) -> int:
    from .cluster import cluster_index
    from .index import RegionIndex, RegionIndexError

    p = argparse.ArgumentParser(prog="cluster.py", description="Group an index's images by what their captions say.")
    p.add_argument("--index", required=True, metavar="INDEX_DIR")
    p.add_argument("--k", type=int, required=True, help="number of clusters")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--captions-per-image", type=int, default=20, help="the image's best N captions are embedded")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights", default=None, metavar="CKPT", help="the index's checkpoint, if it moved")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    _setup_logging()
    try:
        index = RegionIndex.open(args.index)
        weights = args.weights or index.checkpoint["path"]
        index.check_checkpoint(weights)
        rmodel = _load_model(weights, "", args.device, None, known=index.checkpoint)
        summary = cluster_index(index, rmodel, k=args.k, output=args.output, captions_per_image=args.captions_per_image,
                                seed=args.seed)
    except (RegionIndexError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for c in summary["clusters"]:
        print(f"cluster {c['id']}: {c['size']} images; typical: " + " | ".join(c["typical_captions"][:3]))
    print(f"assignment: {summary['assignment_file']}")
    return 0

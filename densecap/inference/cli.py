"""``tools/infer.py``: dense captions for images, folders, globs, videos and a webcam.

    python tools/infer.py --weights CKPT --input PATH [PATH ...] --output DIR [options] [KEY VALUE ...]

Writes to DIR: ``results.json`` (:mod:`densecap.inference.results`), ``vis/<name>.jpg`` overlays
(:mod:`.visualize`), ``index.html`` (:mod:`.viewer`), and with ``--extract-features``
``features/<name>.npz`` (:mod:`.features`). Bad inputs are reported (results.json ``errors`` and
stderr) and skipped; they never stop the run. Exit status: 0 when done (even with some bad inputs),
1 when inputs were given but none could be captioned, 2 for a usage or setup error.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from densecap.data.image_io import ImageReadError

from .inputs import (
    InputItem,
    VideoOpenError,
    collect_inputs,
    has_display,
    iter_video_frames,
    unique_names,
    video_frame_count,
    video_frame_name,
)
from .options import options_from_args
from .predictor import DenseCapPredictor, ImageCaptionUnavailable, Prediction, as_given_boxes
from .results import ResultsWriter, image_id_from_name, prediction_record

logger = logging.getLogger(__name__)


class UsageError(Exception):
    """A problem with the command line or its files: reported, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="infer.py",
        description="Dense captioning: boxes and captions for images, folders, globs, videos or a webcam.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n"
        "  tools/infer.py --weights output/demo/model_final.pth --input photos/ --output out/\n"
        "  tools/infer.py --weights W --input 'data/**/*.jpg' clip.mp4 --video-stride 30 --output out/\n"
        "  tools/infer.py --weights W --input a.jpg --boxes boxes.json --output out/   # caption given boxes\n"
        "  tools/infer.py --weights W --webcam 0 --output out/ --image-size 480 --num-proposals 50\n"
        "Trailing KEY VALUE pairs override config keys (e.g. TEST.DETECTIONS_PER_IMAGE 100).",
    )
    g = p.add_argument_group("model")
    g.add_argument("--config-file", default="", metavar="FILE",
                   help="YAML config; optional: the checkpoint carries its own config")
    g.add_argument("--weights", required=True, metavar="CKPT", help="model checkpoint (.pth), or the original DenseCap's Torch7 file "
                   "(.t7 / .t7.zip: converted once and cached next to it or in ~/.cache/densecap)")
    g.add_argument("--device", default=None, choices=("cpu", "cuda"), help="default: the config's MODEL.DEVICE")
    g = p.add_argument_group("inputs and outputs")
    g.add_argument("--input", nargs="+", default=[], metavar="PATH",
                   help="image files, folders, globs (quote them) and video files; nothing is capped")
    g.add_argument("--output", required=True, metavar="DIR", help="output folder (created)")
    g.add_argument("--recursive", action="store_true", help="search folders recursively")
    g.add_argument("--video-stride", type=int, default=1, metavar="N", help="caption every N-th video/webcam frame (1)")
    g.add_argument("--max-frames", type=int, default=0, metavar="N",
                   help="stop each video/webcam after N captioned frames (0 = no limit)")
    g.add_argument("--webcam", type=int, default=None, metavar="INDEX",
                   help="capture from this webcam (live window when a display exists; q/Esc or Ctrl-C stops)")
    g.add_argument("--boxes", default="", metavar="FILE",
                   help="JSON {image name or path: [[x,y,w,h], ...]} in original pixels: caption these boxes, no RPN")
    g.add_argument("--extract-features", action="store_true", help="write features/<name>.npz (boxes, region codes, ...)")
    g.add_argument("--image-caption", action="store_true", help="also caption the whole image (needs an image-caption head)")
    g.add_argument("--caption-weights", default="", metavar="CKPT",
                   help="with --image-caption: a whole-image captioner checkpoint (ImageCaptioner) to run "
                        "alongside a DenseCap checkpoint that has no caption head")
    g.add_argument("--num-captions", type=int, default=None, metavar="N",
                   help="with --image-caption: the top N whole-image captions (MODEL.IMAGE_CAPTION.NUM_CAPTIONS, 1)")
    g.add_argument("--attention-maps", action="store_true",
                   help="with --image-caption on an attention model: attention/<name>.png, each word's map over the image")
    g.add_argument("--no-vis", action="store_true", help="no overlays and no index.html (results.json only)")
    g.add_argument("--topk", type=int, default=10, help="boxes drawn per image in overlays and shown first in the viewer (0 = all)")
    g = p.add_argument_group("test-time options (default: the config's)")
    g.add_argument("--image-size", type=int, default=None, help="longest image side fed to the model (INPUT.MAX_SIZE, 720)")
    g.add_argument("--rpn-nms", type=float, default=None, help="RPN NMS IoU (MODEL.RPN.NMS_THRESH, 0.7)")
    g.add_argument("--final-nms", type=float, default=None, help="final NMS IoU (MODEL.ROI.NMS_THRESH_TEST, 0.3)")
    g.add_argument("--num-proposals", type=int, default=None, help="proposals after RPN NMS (MODEL.RPN.POST_NMS_TOPK_TEST, 1000)")
    g.add_argument("--beam-size", type=int, default=None, help="caption beam size (TEST.BEAM_SIZE, 1 = greedy)")
    g.add_argument("--score-thresh", type=float, default=None, help="drop boxes scoring below (TEST.SCORE_THRESH, 0)")
    g.add_argument("--quantize", default=None, choices=("int8",),
                   help="dynamic int8 quantization of the linear layers (TEST.QUANTIZE; faster, outputs change slightly)")
    g.add_argument("--precision", default=None, choices=("float32", "bfloat16"),
                   help="bfloat16: the heavy layers under bfloat16 autocast (TEST.PRECISION; fast on CPUs with "
                        "AVX512-BF16/AMX and on GPUs, outputs change slightly)")
    g.add_argument("--batch-size", type=int, default=1, help="images per forward pass (results do not depend on it)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--workers", type=int, default=2,
                   help="threads decoding the next images while the model runs, plus one writing results "
                        "(0 = one image after the other; outputs are the same)")
    g.add_argument("--shard-images", type=int, default=64,
                   help="under torchrun: images per shard, the unit of work a rerun redoes (see inference/sharded.py)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    return p


# ------------------------------------------------------------------------------------------
# --boxes
# ------------------------------------------------------------------------------------------
def load_boxes_file(path: str) -> Dict[str, Tuple[list, np.ndarray]]:
    """``{key: (boxes as given, float64 (M, 4))}``; raises UsageError naming the problem."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            d = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"--boxes {path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"--boxes {path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise UsageError(f"--boxes {path}: expected a JSON object mapping image names to lists of [x, y, w, h]")
    out = {}
    for k, v in d.items():
        if not isinstance(v, list) or not all(
            isinstance(b, list) and len(b) == 4 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in b)
            for b in v
        ):
            raise UsageError(f"--boxes {path}: entry {k!r} must be a list of [x, y, w, h] number lists")
        try:
            arr = as_given_boxes(v)
        except ValueError as e:
            raise UsageError(f"--boxes {path}: entry {k!r}: {e}") from None
        out[k] = (v, arr)
    return out


class BoxesLookup:
    """Matches --boxes keys to inputs: the path as given, its absolute path, the unique ``name``
    or the file's base name (``img_name``; an error when several inputs share it)."""

    def __init__(self, boxes: Dict[str, Tuple[list, np.ndarray]], items: Sequence[InputItem]) -> None:
        self.boxes = boxes
        self.used: set = set()
        by_base: Dict[str, List[str]] = {}
        for it in items:
            if it.path is not None:
                by_base.setdefault(it.img_name, []).append(it.path)
        self._abs = {os.path.abspath(k): k for k in boxes}
        for k in boxes:
            if k in by_base and len(by_base[k]) > 1 and os.path.abspath(k) not in {os.path.abspath(p) for p in by_base[k]}:
                raise UsageError(
                    f"--boxes key {k!r} matches several inputs ({', '.join(by_base[k][:4])}); use their paths as keys"
                )

    def get(self, item: InputItem) -> Optional[np.ndarray]:
        cands = []
        if item.path is not None:
            cands += [item.path, os.path.normpath(item.path)]
            a = self._abs.get(os.path.abspath(item.path))
            if a is not None:
                cands.append(a)
        cands += [item.name, item.img_name]
        for k in cands:
            if k in self.boxes:
                self.used.add(k)
                return self.boxes[k][1]
        return None

    def unused(self) -> List[str]:
        return [k for k in self.boxes if k not in self.used]


# ------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------
class _Outputs:
    """Everything written per image: results record, overlay, features, viewer entry."""

    def __init__(self, args, writer: ResultsWriter) -> None:
        self.args = args
        self.out_dir = args.output
        self.writer = writer
        self.vis = not args.no_vis
        self.viewer_entries: List[Dict[str, Any]] = []
        self.window = None
        if self.vis:
            os.makedirs(os.path.join(self.out_dir, "vis"), exist_ok=True)
        if args.extract_features:
            os.makedirs(os.path.join(self.out_dir, "features"), exist_ok=True)
        self.attention_maps = bool(getattr(args, "attention_maps", False))
        if self.attention_maps:
            os.makedirs(os.path.join(self.out_dir, "attention"), exist_ok=True)

    def add(self, item: InputItem, image: np.ndarray, pred: Prediction) -> None:
        from .features import save_features
        from .viewer import browser_can_show, relative_url, viewer_entry
        from .visualize import draw_dense_captions, write_jpeg

        extra: Dict[str, Any] = {}
        if item.source is not None:
            extra = {"source": item.source, "frame_index": item.frame_index}
        rec = prediction_record(
            pred,
            img_name=item.img_name,
            name=item.name,
            file_name=item.path,
            image_id=image_id_from_name(item.path) if item.path else None,
            extra=extra,
        )
        if self.args.extract_features:
            save_features(os.path.join(self.out_dir, "features", item.name + ".npz"), pred, item.img_name)
        att = pred.extra.get("image_caption_attention")
        if self.attention_maps and att is not None and pred.image_caption is not None:
            from .attention_maps import save_attention_figure

            save_attention_figure(os.path.join(self.out_dir, "attention", item.name + ".png"), image,
                                  pred.image_caption.split(), att, caption=pred.image_caption,
                                  cell=pred.extra.get("image_caption_attention_cell"))
        if self.vis or self.window:
            canvas = draw_dense_captions(image, pred.boxes, pred.captions, topk=self.args.topk, image_caption=pred.image_caption)
            if self.vis:
                write_jpeg(os.path.join(self.out_dir, "vis", item.name + ".jpg"), canvas)
            if self.window:
                self.window.show(canvas)
        if self.vis:
            if item.path is not None and browser_can_show(item.path):
                src = relative_url(item.path, self.out_dir)
            else:  # frames and formats browsers cannot show: a clean copy
                copy = os.path.join(self.out_dir, "images", item.name + ".jpg")
                os.makedirs(os.path.dirname(copy), exist_ok=True)
                write_jpeg(copy, image, quality=92)
                src = relative_url(copy, self.out_dir)
            self.viewer_entries.append(viewer_entry(rec, src))
        self.writer.add(rec)  # last: an image whose outputs failed is an error, not a result

    def finish(self) -> None:
        self.writer.write()
        if self.vis:
            from .viewer import write_viewer

            title = f"Dense captions: {os.path.basename(os.path.abspath(self.out_dir))}"
            write_viewer(os.path.join(self.out_dir, "index.html"), self.viewer_entries, topk=self.args.topk,
                         title=title, errors=self.writer.errors)


class _LiveWindow:
    """An OpenCV window for the webcam; ``closed`` turns True on q/Esc or when the window is closed."""

    NAME = "densecap (q to quit)"

    def __init__(self) -> None:
        import cv2

        cv2.namedWindow(self.NAME, cv2.WINDOW_NORMAL)
        self.closed = False

    def show(self, canvas_rgb: np.ndarray) -> None:
        import cv2

        cv2.imshow(self.NAME, canvas_rgb[:, :, ::-1])
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27):
            self.closed = True

    def close(self) -> None:
        import cv2

        cv2.destroyWindow(self.NAME)


def _items(image_items: List[InputItem], videos: List[Tuple[str, str]], args, report) -> Iterator[InputItem]:
    yield from image_items
    for p, n in videos:
        try:
            for idx, frame in iter_video_frames(p, args.video_stride, args.max_frames):
                yield InputItem(name=video_frame_name(n, idx), img_name=f"{os.path.basename(p)}#{idx}",
                                image=frame, source=p, frame_index=idx)
        except VideoOpenError as e:
            report(p, str(e).split(": ", 1)[-1])
    if args.webcam is not None:
        src = f"webcam:{args.webcam}"
        try:
            for idx, frame in iter_video_frames(args.webcam, args.video_stride, args.max_frames):
                yield InputItem(name=video_frame_name(f"webcam{args.webcam}", idx), img_name=f"{src}#{idx}",
                                image=frame, source=src, frame_index=idx)
        except VideoOpenError as e:
            report(src, str(e).split(": ", 1)[-1])


def _batches(items: Iterator[InputItem], batch_size: int) -> Iterator[List[InputItem]]:
    batch: List[InputItem] = []
    for it in items:
        batch.append(it)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _options_summary(args, predictor: DenseCapPredictor) -> Dict[str, Any]:
    opt: Dict[str, Any] = {
        "weights": args.weights,
        "config_file": args.config_file or None,
        "input": list(args.input),
        "webcam": args.webcam,
        "recursive": bool(args.recursive),
        "video_stride": args.video_stride,
        "max_frames": args.max_frames,
        "boxes": args.boxes or None,
        "topk": args.topk,
        "batch_size": args.batch_size,
        "extract_features": bool(args.extract_features),
        "image_caption": bool(args.image_caption),
        "num_captions": args.num_captions,
        "attention_maps": bool(args.attention_maps),
        "device": str(predictor.device),
        "image_size": predictor.image_size,
        "score_thresh": predictor.score_thresh,
        "overrides": list(args.opts or []),
        "box_format": "xywh, original-image pixels (EXIF orientation applied)",
    }
    read_opts = dict(getattr(predictor.model, "image_read_options", {}) or {})
    if not read_opts.get("exif_transpose", True):  # the original-compatible model reads pixels as stored
        opt["box_format"] = "xywh, original-image pixels as stored (no EXIF rotation, as the original)"
    if not getattr(predictor.model, "clip_boxes_to_image", True):
        opt["box_format"] += ", not clipped to the image (as the original)"
    cfg = predictor.cfg
    if cfg is not None:
        opt.update(
            rpn_nms=float(cfg.MODEL.RPN.NMS_THRESH),
            final_nms=float(cfg.MODEL.ROI.NMS_THRESH_TEST),
            num_proposals=int(cfg.MODEL.RPN.POST_NMS_TOPK_TEST),
            beam_size=int(cfg.TEST.BEAM_SIZE),
            detections_per_image=int(cfg.TEST.DETECTIONS_PER_IMAGE),
            backbone=str(cfg.MODEL.BACKBONE.NAME),
        )
    return opt


def build_predictor(args) -> DenseCapPredictor:
    try:
        return _build_predictor(args)
    except ImageCaptionUnavailable as e:
        raise UsageError(str(e)) from None
    except (FileNotFoundError, RuntimeError, ValueError, KeyError) as e:
        logger.debug("building the predictor failed", exc_info=True)
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise UsageError(f"cannot load the model: {msg}") from None


def _build_predictor(args) -> DenseCapPredictor:
    opts = list(args.opts or [])
    if args.num_captions is not None:  # top-N whole-image captions (the beam widens to N if needed)
        opts += ["MODEL.IMAGE_CAPTION.NUM_CAPTIONS", int(args.num_captions)]
    if getattr(args, "quantize", None):
        opts += ["TEST.QUANTIZE", args.quantize]
    if getattr(args, "precision", None):
        opts += ["TEST.PRECISION", args.precision]
    return DenseCapPredictor.from_checkpoint(
        args.weights,
        config_file=args.config_file or None,
        opts=opts,
        image_caption=args.image_caption,
        batch_size=args.batch_size,
        caption_weights=args.caption_weights or None,
        **options_from_args(args),  # --image-size, --rpn-nms, --final-nms, --num-proposals, --beam-size, ...
    )


_CFG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def split_trailing_overrides(args) -> None:
    """``--input a.jpg b.jpg TEST.BEAM_SIZE 3``: argparse gives the KEY VALUE pairs to --input;
    move everything from the first config-key-looking argument that is not a file to ``opts``."""
    for i, p in enumerate(args.input):
        if _CFG_KEY.match(p) and not os.path.exists(p):
            args.opts = list(args.input[i:]) + list(args.opts or [])
            args.input = list(args.input[:i])
            return


def check_args(args) -> None:
    split_trailing_overrides(args)
    if not args.input and args.webcam is None:
        raise UsageError("nothing to do: give --input PATH [PATH ...] and/or --webcam INDEX")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.video_stride < 1:
        raise UsageError(f"--video-stride must be >= 1, got {args.video_stride}")
    if args.max_frames < 0:
        raise UsageError(f"--max-frames must be >= 0, got {args.max_frames}")
    if args.opts and len(args.opts) % 2:
        raise UsageError(f"config overrides must be KEY VALUE pairs, got {args.opts}")
    if args.num_captions is not None and args.num_captions < 1:
        raise UsageError(f"--num-captions must be >= 1, got {args.num_captions}")
    if (args.num_captions is not None or args.attention_maps) and not args.image_caption:
        raise UsageError("--num-captions and --attention-maps need --image-caption")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise UsageError(f"--output {args.output} exists and is not a folder")


def run(args, predictor: Optional[DenseCapPredictor] = None) -> Dict[str, Any]:
    """Run inference as the command line describes; returns the summary figures."""
    from densecap.utils.comm import env_world_size

    if env_world_size() > 1:  # under torchrun: this rank's shards, then a merge (see sharded.py)
        from .sharded import run_sharded

        return run_sharded(args, predictor)
    check_args(args)
    boxes = load_boxes_file(args.boxes) if args.boxes else None
    inputs = collect_inputs(args.input, recursive=args.recursive)
    if predictor is None:
        predictor = build_predictor(args)
    else:
        if args.image_caption and not predictor.image_caption:
            raise ImageCaptionUnavailable("--image-caption: the predictor was built without it")
        predictor.batch_size = args.batch_size
    os.makedirs(args.output, exist_ok=True)
    writer = ResultsWriter(os.path.join(args.output, "results.json"), _options_summary(args, predictor))
    outputs = _Outputs(args, writer)

    from tqdm import tqdm

    bar = None

    def report(path: str, reason: str) -> None:
        writer.add_error(path, reason)
        msg = f"error: {path}: {reason}"
        if bar is not None:
            bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr)

    for path, reason in inputs.errors:
        report(path, reason)
    names = unique_names(inputs.images + inputs.videos)
    image_items = [InputItem(name=n, img_name=os.path.basename(p), path=p) for p, n in zip(inputs.images, names)]
    videos = list(zip(inputs.videos, names[len(inputs.images):]))
    lookup = BoxesLookup(boxes, image_items) if boxes is not None else None

    total: Optional[int] = len(inputs.images)
    for v in inputs.videos:
        n = video_frame_count(v, args.video_stride)
        total = None if (n is None or total is None) else total + (min(n, args.max_frames) if args.max_frames else n)
    if args.webcam is not None:
        total = None
        if has_display():
            try:
                outputs.window = _LiveWindow()
            except Exception as e:  # noqa: BLE001 - OpenCV built without GUI support
                logger.warning("cannot open a window (%s); running without a live view", e)
        else:
            logger.info("no display: webcam runs without a live window; stop it with Ctrl-C%s",
                        "" if args.max_frames else " or set --max-frames")

    done, interrupted = 0, False
    t0 = time.perf_counter()
    last_save = t0
    bar = tqdm(total=total, unit="img", desc="infer", file=sys.stderr, dynamic_ncols=True,
               disable=args.no_progress, mininterval=0.5)
    from .pipeline import OrderedSink, prefetch

    workers = max(0, int(getattr(args, "workers", 0) or 0))
    counts = {"done": 0}

    def write_one(it, img, pred) -> None:  # in the writer thread when workers > 0 (no live window)
        try:
            outputs.add(it, img, pred)
            counts["done"] += 1
        except (OSError, ValueError) as e:  # e.g. disk full for one overlay: report, keep going
            report(it.display_path, f"cannot write outputs ({e})")
        bar.update(1)

    def save_now() -> None:
        writer.write()

    sink = OrderedSink(enabled=workers > 0 and outputs.window is None, depth=2 * max(1, args.batch_size) + 2)
    try:
        stream = _items(image_items, videos, args, lambda p, r: sink.submit(p, report, p, r))
        for batch in _batches(prefetch(stream, workers, depth=2 * args.batch_size + workers, read=predictor.read), args.batch_size):
            imgs, items, given = [], [], []
            for it, img in batch:
                if isinstance(img, ImageReadError):
                    sink.submit(it, report, it.path, img.reason)
                    sink.submit(it, bar.update, 1)
                    continue
                imgs.append(img)
                items.append(it)
                given.append(lookup.get(it) if lookup is not None else None)
            preds = _predict_isolating_failures(predictor, imgs, items, given,
                                                lambda path, reason: sink.submit(path, report, path, reason))
            for it, img, pred in zip(items, imgs, preds):
                if pred is not None:
                    sink.submit(it, write_one, it, img, pred)
                else:
                    sink.submit(it, bar.update, 1)
            if outputs.window is not None and outputs.window.closed:
                break
            if time.perf_counter() - last_save > 60:  # long runs: results so far are on disk
                sink.submit(None, save_now)
                last_save = time.perf_counter()
    except KeyboardInterrupt:
        interrupted = True
        bar.write("interrupted: writing the results so far", file=sys.stderr)
    finally:
        sink.close()
        done = counts["done"]
        bar.close()
        if outputs.window is not None:
            outputs.window.close()
    if lookup is not None:
        unused = lookup.unused()
        if unused:
            logger.warning("--boxes: %d key(s) matched no input: %s", len(unused), ", ".join(unused[:5]))
    outputs.finish()
    elapsed = time.perf_counter() - t0
    n_errors = len(writer.errors)
    spi = elapsed / done if done else float("nan")
    summary = {
        "images": done,
        "failed": n_errors,
        "seconds": elapsed,
        "seconds_per_image": spi,
        "interrupted": interrupted,
        "output": args.output,
    }
    print(
        f"done: {done} image{'s' if done != 1 else ''} captioned, {n_errors} failed, "
        f"{spi:.3f} s/image ({elapsed:.1f} s){' (interrupted)' if interrupted else ''} -> "
        f"{os.path.join(args.output, 'results.json')}",
        flush=True,
    )
    return summary


def _predict_isolating_failures(predictor, imgs, items, given, report) -> List[Optional[Prediction]]:
    """Predict a batch; if that fails, each image alone, so a bad image only costs itself."""
    if not imgs:
        return []
    try:
        return predictor.predict(imgs, given, file_names=[it.path or "" for it in items])
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - reported per image, the run goes on
        if len(imgs) > 1:
            return [_predict_isolating_failures(predictor, [i], [t], [g], report)[0] for i, t, g in zip(imgs, items, given)]
        logger.debug("prediction failed for %s", items[0].display_path, exc_info=True)
        report(items[0].display_path, f"prediction failed ({type(e).__name__}: {e})")
        return [None]


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    args = build_parser().parse_args(argv)
    try:
        summary = run(args)
    except (UsageError, ImageCaptionUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    had_inputs = summary["images"] + summary["failed"] > 0
    return 1 if had_inputs and summary["images"] == 0 else 0

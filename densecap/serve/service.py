"""What the HTTP layer serves, without HTTP: the model (loaded once), the batcher, the retrieval
index and its image folder, and the checks of what clients send.

Boxes are ``[x, y, w, h]`` in original-image pixels (the image as displayed, EXIF applied) in and
out. A caption result is one entry of ``tools/infer.py``'s ``results.json``
(:func:`densecap.inference.results.prediction_record`).
"""
from __future__ import annotations

import json
import logging
import os
import posixpath
from urllib.parse import quote
from dataclasses import replace
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from densecap.data.image_io import ImageReadError, decode_image
from densecap.inference.predictor import DenseCapPredictor, Prediction, as_given_boxes, model_has_image_caption
from densecap.inference.results import image_id_from_name, prediction_record

from .batching import DynamicBatcher
from .metrics import Metrics

logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 40_000_000  # a 40-megapixel photo is fine, a 20k x 20k bomb is not
MAX_GIVEN_BOXES = 1000


class BadRequest(ValueError):
    """What a client sent cannot be served; ``status`` is the HTTP status, the message says why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = int(status)


# ------------------------------------------------------------------------------------------
# checks of client input
# ------------------------------------------------------------------------------------------
def parse_boxes(text: str, width: int, height: int) -> np.ndarray:
    """The ``boxes`` form field: a JSON list of ``[x, y, w, h]`` inside a ``width`` x ``height``
    image -> float64 (M, 4). Raises :class:`BadRequest` (422 malformed, 400 outside the image)."""
    try:
        boxes = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise BadRequest(f"boxes: not valid JSON ({e})", 422) from None
    if not isinstance(boxes, list) or not all(
        isinstance(b, list) and len(b) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b)
        for b in boxes
    ):
        raise BadRequest("boxes: expected a JSON list of [x, y, w, h] number lists, e.g. [[10, 20, 50, 40]]", 422)
    if not boxes:
        raise BadRequest("boxes: the list is empty; give at least one [x, y, w, h] or leave the field out", 422)
    if len(boxes) > MAX_GIVEN_BOXES:
        raise BadRequest(f"boxes: {len(boxes)} boxes, at most {MAX_GIVEN_BOXES} per request", 422)
    try:
        arr = as_given_boxes(boxes)
    except ValueError as e:
        raise BadRequest(f"boxes: {e}", 422) from None
    for i, (x, y, w, h) in enumerate(arr.tolist()):
        if x < 0 or y < 0 or x + w > width or y + h > height:
            raise BadRequest(
                f"boxes: box {i} [{x:g}, {y:g}, {w:g}, {h:g}] is not inside the {width} x {height} image "
                "(boxes are [x, y, w, h] in original-image pixels)", 400)
    return arr


def select_regions(pred: Prediction, *, max_regions: Optional[int], min_score: Optional[float],
                   image_caption: bool) -> Prediction:
    """The regions a request asked for: proposed regions scoring >= ``min_score``, the best
    ``max_regions`` of them (0 or None = all); given boxes are all kept, in order. Without
    ``image_caption`` the whole-image caption is left out."""
    keep = np.arange(len(pred.captions))
    if not pred.given_boxes:
        if min_score is not None:
            keep = keep[np.asarray(pred.scores)[keep] >= float(min_score)]
        if max_regions:
            keep = keep[: int(max_regions)]  # boxes come best first
    out = replace(
        pred,
        boxes=np.asarray(pred.boxes)[keep].reshape(-1, 4),
        scores=np.asarray(pred.scores)[keep],
        captions=[pred.captions[i] for i in keep],
        caption_logprobs=np.asarray(pred.caption_logprobs)[keep],
        caption_tokens=None if pred.caption_tokens is None else pred.caption_tokens[keep],
        region_codes=None if pred.region_codes is None else pred.region_codes[keep],
    )
    if not image_caption:
        out = replace(out, image_caption=None, image_caption_logprob=None, image_captions=None)
    return out


def upload_names(filename: Optional[str]) -> Dict[str, Any]:
    """results.json naming of an upload: ``img_name`` its base name, ``name`` the stem."""
    base = os.path.basename((filename or "").replace("\\", "/")) or "upload"
    stem = os.path.splitext(base)[0] or "upload"
    return {"img_name": base, "name": stem, "image_id": image_id_from_name(base)}


# ------------------------------------------------------------------------------------------
# the service
# ------------------------------------------------------------------------------------------
class DenseCapService:
    """One model, one batcher, optionally one region index.

    ``predictor``: a :class:`DenseCapPredictor` (captions). ``retrieval``: a
    :class:`densecap.retrieval.search.RetrievalModel` for the ``index`` (a
    :class:`densecap.retrieval.index.RegionIndex`); normally built on the same model.
    ``images_root``: the folder whose files ``/v1/images/{name}`` serves (default: the deepest
    folder holding every indexed image); only indexed images inside it are served.
    """

    def __init__(
        self,
        predictor: DenseCapPredictor,
        *,
        retrieval=None,
        index=None,
        images_root: Optional[str] = None,
        max_batch: int = 8,
        max_wait_ms: float = 10.0,
        max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
        candidates: int = 1000,
        weights: str = "",
        metrics: Optional[Metrics] = None,
    ) -> None:
        if (index is None) != (retrieval is None):
            raise ValueError("give both an index and its retrieval model, or neither")
        self.predictor = predictor
        self.has_image_caption = bool(predictor.image_caption)
        self.retrieval = retrieval
        self.index = index
        self.max_pixels = int(max_pixels) if max_pixels else None
        self.candidates = int(candidates)
        self.weights = weights
        self.metrics = metrics or Metrics()
        self.batcher = DynamicBatcher(predictor, max_batch=max_batch, max_wait_ms=max_wait_ms,
                                      on_batch=self.metrics.on_batch, on_queue=self.metrics.on_queue)
        self.images_root: Optional[str] = None
        self._images: Dict[str, str] = {}  # name relative to images_root (posix) -> real path
        if index is not None:
            retrieval.check_index(index)  # a clear error at startup when the model is not the index's
            self._set_images(images_root)

    # ---- loading ---------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        weights: str,
        *,
        index_dir: Optional[str] = None,
        config_file: Optional[str] = None,
        opts: Sequence[Any] = (),
        device: Optional[str] = None,
        image_size: Optional[int] = None,
        **kw: Any,
    ) -> "DenseCapService":
        """Load the checkpoint once; with ``index_dir``, the region index and the retrieval view of
        the same model (its joint embedding head attached when the checkpoint has one)."""
        options: Dict[str, Any] = {}
        if device is not None:
            options["device"] = device
        if image_size is not None:
            options["image_size"] = image_size
        retrieval = index = None
        if index_dir:
            from densecap.retrieval.index import RegionIndex
            from densecap.retrieval.search import RetrievalModel

            index = RegionIndex.open(index_dir)
            index.check_checkpoint(weights)
            retrieval = RetrievalModel.from_checkpoint(weights, config_file=config_file, opts=list(opts),
                                                       known=index.checkpoint, **options)
            predictor = retrieval.predictor
        else:
            predictor = DenseCapPredictor.from_checkpoint(weights, config_file=config_file, opts=list(opts), **options)
        # the whole-image caption is computed whenever the model has the head; requests choose to see it
        predictor.image_caption = model_has_image_caption(predictor.model)
        return cls(predictor, retrieval=retrieval, index=index, weights=weights, **kw)

    def close(self) -> None:
        self.batcher.close()

    # ---- captions --------------------------------------------------------------------------
    def decode(self, data: bytes, filename: Optional[str]) -> np.ndarray:
        """Upload bytes -> RGB uint8 (H, W, 3); :class:`BadRequest` 400 naming the problem."""
        name = upload_names(filename)["img_name"]
        try:
            return decode_image(data, name, max_pixels=self.max_pixels)
        except ImageReadError as e:
            raise BadRequest(f"image {e.path!r}: {e.reason}", 400) from None

    def check_options(self, *, image_caption: bool) -> None:
        if image_caption and not self.has_image_caption:
            raise BadRequest("image_caption: this model has no whole-image caption head "
                             "(serve a checkpoint trained with one, or leave the field out)", 400)

    def record(self, pred: Prediction, filename: Optional[str], *, max_regions: Optional[int] = None,
               min_score: Optional[float] = None, image_caption: bool = False) -> Dict[str, Any]:
        """The results.json entry for a prediction, with the request's selection applied."""
        pred = select_regions(pred, max_regions=max_regions, min_score=min_score, image_caption=image_caption)
        n = upload_names(filename)
        return prediction_record(pred, img_name=n["img_name"], name=n["name"], file_name=None, image_id=n["image_id"])

    # ---- search ----------------------------------------------------------------------------
    def search(self, query: str, *, topk: int = 10, mode: str = "exact") -> Dict[str, Any]:
        """Text search over the index; hits name images relative to :attr:`images_root`."""
        from densecap.retrieval.search import NoEmbeddingError, search_text

        if self.index is None:
            raise BadRequest("no retrieval index is loaded (start the server with --index INDEX_DIR)", 404)
        try:
            res = search_text(self.index, self.retrieval, query, topk=topk, mode=mode, candidates=self.candidates)
        except NoEmbeddingError as e:
            raise BadRequest(f"mode {mode!r}: {e}", 400) from None
        except ValueError as e:  # a query with no words
            raise BadRequest(str(e), 400) from None
        self.metrics.searches.labels(mode).inc()
        hits = []
        for h in res.hits:
            name = self.image_name(h["image"])
            hits.append({
                "rank": h["rank"], "image": name, "image_url": None if name is None else "/v1/images/" + quote(name),
                "box": h["box"], "score": h["score"], "caption": h["caption"],
                "width": h["width"], "height": h["height"],
                **({"similarity": h["similarity"]} if "similarity" in h else {}),
                **{part: {"box": h[part]["box"], "caption": h[part]["caption"]} for part in ("subject", "object") if part in h},
            })
        return {"query": res.query, "mode": res.mode, "tokens": res.tokens, "oov": res.oov,
                "num_regions": res.num_regions, "topk": int(topk), "hits": hits,
                "seconds": round(float(res.seconds.get("total", 0.0)), 6)}

    # ---- indexed images --------------------------------------------------------------------
    def _set_images(self, images_root: Optional[str]) -> None:
        paths = [im["path"] for _, im in self.index.images()]
        if images_root is None:
            dirs = [os.path.dirname(os.path.abspath(p)) for p in paths]
            images_root = os.path.commonpath(dirs) if dirs else None
        if images_root is None:
            return
        root = os.path.realpath(images_root)
        self.images_root = root
        for p in paths:
            real = os.path.realpath(p)
            if _inside(real, root):
                self._images[posixpath.join(*os.path.relpath(real, root).split(os.sep))] = real
            else:
                logger.warning("indexed image %s is outside the image folder %s: not served", p, root)

    def image_name(self, path: str) -> Optional[str]:
        """The name ``/v1/images/{name}`` serves an indexed image's file under (None: not served)."""
        if self.images_root is None:
            return None
        real = os.path.realpath(path)
        if not _inside(real, self.images_root):
            return None
        name = posixpath.join(*os.path.relpath(real, self.images_root).split(os.sep))
        return name if name in self._images else None

    def image_file(self, name: str) -> str:
        """The file of an indexed image by name; :class:`BadRequest` 404 unless it is an indexed
        image inside the image folder, checked on the resolved path (``..``, absolute names and
        symbolic links pointing out of the folder are refused)."""
        if self.images_root is None:
            raise BadRequest("no retrieval index is loaded: there are no images to serve", 404)
        if not name or "\x00" in name or os.path.isabs(name) or name.startswith(("/", "\\")):
            raise BadRequest(f"no indexed image named {name!r}", 404)
        real = os.path.realpath(os.path.join(self.images_root, name))
        if not _inside(real, self.images_root):
            raise BadRequest(f"{name!r} is outside the image folder", 403)
        rel = posixpath.join(*os.path.relpath(real, self.images_root).split(os.sep))
        if self._images.get(rel) != real or not os.path.isfile(real):
            raise BadRequest(f"no indexed image named {name!r}", 404)
        return real

    # ---- status ----------------------------------------------------------------------------
    def health(self) -> Dict[str, Any]:
        return {
            "status": "ok",
            "model": os.path.basename(self.weights) if self.weights else type(self.predictor.model).__name__,
            "image_caption": self.has_image_caption,
            "image_size": self.predictor.image_size,
            "index": self.index is not None,
            "num_images": 0 if self.index is None else self.index.num_images,
            "num_regions": 0 if self.index is None else self.index.num_regions,
            "fast_search": bool(self.index is not None and self.index.has_embeddings
                                and self.retrieval.embedding_head is not None),
            "queue_depth": self.batcher.queue_depth,
            "busy": self.batcher.busy,
            "max_batch": self.batcher.max_batch,
        }


def _inside(real: str, root: str) -> bool:
    try:
        return os.path.commonpath([real, root]) == root
    except ValueError:
        return False


__all__: List[str] = ["DenseCapService", "BadRequest", "parse_boxes", "select_regions", "DEFAULT_MAX_PIXELS"]

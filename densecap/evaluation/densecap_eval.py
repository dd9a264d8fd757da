"""The DenseCap mAP, reproduced exactly from the original Lua release (eval/eval_utils.lua).

Shapes: R ground-truth regions of an image, G merged GT boxes, N predictions of an image,
K records (one per prediction) over all images.

Boxes are ``[x, y, w, h]`` in ORIGINAL-image pixels at every interface of this module; IoU is the
continuous IoU (the Lua code's "+1 pixel" convention is the same thing for its centre-size boxes).

Protocol (as in ``eval/eval_utils.lua`` of the original release):

1. Per image, GT boxes are merged (:func:`merge_gt_boxes`): repeatedly take the first box that
   overlaps (IoU >= 0.7) the most remaining boxes, group it with exactly those boxes (not
   transitive), replace the group by the mean of its corners and keep all its captions as
   references.
2. Per image, predictions are matched in descending score order (:func:`match_predictions`): each
   takes its best merged GT (highest IoU > 0; first on ties); it is ``ok`` if that GT was not
   taken yet, and takes it. *Quirk* (``unmatched_quirk=True``, the default, as the original): a
   prediction overlapping no GT indexes ``used[-1]``, which Lua resolves to the LAST merged GT,
   so it silently "takes" that GT and a later prediction matching it is a duplicate. Turn it off
   with ``unmatched_quirk=False`` (``--no-unmatched-quirk``, ``TEST.UNMATCHED_QUIRK``).
3. Every record gets one sentence-level METEOR 1.5 score against the references of its GT
   (0 without references). Records that cannot be a true positive at any threshold
   (not ``ok``, or IoU < 0.3) do not change any AP, so they are not sent to METEOR unless
   ``score_all_records=True``; the APs are identical either way.
4. All records of all images form ONE ranking by score. For IoU threshold ``t_iou`` in
   (0.3 .. 0.7) and METEOR threshold ``t_m`` in (-1, 0, 0.05 .. 0.25):
   ``tp = ok and iou >= t_iou and meteor > t_m`` (inclusive IoU, strict METEOR);
   precision/recall over the ranking with ``npos`` = number of merged GT boxes;
   AP = mean over the 100 recall points 0.00, 0.01 .. 0.99 of the max precision at recall >= t
   (0 if never reached). By default (``lua_tensor_type="float"``) recall and precision are
   float32 and the thresholds the Lua loop's accumulated doubles rounded to float32, as under
   ``train.lua``'s ``torch.setdefaulttensortype('torch.FloatTensor')`` (a recall of exactly k/100
   reaches the point k/100); ``"double"`` is ``evaluate_model.lua``'s DoubleTensor run (float64
   throughout; 83 of the accumulated thresholds lie just above k/100, e.g. 0.060000000000000005
   and 0.5000000000000002, which a recall of exactly 6/100 or 1/2 misses).
5. ``map`` = mean of the 30 APs with ``t_m >= 0``; ``detmap`` = mean of the 5 APs with
   ``t_m = -1`` (pure detection). Both and every AP are reported x100.

Defined behaviour for awkward inputs (never a crash deep inside):

* prediction for an image that has no GT entry: ignored (as the original, which only evaluated GT
  images); counted in ``ignored_pred_images`` / ``ignored_predictions`` and logged.
* GT image with no predictions: its merged boxes count toward ``npos`` (recall); counted in
  ``gt_images_without_predictions``.
* GT image with an empty region list (or none left after dropping junk regions): contributes
  nothing to ``npos``; its predictions are false positives (``empty_gt="fp"``, the default, as
  COCO counts them; the original could not evaluate such an image) or dropped
  (``empty_gt="ignore"``); counted in ``empty_gt_images`` / ``empty_gt_predictions``.
* empty predicted caption: METEOR 0, still a detection (counts for ``detmap``); counted in
  ``empty_captions``.
* GT region with a non-finite coordinate or a negative width/height: dropped, counted in
  ``gt_regions_dropped`` and logged (Visual Genome has a few junk regions). Zero-size GT boxes
  are kept (they can only be matched by nothing).
* prediction with a non-finite box or score, or a negative width/height: ``ValueError`` naming
  the image and the prediction (usually a box-format mix-up; a NaN score makes the ranking
  undefined). Mismatched lengths of boxes/scores/captions: ``ValueError`` naming the image.
* no GT box at all (``npos == 0``): every AP is 0, with a warning.

Ties: predictions with equal scores are ranked in the order Torch7's ``torch.sort(x, 1, true)``
returns them (an unstable quicksort, :mod:`densecap.utils.torch7_sort`), within an image
(the matching order) and in the global ranking, as the original; ``stable_sort=True`` keeps
input order instead. Without ties both are the same.

GT boxes: used as given (continuous original pixels). ``lua_gt_boxes=True`` reproduces the
original pipeline's integer boxes in the 720-pixel frame (:func:`lua_round_gt_boxes`), which needs
each image's size.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from densecap.structures.boxes import iou_xyxy_np, xywh_to_xyxy

from .evaluator import DatasetEvaluator
from densecap.utils.torch7_sort import argsort_descending

logger = logging.getLogger(__name__)

IOU_THRESHOLDS: Tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
METEOR_THRESHOLDS: Tuple[float, ...] = (-1.0, 0.0, 0.05, 0.1, 0.15, 0.2, 0.25)
MERGE_THRESHOLD = 0.7

# A scorer maps [(candidate, references), ...] to one sentence score per pair.
Scorer = Callable[[Sequence[Tuple[str, Sequence[str]]]], Sequence[float]]


LUA_TENSOR_TYPES: Tuple[str, ...] = ("float", "double")
EMPTY_GT_POLICIES: Tuple[str, ...] = ("fp", "ignore")
LUA_IMAGE_SIZE = 720  # the original preprocess.py's --image_size


def _lua_recall_points_double() -> np.ndarray:
    """The original's ``for t=0,1,0.01``: a Lua number (double) accumulated step by step (100
    values; the 101st would be 1.0000000000000007 > 1). 83 of them lie just above k/100 (k = 6
    and 18..99, e.g. 0.060000000000000005, 0.5000000000000002), so a recall of exactly k/100
    compared in double misses the point k/100."""
    pts, t = [], 0.0
    while t <= 1:
        pts.append(t)
        t += 0.01
    return np.asarray(pts, dtype=np.float64)


def _lua_recall_points() -> np.ndarray:
    """The same thresholds as a FloatTensor run compares them: ``torch.ge(rec, t)`` on a
    FloatTensor converts ``t`` to float, so each accumulated double is rounded to float32 (and
    lands on float32(k/100) for every k)."""
    return _lua_recall_points_double().astype(np.float32)


RECALL_POINTS = _lua_recall_points()  # (100,) float32: 0.00 .. 0.99
RECALL_POINTS_DOUBLE = _lua_recall_points_double()  # (100,) float64, as accumulated
assert RECALL_POINTS.shape == RECALL_POINTS_DOUBLE.shape == (100,)


def _check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def ap_key(iou_threshold: float, meteor_threshold: float) -> str:
    """Name of one AP in the output: ``iou0.3_meteor-1``, ``iou0.5_meteor0.05``, ..."""
    return f"iou{iou_threshold:g}_meteor{meteor_threshold:g}"


# ------------------------------------------------------------------------------------------
# input validation
# ------------------------------------------------------------------------------------------
def _to_numpy(x: Any, dtype=np.float64) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _as_caption(c: Any) -> str:
    if c is None:
        return ""
    if isinstance(c, (list, tuple)):
        return " ".join(str(t) for t in c)
    return str(c)


def _boxes(image_id: Hashable, boxes: Any, what: str) -> np.ndarray:
    try:
        b = _to_numpy(boxes if boxes is not None else [], np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} for image {image_id!r}: boxes are not numeric ({e})") from None
    if b.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{what} for image {image_id!r}: boxes must have shape (N, 4) [x, y, w, h], got {b.shape}")
    return b


def validate_gt(image_id: Hashable, gt: Mapping) -> Tuple[np.ndarray, List[str], int]:
    """GT of one image -> (boxes xywh (R,4) float64, captions, number of regions dropped).

    Regions with a non-finite coordinate or a negative width/height are dropped."""
    boxes = _boxes(image_id, gt.get("boxes"), "ground truth")
    caps = [_as_caption(c) for c in (gt.get("captions") or [])]
    if len(caps) != len(boxes):
        raise ValueError(
            f"ground truth for image {image_id!r}: {len(boxes)} boxes but {len(caps)} captions"
        )
    bad = ~np.isfinite(boxes).all(axis=1) | (boxes[:, 2] < 0) | (boxes[:, 3] < 0)
    n_bad = int(bad.sum())
    if n_bad:
        keep = np.nonzero(~bad)[0]
        boxes = boxes[keep]
        caps = [caps[i] for i in keep]
    return boxes, caps, n_bad


def validate_predictions(image_id: Hashable, pred: Mapping) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Predictions of one image -> (boxes xywh (N,4) float64, scores (N,) float64, captions).

    Raises ``ValueError`` naming the image for anything that would make the result meaningless."""
    boxes = _boxes(image_id, pred.get("boxes"), "predictions")
    if "scores" not in pred or pred.get("scores") is None:
        raise ValueError(f"predictions for image {image_id!r}: no 'scores'")
    try:
        scores = _to_numpy(pred["scores"], np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise ValueError(f"predictions for image {image_id!r}: scores are not numeric ({e})") from None
    caps_in = pred.get("captions")
    if caps_in is None:
        raise ValueError(f"predictions for image {image_id!r}: no 'captions'")
    caps = [_as_caption(c) for c in caps_in]
    if not (len(boxes) == len(scores) == len(caps)):
        raise ValueError(
            f"predictions for image {image_id!r}: {len(boxes)} boxes, {len(scores)} scores and "
            f"{len(caps)} captions (must be equal)"
        )
    finite = np.isfinite(boxes).all(axis=1)
    if not finite.all():
        i = int(np.nonzero(~finite)[0][0])
        raise ValueError(
            f"predictions for image {image_id!r}: box {i} is not finite ({boxes[i].tolist()}); "
            f"{int((~finite).sum())} such boxes in this image"
        )
    if not np.isfinite(scores).all():
        i = int(np.nonzero(~np.isfinite(scores))[0][0])
        raise ValueError(f"predictions for image {image_id!r}: score {i} is not finite ({scores[i]})")
    neg = (boxes[:, 2] < 0) | (boxes[:, 3] < 0)
    if neg.any():
        i = int(np.nonzero(neg)[0][0])
        raise ValueError(
            f"predictions for image {image_id!r}: box {i} has a negative width/height "
            f"({boxes[i].tolist()}); boxes must be [x, y, w, h] in original-image pixels "
            f"(xyxy or centre-size boxes passed as xywh cause this)"
        )
    return boxes, scores, caps


# ------------------------------------------------------------------------------------------
# the protocol, one step at a time
# ------------------------------------------------------------------------------------------
def _round_half_away(v: np.ndarray) -> np.ndarray:
    """Python 2's ``round()`` (what the original ``preprocess.py`` ran under): halves away from 0."""
    a = np.abs(v)
    r = np.floor(a)
    r = r + (a - r >= 0.5)
    return np.copysign(r, v)


def lua_round_gt_boxes(
    boxes_xywh: np.ndarray, width: float, height: float, *, image_size: int = LUA_IMAGE_SIZE
) -> np.ndarray:
    """GT boxes as the original pipeline handed them to its evaluator, in the input frame.

    The original ``preprocess.py`` scaled each box to the frame whose longest side is
    ``image_size`` (``s = image_size / max(height, width)``; VG coordinates taken as 1-based):
    ``x' = round(s*(x-1)+1)``, ``w' = round(s*w)`` (Python 2 rounding), clamped to
    ``1 <= x' <= image_size-1`` and ``x'+w' <= image_size``, and stored the integers
    ``[x' + floor(w'/2), y' + floor(h'/2), w', h']`` (centre form). The evaluator received them
    as an IntTensor and ``box_utils.xcycwh_to_x1y1x2y2`` converted them with integer division:
    ``x1 = xc - (w'-1)/2``, ``x2 = xc + (w'-1)/2`` (C division, truncating), inclusive pixels,
    so an even width (or height) comes back one pixel narrower, its left (top) edge one pixel
    further in. Returned here as continuous ``[x1, y1, x2 - x1 + 1, y2 - y1 + 1]`` (the
    convention of the original's xywh output) mapped back with the inverse of the scaling,
    ``x = (x' - 1)/s + 1``, ``w = w'/s``. IoU is unchanged by that uniform map, so the APs are
    those of the original's 720-pixel evaluation.

    Args:
        boxes_xywh: (R, 4) ``[x, y, w, h]`` in original pixels of an image of
            ``width`` x ``height``.
    Returns:
        (R, 4) float64 ``[x, y, w, h]`` in the same frame.
    """
    b = np.asarray(boxes_xywh, dtype=np.float64).reshape(-1, 4)
    if not (np.isfinite(width) and np.isfinite(height) and width > 0 and height > 0):
        raise ValueError(f"image size must be positive, got width {width!r}, height {height!r}")
    s = float(image_size) / max(float(height), float(width))
    x = _round_half_away(s * (b[:, 0] - 1) + 1)
    y = _round_half_away(s * (b[:, 1] - 1) + 1)
    w = _round_half_away(s * b[:, 2])
    h = _round_half_away(s * b[:, 3])
    x, y = np.clip(x, 1, image_size - 1), np.clip(y, 1, image_size - 1)
    w = np.where(x + w > image_size, image_size - x, w)
    h = np.where(y + h > image_size, image_size - y, h)
    xc, yc = x + np.floor(w / 2), y + np.floor(h / 2)  # stored as int32
    hw, hh = np.trunc((w - 1) / 2), np.trunc((h - 1) / 2)  # IntTensor division truncates
    x1, y1 = xc - hw, yc - hh
    out = np.stack([x1, y1, 2 * hw + 1, 2 * hh + 1], axis=1)
    out[:, :2] = (out[:, :2] - 1) / s + 1
    out[:, 2:] = out[:, 2:] / s
    return out


def merge_gt_boxes(
    boxes_xyxy: np.ndarray, captions: Sequence[str], threshold: float = MERGE_THRESHOLD
) -> Tuple[np.ndarray, List[List[str]]]:
    """Merge overlapping GT boxes as the original did.

    Args:
        boxes_xyxy: (R, 4) GT boxes ``[x1, y1, x2, y2]``.
        captions: R captions.
    Returns:
        merged (G, 4) xyxy (mean of the group's corners) and, per merged box, the captions of its
        group (in index order).
    """
    boxes_xyxy = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    n = boxes_xyxy.shape[0]
    if n == 0:
        return np.zeros((0, 4), dtype=np.float64), []
    good = iou_xyxy_np(boxes_xyxy, boxes_xyxy) >= threshold  # R R
    np.fill_diagonal(good, True)  # diagonal IoU is 1 by definition (also for zero-area boxes)
    alive = np.ones(n, dtype=bool)
    counts = good.sum(axis=0).astype(np.int64)  # R: column sums over rows still alive
    merged, refs = [], []
    while True:
        j = int(np.argmax(counts))  # first argmax
        if counts[j] <= 0:
            break
        grp = np.nonzero(good[j] & alive)[0]  # only the boxes matching box j: not transitive
        # zeroing rows/cols of grp: drop their rows from the column sums, kill their columns
        counts -= good[grp].sum(axis=0)
        alive[grp] = False
        counts[grp] = 0
        merged.append(boxes_xyxy[grp].mean(axis=0))
        refs.append([captions[i] for i in grp])
    return np.stack(merged).reshape(-1, 4), refs


def match_predictions(
    pred_xyxy: np.ndarray, merged_xyxy: np.ndarray, *, unmatched_quirk: bool = True
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy matching of predictions (ALREADY in descending score order) to merged GT boxes.

    Returns ``ok`` (N,) bool, ``iou`` (N,) float64 (best IoU, 0 if none) and ``gt_index`` (N,)
    int64 (best merged GT, -1 if the prediction overlaps none)."""
    n = pred_xyxy.shape[0]
    g = merged_xyxy.shape[0]
    ok = np.zeros(n, dtype=bool)
    if n == 0 or g == 0:
        return ok, np.zeros(n, dtype=np.float64), np.full(n, -1, dtype=np.int64)
    iou = iou_xyxy_np(pred_xyxy, merged_xyxy)  # N G
    jmax = iou.argmax(axis=1).astype(np.int64)  # first max on ties
    ovmax = iou[np.arange(n), jmax]
    none = ~(ovmax > 0)
    jmax[none] = -1
    ovmax = np.where(none, 0.0, ovmax)
    used = np.zeros(g, dtype=bool)
    for d, j in enumerate(jmax.tolist()):
        if j < 0:
            if not unmatched_quirk:
                continue  # never a true positive; takes nothing
            j = g - 1  # Lua: used[-1] is the last element
        ok[d] = not used[j]
        used[j] = True
    return ok, ovmax, jmax


def average_precision(tp_sorted: np.ndarray, npos: int, *, lua_tensor_type: str = "float") -> float:
    """Max-interpolated AP over the 100 recall points, as the original (fraction, not x100).

    ``tp_sorted`` (K,) bool: true positives in ranking order; every other record is a false
    positive. ``lua_tensor_type``: the original's default tensor type. ``"float"``
    (``train.lua``, which sets FloatTensor): cumulative tp/fp, recall and precision in float32,
    thresholds rounded to float32. ``"double"`` (``evaluate_model.lua``, Torch's default
    DoubleTensor): all in float64 with the accumulated double thresholds, so a recall of
    exactly k/100 can miss the point k/100. Either way the 100 precisions are summed in order
    in double precision and divided by 100, as the Lua loop does."""
    _check_choice("lua_tensor_type", lua_tensor_type, LUA_TENSOR_TYPES)
    k = int(tp_sorted.shape[0])
    if npos <= 0 or k == 0:
        return 0.0
    dt = np.float32 if lua_tensor_type == "float" else np.float64
    points = RECALL_POINTS if lua_tensor_type == "float" else RECALL_POINTS_DOUBLE
    ctp = np.cumsum(tp_sorted, dtype=np.int64).astype(dt)  # K
    rec = ctp / dt(npos)
    prec = ctp / np.arange(1, k + 1, dtype=dt)  # tp / (tp + fp)
    best = np.maximum.accumulate(prec[::-1])[::-1]  # max precision from here on
    idx = np.searchsorted(rec, points, side="left")  # first rank with rec >= t
    p = np.where(idx < k, best[np.minimum(idx, k - 1)].astype(np.float64), 0.0)
    return float(np.cumsum(p)[-1] / len(points))  # ap = ap + p, in order; ap / apn


def compute_aps(
    scores: np.ndarray,
    ok: np.ndarray,
    iou: np.ndarray,
    meteor: np.ndarray,
    npos: int,
    *,
    lua_tensor_type: str = "float",
    stable_sort: bool = False,
) -> Dict[str, Any]:
    """All 35 APs from the records of all images. Returns ``map``, ``detmap`` and ``ap`` (x100).

    The records are ranked by descending score: on ties in Torch7's ``torch.sort`` order (the
    original's; the records must then be in the original's order: image by image, each image's
    in its own ranking order), or in input order with ``stable_sort=True``. ``lua_tensor_type``:
    see :func:`average_precision`."""
    _check_choice("lua_tensor_type", lua_tensor_type, LUA_TENSOR_TYPES)
    order = argsort_descending(np.asarray(scores, dtype=np.float64), stable=stable_sort)
    ok, iou, meteor = ok[order], iou[order], meteor[order]
    aps: Dict[str, float] = {}
    with np.errstate(invalid="ignore"):  # unscored records (NaN) are never true positives
        for t_iou in IOU_THRESHOLDS:
            base = ok & (iou >= t_iou)
            for t_m in METEOR_THRESHOLDS:
                aps[ap_key(t_iou, t_m)] = 100.0 * average_precision(
                    base & (meteor > t_m), npos, lua_tensor_type=lua_tensor_type
                )
    lang = [aps[ap_key(a, b)] for a in IOU_THRESHOLDS for b in METEOR_THRESHOLDS if b >= 0]
    det = [aps[ap_key(a, -1.0)] for a in IOU_THRESHOLDS]
    return {"map": float(np.mean(lang)), "detmap": float(np.mean(det)), "ap": aps}


# ------------------------------------------------------------------------------------------
# the functional core
# ------------------------------------------------------------------------------------------
def evaluate_dense_captions(
    gt_by_image: Mapping[Hashable, Mapping],
    pred_by_image: Mapping[Hashable, Mapping],
    scorer: Optional[Scorer] = None,
    *,
    unmatched_quirk: bool = True,
    merge_threshold: float = MERGE_THRESHOLD,
    score_all_records: bool = False,
    return_records: bool = False,
    lua_tensor_type: str = "float",
    stable_sort: bool = False,
    empty_gt: str = "fp",
    lua_gt_boxes: bool = False,
) -> Dict[str, Any]:
    """The DenseCap mAP of ``pred_by_image`` against ``gt_by_image``.

    Args:
        gt_by_image: ``{image_id: {"boxes": (R,4) [x,y,w,h] original pixels, "captions": [str]}}``;
            the evaluated images, in this order. Captions are compared as given (pass token
            strings from ``densecap.data.tokenizer.tokenize`` to reproduce the original).
        pred_by_image: ``{image_id: {"boxes": (N,4) [x,y,w,h], "scores": (N,), "captions": [str]}}``
            (numpy arrays, lists or tensors); keys must equal the GT keys.
        scorer: callable ``[(candidate, references), ...] -> [score, ...]``; default: a
            :class:`~densecap.evaluation.meteor.MeteorScorer` (one JVM, closed at the end).
        unmatched_quirk: the original's ``used[-1]`` behaviour (see module doc).
        score_all_records: also send records that cannot be true positives to the scorer.
        return_records: add ``records`` (per-record image_id, score, ok, iou, meteor, candidate,
            gt_index) to the result.
        lua_tensor_type: ``"float"`` (default; the original under FloatTensor, as ``train.lua``
            validates) or ``"double"`` (as ``evaluate_model.lua`` runs): see
            :func:`average_precision`.
        stable_sort: rank tied scores in input order instead of Torch7's ``torch.sort`` order
            (the default, as the original, within each image and over all records).
        empty_gt: predictions for a GT image without regions: ``"fp"`` (default) false
            positives, ``"ignore"`` dropped (counted either way).
        lua_gt_boxes: round the GT boxes as the original pipeline did (:func:`lua_round_gt_boxes`);
            needs ``"width"`` and ``"height"`` (original pixels) in every GT entry.

    Returns:
        ``{"map", "detmap", "ap": {ap_key: AP}}`` (x100) plus counts: ``num_images``, ``npos``,
        ``num_gt_regions``, ``num_predictions``, ``num_meteor_pairs``, ``ignored_pred_images``,
        ``ignored_predictions``, ``gt_images_without_predictions``, ``gt_regions_dropped``,
        ``empty_captions``, ``empty_gt_images`` (GT images without regions),
        ``empty_gt_predictions`` (their predictions), the settings ``unmatched_quirk``,
        ``lua_tensor_type``, ``stable_sort``, ``empty_gt``, ``lua_gt_boxes``, and ``timing``
        (seconds).
    """
    _check_choice("lua_tensor_type", lua_tensor_type, LUA_TENSOR_TYPES)
    _check_choice("empty_gt", empty_gt, EMPTY_GT_POLICIES)
    t0 = time.perf_counter()
    ignored_imgs = [k for k in pred_by_image if k not in gt_by_image]
    ignored_preds = 0
    for k in ignored_imgs:
        p = pred_by_image[k]
        ignored_preds += len(p.get("captions") or []) if isinstance(p, Mapping) else 0
    if ignored_imgs:
        logger.warning(
            "%d images with predictions have no ground truth and are ignored (%d predictions), e.g. %r",
            len(ignored_imgs), ignored_preds, ignored_imgs[:5],
        )

    rec_scores: List[np.ndarray] = []
    rec_ok: List[np.ndarray] = []
    rec_iou: List[np.ndarray] = []
    rec_gt: List[np.ndarray] = []  # global index into all_refs, -1 = none
    rec_img: List[np.ndarray] = []
    candidates: List[str] = []
    all_refs: List[List[str]] = []
    npos = 0
    num_regions = 0
    dropped = 0
    dropped_imgs: List[Hashable] = []
    no_pred = 0
    empty_caps = 0
    empty_gt_imgs = 0
    empty_gt_preds = 0
    for img_index, (image_id, gt) in enumerate(gt_by_image.items()):
        gt_boxes, gt_caps, n_bad = validate_gt(image_id, gt)
        if n_bad:
            dropped += n_bad
            dropped_imgs.append(image_id)
        if lua_gt_boxes and len(gt_boxes):
            size = (gt.get("width"), gt.get("height"))
            try:
                gt_boxes = lua_round_gt_boxes(gt_boxes, float(size[0]), float(size[1]))
            except (TypeError, ValueError):
                raise ValueError(
                    f"ground truth for image {image_id!r}: lua_gt_boxes needs the image size "
                    f"('width' and 'height' in original pixels), got {size}"
                ) from None
        num_regions += len(gt_caps)
        empty_gt_imgs += int(len(gt_caps) == 0)
        merged, refs = merge_gt_boxes(xywh_to_xyxy(gt_boxes), gt_caps, merge_threshold)
        npos += len(refs)
        ref_offset = len(all_refs)
        all_refs.extend(refs)
        pred = pred_by_image.get(image_id)
        if pred is None:
            no_pred += 1
            continue
        boxes, scores, caps = validate_predictions(image_id, pred)
        if len(caps) == 0:
            no_pred += 1
            continue
        if len(gt_caps) == 0:
            empty_gt_preds += len(caps)
            if empty_gt == "ignore":
                continue
        order = argsort_descending(scores, stable=stable_sort)  # as the original's torch.sort
        boxes, scores = boxes[order], scores[order]
        caps = [caps[i] for i in order]
        ok, ov, jmax = match_predictions(xywh_to_xyxy(boxes), merged, unmatched_quirk=unmatched_quirk)
        rec_scores.append(scores)
        rec_ok.append(ok)
        rec_iou.append(ov)
        rec_gt.append(np.where(jmax >= 0, jmax + ref_offset, -1))
        rec_img.append(np.full(len(caps), img_index, dtype=np.int64))
        candidates.extend(caps)
        empty_caps += sum(1 for c in caps if not c.strip())
    if dropped:
        logger.warning(
            "dropped %d GT regions with a non-finite coordinate or a negative size (images %r%s)",
            dropped, dropped_imgs[:5], " ..." if len(dropped_imgs) > 5 else "",
        )
    if no_pred:
        logger.info("%d GT images have no predictions (their GT boxes still count toward recall)", no_pred)
    if empty_gt_preds:
        logger.info(
            "%d GT images have no regions; their %d predictions are %s", empty_gt_imgs, empty_gt_preds,
            "false positives" if empty_gt == "fp" else "ignored (empty_gt='ignore')",
        )

    def _cat(parts, dtype):
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)

    scores_all = _cat(rec_scores, np.float64)
    ok_all = _cat(rec_ok, bool)
    iou_all = _cat(rec_iou, np.float64)
    gt_all = _cat(rec_gt, np.int64)
    img_all = _cat(rec_img, np.int64)
    t_match = time.perf_counter() - t0

    # ---- METEOR, only where it can matter (or everywhere on request) ----------------------
    t1 = time.perf_counter()
    meteor = np.full(len(candidates), np.nan, dtype=np.float64)
    has_ref = gt_all >= 0
    meteor[~has_ref] = 0.0  # no references: 0, as the original
    need = has_ref if score_all_records else has_ref & ok_all & (iou_all >= min(IOU_THRESHOLDS))
    need_idx = np.nonzero(need)[0]
    pair_index: Dict[Tuple[str, int], int] = {}
    pairs: List[Tuple[str, List[str]]] = []
    slot = np.empty(len(need_idx), dtype=np.int64)
    for n, i in enumerate(need_idx.tolist()):
        key = (candidates[i], int(gt_all[i]))
        u = pair_index.get(key)
        if u is None:
            u = pair_index[key] = len(pairs)
            pairs.append((candidates[i], all_refs[gt_all[i]]))
        slot[n] = u
    # identical (candidate, references) under different GT boxes collapse here too
    uniq: Dict[Tuple[str, Tuple[str, ...]], int] = {}
    uniq_pairs: List[Tuple[str, List[str]]] = []
    remap = np.empty(len(pairs), dtype=np.int64)
    for u, (c, r) in enumerate(pairs):
        k2 = (c, tuple(r))
        v = uniq.get(k2)
        if v is None:
            v = uniq[k2] = len(uniq_pairs)
            uniq_pairs.append((c, r))
        remap[u] = v
    own_scorer = scorer is None and len(uniq_pairs) > 0
    if own_scorer:
        from .meteor import MeteorScorer

        scorer = MeteorScorer()
    try:
        if uniq_pairs:
            vals = np.asarray(list(scorer(uniq_pairs)), dtype=np.float64)
            if vals.shape != (len(uniq_pairs),):
                raise ValueError(f"scorer returned {vals.shape} scores for {len(uniq_pairs)} pairs")
            meteor[need_idx] = vals[remap[slot]]
    finally:
        if own_scorer:
            scorer.close()
    t_meteor = time.perf_counter() - t1

    t2 = time.perf_counter()
    if npos == 0:
        logger.warning("no ground-truth boxes at all: every AP is 0")
    result = compute_aps(
        scores_all, ok_all, iou_all, meteor, npos, lua_tensor_type=lua_tensor_type, stable_sort=stable_sort
    )
    t_ap = time.perf_counter() - t2
    result.update(
        num_images=len(gt_by_image),
        npos=int(npos),
        num_gt_regions=int(num_regions),
        num_predictions=int(len(candidates)),
        num_meteor_pairs=int(len(uniq_pairs)),
        ignored_pred_images=len(ignored_imgs),
        ignored_predictions=int(ignored_preds),
        gt_images_without_predictions=int(no_pred),
        gt_regions_dropped=int(dropped),
        empty_captions=int(empty_caps),
        empty_gt_images=int(empty_gt_imgs),
        empty_gt_predictions=int(empty_gt_preds),
        unmatched_quirk=bool(unmatched_quirk),
        lua_tensor_type=lua_tensor_type,
        stable_sort=bool(stable_sort),
        empty_gt=empty_gt,
        lua_gt_boxes=bool(lua_gt_boxes),
        timing={"match": t_match, "meteor": t_meteor, "ap": t_ap},
    )
    if return_records:
        keys = list(gt_by_image.keys())
        result["records"] = {
            "image_id": [keys[i] for i in img_all.tolist()],
            "score": scores_all,
            "ok": ok_all,
            "iou": iou_all,
            "meteor": meteor,
            "candidate": candidates,
            "references": [all_refs[j] if j >= 0 else [] for j in gt_all.tolist()],
        }
    return result


# ------------------------------------------------------------------------------------------
# formatting
# ------------------------------------------------------------------------------------------
def format_results(result: Mapping[str, Any]) -> str:
    """A readable table: AP (x100) per IoU threshold (rows) and METEOR threshold (columns)."""
    ap = result["ap"]
    head = "IoU >=  " + "".join(
        f"{('det' if m < 0 else f'M>{m:g}'):>9}" for m in METEOR_THRESHOLDS
    )
    lines = [
        f"DenseCap evaluation: {result.get('num_images', '?')} images, npos {result.get('npos', '?')} "
        f"(merged GT boxes), {result.get('num_predictions', '?')} predictions, "
        f"{result.get('num_meteor_pairs', '?')} METEOR pairs; unmatched quirk "
        f"{'on' if result.get('unmatched_quirk', True) else 'off'}",
        f"settings: Lua tensor type {result.get('lua_tensor_type', 'float')}, ties "
        f"{'stable' if result.get('stable_sort') else 'in torch.sort order'}, empty-GT images "
        f"{result.get('empty_gt', 'fp')}, Lua GT boxes {'on' if result.get('lua_gt_boxes') else 'off'}",
        f"mAP {result['map']:.3f}   detection mAP {result['detmap']:.3f}   (x100)",
        "",
        "AP x100 (rows: IoU threshold, inclusive; columns: METEOR threshold, strict; det = -1)",
        head,
    ]
    for t_iou in IOU_THRESHOLDS:
        lines.append(f"{t_iou:<8g}" + "".join(f"{ap[ap_key(t_iou, m)]:9.3f}" for m in METEOR_THRESHOLDS))
    lines.append(
        f"{'mean':<8}"
        + "".join(f"{np.mean([ap[ap_key(a, m)] for a in IOU_THRESHOLDS]):9.3f}" for m in METEOR_THRESHOLDS)
    )
    notes = []
    for k, label in (
        ("ignored_pred_images", "images with predictions but no GT (ignored)"),
        ("gt_images_without_predictions", "GT images without predictions (count toward recall)"),
        ("gt_regions_dropped", "GT regions dropped (non-finite or negative size)"),
        ("empty_captions", "empty predicted captions (METEOR 0)"),
    ):
        if result.get(k):
            notes.append(f"  {label}: {result[k]}")
    if result.get("empty_gt_images"):
        how = "ignored" if result.get("empty_gt") == "ignore" else "false positives"
        notes.append(
            f"  GT images without regions: {result['empty_gt_images']}, with "
            f"{result.get('empty_gt_predictions', 0)} predictions ({how})"
        )
    if notes:
        lines += ["", "notes:"] + notes
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# the evaluator used by training and tools
# ------------------------------------------------------------------------------------------
def _dist():
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return None
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


class DenseCapEvaluator(DatasetEvaluator):
    """Accumulates model outputs image by image and computes the DenseCap mAP.

    Usage (detectron2 style)::

        evaluator = DenseCapEvaluator.from_config(cfg, dataset=dataset)
        evaluator.reset()
        for inputs in loader:
            evaluator.process(inputs, model(inputs))
        metrics = evaluator.evaluate()   # {"map", "detmap", "ap": {...}, counts...}

    ``process(inputs, outputs)`` takes the model contract: ``inputs`` are the dataset dicts
    (``image_id``, ``scale``, ``instances`` with ``gt_boxes`` xyxy in the resized frame and
    ``gt_captions`` token ids), ``outputs`` the per-image dicts with ``instances.pred_boxes``
    ([x, y, w, h] original pixels), ``scores`` and ``pred_captions``.

    Ground truth, first available of:
      1. ``gt_by_image`` ({image_id: {"boxes" xywh original pixels, "captions" [str]}});
      2. ``dataset`` (a :class:`~densecap.data.dataset.DenseCapDataset`): the exact prepared
         boxes and caption strings (``<UNK>`` for rare words) of each image id;
      3. the inputs themselves: ``gt_boxes / scale`` converted to xywh, ``gt_captions`` decoded
         with ``vocab`` (or the dataset's vocabulary).
    Only processed images are evaluated. Under ``torch.distributed`` the per-rank results are
    gathered with ``all_gather_object`` (an image seen twice, e.g. sampler padding, counts once),
    rank 0 runs METEOR and the result is broadcast, so every rank returns the same dict.
    """

    def __init__(
        self,
        *,
        gt_by_image: Optional[Mapping[Hashable, Mapping]] = None,
        dataset: Any = None,
        vocab: Any = None,
        unmatched_quirk: bool = True,
        scorer: Optional[Scorer] = None,
        check_java: bool = True,
    ) -> None:
        self.gt_by_image = gt_by_image
        self.dataset = dataset
        self.vocab = vocab if vocab is not None else getattr(dataset, "vocab", None)
        self.unmatched_quirk = bool(unmatched_quirk)
        self.scorer = scorer
        self._dataset_index: Optional[Dict[int, int]] = None
        if scorer is None and check_java:
            from .meteor import find_java, meteor_jar

            find_java()  # fail now, not after a long inference run
            meteor_jar()
        self.reset()

    @classmethod
    def from_config(cls, cfg, *, dataset: Any = None, vocab: Any = None, gt_by_image=None, scorer=None):
        return cls(
            gt_by_image=gt_by_image,
            dataset=dataset,
            vocab=vocab,
            unmatched_quirk=bool(cfg.TEST.UNMATCHED_QUIRK),
            scorer=scorer,
        )

    def reset(self) -> None:
        self._gt: Dict[Hashable, Dict[str, Any]] = {}
        self._pred: Dict[Hashable, Dict[str, Any]] = {}

    # ---- ground truth sources -----------------------------------------------------------------
    def _gt_from_dataset(self, image_id: Hashable) -> Optional[Dict[str, Any]]:
        ds = self.dataset
        if ds is None or not hasattr(ds, "gt_boxes_xywh"):
            return None
        if self._dataset_index is None:
            self._dataset_index = {int(x): i for i, x in enumerate(ds.data.image_ids.tolist())}
        i = self._dataset_index.get(int(image_id))
        if i is None:
            return None
        return {"boxes": np.asarray(ds.gt_boxes_xywh(i), dtype=np.float64), "captions": list(ds.gt_captions_str(i))}

    def _gt_from_input(self, inp: Mapping) -> Optional[Dict[str, Any]]:
        inst = inp.get("instances")
        if inst is None or not (inst.has("gt_boxes") and inst.has("gt_captions")):
            return None
        if self.vocab is None:
            raise ValueError("DenseCapEvaluator: GT captions in the inputs are token ids; pass vocab= (or dataset=)")
        scale = float(inp.get("scale", 1.0))
        xyxy = _to_numpy(inst.gt_boxes, np.float64).reshape(-1, 4) / scale
        boxes = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
        caps = [self.vocab.decode_str(row) for row in _to_numpy(inst.gt_captions, np.int64).tolist()]
        return {"boxes": boxes, "captions": caps}

    # ---- accumulate ----------------------------------------------------------------------------
    def process(self, inputs: Sequence[Mapping], outputs: Sequence[Mapping]) -> None:
        if len(inputs) != len(outputs):
            raise ValueError(f"process(): {len(inputs)} inputs but {len(outputs)} outputs")
        for inp, out in zip(inputs, outputs):
            image_id = inp["image_id"]
            if image_id in self._pred:
                continue  # seen already (e.g. padded distributed sampler)
            inst = out["instances"]
            boxes = _to_numpy(inst.pred_boxes, np.float64).reshape(-1, 4)
            scores = _to_numpy(inst.scores, np.float64).reshape(-1)
            caps = list(inst.pred_captions)
            self._pred[image_id] = {"boxes": boxes, "scores": scores, "captions": caps}
            if self.gt_by_image is not None:
                if image_id not in self.gt_by_image:
                    raise KeyError(f"DenseCapEvaluator: image {image_id!r} is not in gt_by_image")
                continue
            gt = self._gt_from_dataset(image_id)
            if gt is None:
                gt = self._gt_from_input(inp)
            if gt is None:
                raise ValueError(
                    f"DenseCapEvaluator: no ground truth for image {image_id!r}; pass gt_by_image= or "
                    f"dataset=, or inputs with instances.gt_boxes/gt_captions"
                )
            self._gt[image_id] = gt

    def _gathered(self) -> Tuple[Dict, Dict]:
        dist = _dist()
        if dist is None:
            return self._gt, self._pred
        parts: List[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (self._gt, self._pred))
        gt: Dict = {}
        pred: Dict = {}
        for g, p in parts:
            for k, v in p.items():
                if k not in pred:
                    pred[k] = v
                    if k in g:
                        gt[k] = g[k]
        return gt, pred

    def evaluate(self) -> Dict[str, Any]:
        gt, pred = self._gathered()
        dist = _dist()
        result: Optional[Dict[str, Any]] = None
        if dist is None or dist.get_rank() == 0:
            if self.gt_by_image is not None:
                gt = {k: self.gt_by_image[k] for k in pred}
            else:
                gt = {k: gt[k] for k in pred}
            if not pred:
                logger.warning("DenseCapEvaluator.evaluate(): nothing was processed")
            result = evaluate_dense_captions(gt, pred, self.scorer, unmatched_quirk=self.unmatched_quirk)
            result.pop("timing", None)
        if dist is not None:
            box = [result]
            dist.broadcast_object_list(box, src=0)
            result = box[0]
        return result


# ------------------------------------------------------------------------------------------
# files (what tools/evaluate.py calls)
# ------------------------------------------------------------------------------------------
def evaluate_dense_files(
    gt_path: str,
    pred_path: str,
    *,
    vocab_path: Optional[str] = None,
    split_file: Optional[str] = None,
    split: Optional[str] = None,
    max_images: int = 0,
    max_tokens: int = 15,
    unmatched_quirk: bool = True,
    scorer: Optional[Scorer] = None,
    score_all_records: bool = False,
    lua_tensor_type: str = "float",
    stable_sort: bool = False,
    empty_gt: str = "fp",
    lua_gt_boxes: bool = False,
    image_data_path: Optional[str] = None,
) -> Dict[str, Any]:
    """Read a VG ``region_descriptions.json`` and a ``results.json`` and evaluate them.

    See :mod:`densecap.evaluation.io` for the formats. The result also carries the GT reading
    report (``split_images_missing_from_gt``, ``gt_regions_too_long``, ``gt_images_empty``) and,
    when the boxes look like the 720-pixel frame, ``warnings``. ``lua_tensor_type``,
    ``stable_sort``, ``empty_gt`` and ``lua_gt_boxes``: see :func:`evaluate_dense_captions`
    (``empty_gt="ignore"`` drops empty images from the GT, as before). Unless ``stable_sort``,
    the chosen images are evaluated in the GT file's order, as the original's DataLoader visited
    a split (so that tied scores are ranked as there). ``lua_gt_boxes`` needs
    image sizes: ``"width"``/``"height"`` in the GT entries or ``image_data_path`` (VG
    ``image_data.json``)."""
    from densecap.data.tokenizer import Vocabulary

    from .io import frame_warning, read_dense_predictions, read_image_sizes, read_vg_gt

    _check_choice("empty_gt", empty_gt, EMPTY_GT_POLICIES)
    t0 = time.perf_counter()
    vocab = Vocabulary.load(vocab_path) if vocab_path else None
    gt, report = read_vg_gt(
        gt_path, split_file=split_file, split=split, vocab=vocab, max_tokens=max_tokens, max_images=max_images,
        keep_empty=empty_gt == "fp", file_order=not stable_sort,
    )
    if lua_gt_boxes:
        sizes = read_image_sizes(image_data_path) if image_data_path else {}
        missing = []
        for k, g in gt.items():
            if k in sizes:
                g["width"], g["height"] = sizes[k]
            elif g.get("width") is None or g.get("height") is None:
                missing.append(k)
        if missing:
            where = image_data_path or f"{gt_path} (no 'width'/'height' in its entries; pass --image-data)"
            raise ValueError(
                f"--lua-gt-boxes needs each image's size: {len(missing)} evaluated images have none in "
                f"{where}, e.g. {missing[:5]}"
            )
    pred = read_dense_predictions(pred_path)
    t_read = time.perf_counter() - t0
    warnings = []
    w = frame_warning(gt, pred)
    if w:
        logger.warning(w)
        warnings.append(w)
    n_matched = sum(1 for k in pred if k in gt)
    if pred and n_matched == 0:
        raise ValueError(
            f"no image of {pred_path} is among the {len(gt)} evaluated GT images of {gt_path}; "
            f"image ids must match (e.g. 'image_id': 123 or 'img_name': '123.jpg')"
        )
    if len(gt) > n_matched:
        msg = (
            f"{len(gt) - n_matched} of {len(gt)} evaluated GT images have no predictions; their GT "
            f"boxes count toward recall (use --split/--max-images to evaluate a subset)"
        )
        logger.warning(msg)
        warnings.append(msg)
    result = evaluate_dense_captions(
        gt, pred, scorer, unmatched_quirk=unmatched_quirk, score_all_records=score_all_records,
        lua_tensor_type=lua_tensor_type, stable_sort=stable_sort, empty_gt=empty_gt, lua_gt_boxes=lua_gt_boxes,
    )
    result.update(report)
    result["timing"]["read"] = t_read
    if warnings:
        result["warnings"] = warnings
    return result

"""``DenseCapPredictor``: images in, dense captions out (boxes in original-image pixels).

N: regions of one image, D: region code size, T: caption tokens, M: given boxes.

The predictor wraps a model that honours the eval contract of ``densecap.modeling`` (see
:class:`densecap.modeling.meta_arch.DenseCapModel`): it reads images with the project's one loader
(``densecap.data.image_io.read_image``: EXIF rotation applied, every pixel mode converted), resizes
them with the model's transform (``model.transform.resize``; ``resize_longest_side`` for a model
without one) to ``image_size``, builds the model's ``batched_inputs``, runs the
model in batches and returns one :class:`Prediction` per image.

Frames. All boxes the predictor takes (``given_boxes``) and returns are ``[x, y, w, h]`` in pixels
of the image *as displayed*, i.e. after its EXIF orientation is applied: for a phone photo stored
sideways with an EXIF "rotate 90" tag, ``width``/``height`` are those of the upright picture and
the boxes land on its pixels. This is the frame every image viewer (and the HTML viewer written
by ``tools/infer.py``) shows.

Batching. ``predict`` runs images whose resized shapes are equal in one forward pass and images of
different shapes in separate passes, so no image is ever zero-padded to another's size: the
results of any batch size equal those of batch size 1 (up to float rounding of batched kernels).

Typical use (this is the API region retrieval reuses to index collections)::

    predictor = DenseCapPredictor.from_checkpoint("model_final.pth", image_size=720, device="cpu")
    preds = predictor.predict_paths(["a.jpg", "b.png"])         # Prediction or ImageReadError each
    p = predictor(image_rgb_uint8)                               # one HxWx3 array
    p = predictor(image, given_boxes=[[10, 20, 50, 40]])         # caption these boxes only
    p.boxes, p.scores, p.captions, p.caption_logprobs, p.region_codes
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from densecap.data.image_io import ImageReadError, read_image, resize_longest_side
from densecap.modeling.capabilities import IMAGE_CAPTION, capabilities

from .options import CONFIG_KEYS, InferenceOptions
from .speed import optimize_for_inference

logger = logging.getLogger(__name__)

ImageLike = Union[np.ndarray, str, "os.PathLike[str]"]


class ImageCaptionUnavailable(ValueError):
    """``--image-caption`` was asked for but the model has no whole-image caption head."""


@dataclass
class Prediction:
    """Dense captions of one image.

    height, width     int                the image's size as displayed (EXIF applied), pixels
    boxes             (N, 4)             [x, y, w, h] in those pixels, descending score; float32 from
                                         the model, or float64 holding the given boxes exactly
    scores            float32 (N,)       sigmoid of objectness, in [0, 1]
    captions          list[str] (N)      words joined by spaces
    caption_logprobs  float32 (N,)       log-probability of each caption under the language model
    caption_tokens    int64 (N, T)       token ids (0-padded), or None
    region_codes      float32 (N, D)     the recognition network's region codes, or None
    given_boxes       bool               True when ``boxes`` are the caller's boxes (RPN skipped)
    image_caption     str or None        whole-image caption (from an image-caption head)
    image_caption_logprob  float or None
    image_captions    list of (str, float) or None: top-N whole-image captions
    """

    height: int
    width: int
    boxes: np.ndarray
    scores: np.ndarray
    captions: List[str]
    caption_logprobs: np.ndarray
    caption_tokens: Optional[np.ndarray] = None
    region_codes: Optional[np.ndarray] = None
    given_boxes: bool = False
    image_caption: Optional[str] = None
    image_caption_logprob: Optional[float] = None
    image_captions: Optional[List[Tuple[str, float]]] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.captions)


# ------------------------------------------------------------------------------------------
# test-time options
# ------------------------------------------------------------------------------------------
# predictor option -> config key (the model reads these keys when it is built): the fields of
# InferenceOptions (densecap/inference/options.py), the one definition of the test-time options
OPTION_KEYS = CONFIG_KEYS


def options_to_opts(**options: Any) -> List[Any]:
    """``KEY VALUE`` config overrides for the options that are not None, each validated by
    :class:`InferenceOptions` (a bad value is an error naming the option)."""
    unknown = set(options) - set(OPTION_KEYS)
    if unknown:
        raise TypeError(f"unknown predictor option(s): {sorted(unknown)}")
    given = {k: v for k, v in options.items() if v is not None}
    checked = InferenceOptions().override(**given)
    opts: List[Any] = []
    for name, key in OPTION_KEYS.items():
        if name in given:
            opts += [key, getattr(checked, name)]
    return opts


def resolve_device(device: Optional[str]) -> torch.device:
    device = device or "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device} was asked for but CUDA is not available on this machine (use --device cpu)")
    return torch.device(device)


def model_has_image_caption(model: torch.nn.Module) -> bool:
    """Whether ``model`` captions whole images (its ``capabilities`` include ``image_caption``)."""
    return IMAGE_CAPTION in capabilities(model)


def apply_eval_options(model: torch.nn.Module, cfg) -> None:
    """Push the config's test-time options onto a built model (:meth:`InferenceOptions.apply`)."""
    InferenceOptions.from_config(cfg).apply(model)


def as_given_boxes(boxes: Any) -> np.ndarray:
    """Validate user boxes ``[[x, y, w, h], ...]`` -> float64 (M, 4). Raises ValueError saying why."""
    arr = np.asarray(boxes if len(boxes) else np.zeros((0, 4)), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must be a list of [x, y, w, h], got shape {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        raise ValueError("boxes contain NaN or infinite values")
    bad = np.nonzero((arr[:, 2] <= 0) | (arr[:, 3] <= 0))[0]
    if len(bad):
        raise ValueError(f"box {int(bad[0])} {arr[bad[0]].tolist()} has zero or negative width/height")
    return arr


# ------------------------------------------------------------------------------------------
# the predictor
# ------------------------------------------------------------------------------------------
class DenseCapPredictor:
    """Runs a dense captioning model on images; see the module docstring."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        cfg=None,
        image_size: int = 720,
        device: Optional[str] = None,
        score_thresh: Optional[float] = None,
        image_caption: bool = False,
        batch_size: int = 8,
    ) -> None:
        self.model = model
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.cfg = cfg
        self.image_size = int(image_size)
        if device is None:
            try:
                self.device = next(model.parameters()).device
            except StopIteration:
                self.device = torch.device("cpu")
        else:
            self.device = resolve_device(device)
            model.to(self.device)
        if score_thresh is not None:  # None: the model's own (TEST.SCORE_THRESH when built from a config)
            self.score_thresh = float(score_thresh)
        self.image_caption = bool(image_caption)
        if self.image_caption and not model_has_image_caption(model):
            raise ImageCaptionUnavailable(
                "--image-caption: this model has no whole-image caption head; use a checkpoint trained "
                "with one (an image-caption config) or drop the option"
            )
        model.eval()

    @classmethod
    def from_config(
        cls, cfg, model: torch.nn.Module, *, image_caption: bool = False, batch_size: int = 8
    ) -> "DenseCapPredictor":
        """A predictor with the config's test-time options, its speed levers applied to ``model``
        (``TEST.FOLD_BN``, ``TEST.WINOGRAD``, ``TEST.CHANNELS_LAST``, ``TEST.PACKED_LINEAR``,
        ``TEST.QUANTIZE``, ``TEST.PRECISION``: see :mod:`densecap.inference.speed`; they change the
        model in place)."""
        optimize_for_inference(model, cfg)
        return cls(
            model,
            cfg=cfg,
            image_size=int(cfg.INPUT.MAX_SIZE),
            device=str(cfg.MODEL.DEVICE),
            score_thresh=float(cfg.TEST.SCORE_THRESH),
            image_caption=image_caption,
            batch_size=batch_size,
        )

    @classmethod
    def from_checkpoint(
        cls,
        weights: str,
        *,
        config_file: Optional[str] = None,
        opts: Sequence[Any] = (),
        image_caption: bool = False,
        batch_size: int = 8,
        caption_weights: Optional[str] = None,
        **options: Any,
    ) -> "DenseCapPredictor":
        """Load a checkpoint (it carries its config and vocabulary).

        ``caption_weights``: a separately trained whole-image captioner (``ImageCaptioner``
        checkpoint) run alongside the dense model (:class:`DenseCapWithImageCaptioner`), so
        ``image_caption=True`` works with a DenseCap checkpoint that has no caption head.

        Config order: the checkpoint's config, then ``config_file`` (optional), then ``opts``
        (``KEY VALUE ...``), then the keyword options, the fields of
        :class:`~densecap.inference.options.InferenceOptions` (``image_size``, ``rpn_nms``,
        ``final_nms``, ``pre_nms_proposals``, ``num_proposals``, ``beam_size``, ``length_penalty``,
        ``score_thresh``, ``max_detections``, ``max_tokens``, ``device``; None = keep the config's value).
        """
        from densecap.config import load_config
        from densecap.modeling.checkpoint import build_model_from_checkpoint

        device = options.get("device")
        if device is not None:
            resolve_device(device)  # fail before loading anything
        elif not torch.cuda.is_available():
            options["device"] = "cpu"  # a checkpoint trained on a GPU still runs here
        cfg = load_config(config_file, None) if config_file else None
        all_opts = list(opts or ()) + options_to_opts(**options)
        from densecap.modeling.original import cached_conversion, is_torch7_path

        if is_torch7_path(weights):  # the original's Torch7 file: converted once, cached
            weights = cached_conversion(weights)
        model, cfg = build_model_from_checkpoint(weights, cfg, all_opts)
        apply_eval_options(model, cfg)
        if caption_weights:
            from densecap.modeling.composite import DenseCapWithImageCaptioner

            cap_opts = ["MODEL.DEVICE", str(cfg.MODEL.DEVICE)]
            n = [opts[i + 1] for i in range(0, len(opts) - 1, 2) if opts[i] == "MODEL.IMAGE_CAPTION.NUM_CAPTIONS"]
            if n:
                cap_opts += ["MODEL.IMAGE_CAPTION.NUM_CAPTIONS", n[-1]]
            captioner, _ = build_model_from_checkpoint(caption_weights, None, cap_opts)
            model = DenseCapWithImageCaptioner(model, captioner).eval()
        return cls.from_config(cfg, model, image_caption=image_caption, batch_size=batch_size)

    @property
    def score_thresh(self) -> float:
        """The minimum score of a detection. The model applies it (once, in its post-processing:
        ``model.roi_heads.score_thresh``); setting it here sets the model's."""
        roi = getattr(self.model, "roi_heads", None)
        return float(getattr(roi, "score_thresh", getattr(self.model, "score_thresh", 0.0)))

    @score_thresh.setter
    def score_thresh(self, value: float) -> None:
        _set_score_thresh(self.model, float(value))

    @property
    def vocab(self):
        return getattr(self.model, "vocab", None)

    # ---- inputs ----------------------------------------------------------------------------
    def prepare(
        self,
        image: np.ndarray,
        *,
        given_boxes: Optional[Any] = None,
        image_id: Any = None,
        file_name: str = "",
    ) -> Dict[str, Any]:
        """One entry of the model's ``batched_inputs`` for an RGB uint8 image (H, W, 3)."""
        image = _check_image(image)
        h0, w0 = image.shape[:2]
        transform = getattr(self.model, "transform", None)  # the model's one image/box transform
        if callable(getattr(transform, "resize", None)):
            resized, scale = transform.resize(image, self.image_size)
        else:
            resized, scale = resize_longest_side(image, self.image_size)
        inp: Dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).contiguous(),  # 3 H' W'
            "height": int(h0),
            "width": int(w0),
            "scale": float(scale),
            "image_id": image_id,
            "file_name": file_name,
        }
        if given_boxes is not None:
            inp["given_boxes"] = torch.from_numpy(as_given_boxes(given_boxes).astype(np.float32)).reshape(-1, 4)  # M 4
        return inp

    def read(self, path: str) -> np.ndarray:
        """``read_image`` with the model's reading options, if it has any (the original-compatible
        model reads images as the original: no EXIF rotation, alpha dropped)."""
        return read_image(os.fspath(path), **dict(getattr(self.model, "image_read_options", {}) or {}))

    # ---- running ---------------------------------------------------------------------------
    def __call__(self, image: ImageLike, given_boxes: Optional[Any] = None) -> Prediction:
        if not isinstance(image, np.ndarray):
            image = self.read(image)
        return self.predict([image], None if given_boxes is None else [given_boxes])[0]

    def predict(
        self,
        images: Sequence[np.ndarray],
        given_boxes: Optional[Sequence[Optional[Any]]] = None,
        *,
        image_ids: Optional[Sequence[Any]] = None,
        file_names: Optional[Sequence[str]] = None,
    ) -> List[Prediction]:
        """Dense captions for RGB uint8 images (H, W, 3), one :class:`Prediction` each, in order.

        Images of the same resized shape share forward passes of up to ``batch_size`` images.
        ``given_boxes[i]`` (None, or a list/array of [x, y, w, h] in image ``i``'s pixels) makes
        the model caption exactly those boxes, in that order, instead of detecting.
        """
        n = len(images)
        if n == 0:
            return []
        gb = list(given_boxes) if given_boxes is not None else [None] * n
        if len(gb) != n:
            raise ValueError(f"{n} images but {len(gb)} given_boxes entries")
        inputs = [
            self.prepare(
                img,
                given_boxes=gb[i],
                image_id=None if image_ids is None else image_ids[i],
                file_name="" if file_names is None else file_names[i],
            )
            for i, img in enumerate(images)
        ]
        # same resized shape -> one forward pass; never pad one image to another's size
        groups: Dict[Tuple[int, int], List[int]] = {}
        for i, inp in enumerate(inputs):
            groups.setdefault(tuple(inp["image"].shape[1:]), []).append(i)
        results: List[Optional[Prediction]] = [None] * n
        for same_shape in groups.values():
            for k in range(0, len(same_shape), self.batch_size):
                idx = same_shape[k:k + self.batch_size]
                outs = self._forward([inputs[i] for i in idx])
                for i, out in zip(idx, outs):
                    results[i] = self._to_prediction(out, inputs[i], gb[i])
        return results  # type: ignore[return-value]

    def predict_paths(
        self, paths: Sequence[str], given_boxes: Optional[Sequence[Optional[Any]]] = None
    ) -> List[Union[Prediction, ImageReadError]]:
        """Like :meth:`predict` for image files, ``batch_size`` files in memory at a time; an
        unreadable file gives its :class:`ImageReadError` in its slot."""
        gb = list(given_boxes) if given_boxes is not None else [None] * len(paths)
        out: List[Any] = [None] * len(paths)
        for start in range(0, len(paths), self.batch_size):
            images, keep = [], []
            for i in range(start, min(start + self.batch_size, len(paths))):
                try:
                    images.append(self.read(paths[i]))
                    keep.append(i)
                except ImageReadError as e:
                    out[i] = e
            for i, pred in zip(keep, self.predict(images, [gb[i] for i in keep], file_names=[paths[i] for i in keep])):
                out[i] = pred
        return out

    def _forward(self, batched_inputs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        with torch.inference_mode():
            outs = self.model(batched_inputs)
        if not isinstance(outs, (list, tuple)) or len(outs) != len(batched_inputs):
            raise RuntimeError(
                f"the model returned {type(outs).__name__} for {len(batched_inputs)} images; the eval "
                "contract is a list with one dict per image (is the model in eval mode?)"
            )
        return list(outs)

    def _to_prediction(self, out: Dict[str, Any], inp: Dict[str, Any], given: Optional[Any]) -> Prediction:
        h, w = inp["height"], inp["width"]
        inst = out.get("instances")
        if inst is None:  # a whole-image captioner: no regions
            from densecap.structures import Instances

            inst = Instances((h, w), pred_boxes=np.zeros((0, 4), np.float32), scores=np.zeros(0, np.float32),
                             pred_captions=[])
        boxes = _np(inst.pred_boxes, np.float32).reshape(-1, 4)  # N 4
        scores = _np(inst.scores, np.float32).reshape(-1)  # N
        captions = [str(c) for c in inst.pred_captions]
        logprobs = _np(inst.pred_caption_logprobs, np.float32).reshape(-1) if inst.has("pred_caption_logprobs") else np.zeros(len(captions), np.float32)
        tokens = _np(inst.pred_caption_tokens, np.int64) if inst.has("pred_caption_tokens") else None  # N T
        codes = _np(inst.region_codes, np.float32) if inst.has("region_codes") else None  # N D
        if codes is not None and codes.ndim == 1:
            codes = codes.reshape(len(captions), -1)
        if given is not None:
            exact = as_given_boxes(given)  # M 4, the caller's numbers
            if len(boxes) != len(exact):
                raise RuntimeError(f"the model returned {len(boxes)} boxes for {len(exact)} given boxes")
            if len(exact) and not np.allclose(boxes, exact.astype(np.float32), rtol=1e-4, atol=1e-2):
                raise RuntimeError("the model changed or reordered the given boxes (contract: exactly those, in order)")
            boxes = exact
        # otherwise the boxes are the model's, already final: thresholded by the model and mapped
        # to original pixels (and clipped) by its transform
        pred = Prediction(
            height=int(h),
            width=int(w),
            boxes=boxes,
            scores=scores,
            captions=captions,
            caption_logprobs=logprobs,
            caption_tokens=tokens,
            region_codes=codes,
            given_boxes=given is not None,
        )
        if self.image_caption or out.get("image_caption") is not None:
            _read_image_caption(out, pred)
            if out.get("attention") is not None:  # attention models: the per-word maps (--attention-maps)
                pred.extra["image_caption_attention"] = _np(out["attention"], np.float32)  # T h w
                cell = out.get("attention_cell")
                if cell is not None:  # pixels of one attention cell, in the original image
                    s = float(inp.get("scale", 1.0)) or 1.0
                    pred.extra["image_caption_attention_cell"] = (float(cell[0]) / s, float(cell[1]) / s)
        return pred


def _set_score_thresh(model: torch.nn.Module, value: float) -> None:
    for obj in (model, getattr(model, "roi_heads", None)):
        if obj is not None and hasattr(obj, "score_thresh"):
            obj.score_thresh = value


def _read_image_caption(out: Dict[str, Any], pred: Prediction) -> None:
    """The whole-image caption of one image, from the model's per-image output dict:
    ``image_caption`` (str), ``image_caption_logprob`` (float) and optionally ``image_captions``,
    the top N as ``{"caption", "logprob"}`` dicts or ``(caption, logprob)`` pairs."""
    cap = out.get("image_caption")
    if cap is None:
        raise RuntimeError("--image-caption: the model returned no 'image_caption' for an image")
    pred.image_caption = str(cap)
    lp = out.get("image_caption_logprob")
    pred.image_caption_logprob = None if lp is None else float(lp)
    top = out.get("image_captions")
    if top is not None:
        pred.image_captions = [
            (str(t["caption"]), float(t["logprob"])) if isinstance(t, dict) else (str(t[0]), float(t[1])) for t in top
        ]


def _np(x: Any, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu")
        if x.dtype == torch.bfloat16 or x.dtype == torch.float16:
            x = x.float()
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected an RGB uint8 numpy array, got {type(image).__name__}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    return image

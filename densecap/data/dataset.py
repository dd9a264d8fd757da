"""Training/evaluation dataset over a prepared split, and its collate function.

Each item is a dict (detectron2 style)::

    image        uint8 (3, H', W')  RGB, longest side resized to INPUT.MAX_SIZE
    image_id     int
    file_name    str
    height,width int               original image size (pixels)
    scale        float             H'/height (the same factor on both axes)
    instances    Instances((H', W'),
                   gt_boxes    float32 (R, 4)  xyxy in the *resized* frame
                   gt_captions int64   (R, T)  token ids, 0-padded, no START/END)
    image_captions      int64 (K, T) the image's whole-image captions, word ids, 0-padded,
                        no START/END, truncated to T words (only when the dataset was given
                        whole-image captions; K = 0 for an image the caption file lacks)
    gt_image_captions   list[str] the same K captions as text, untruncated (the references)

An unreadable image is logged with its path and the item is ``None``; :func:`collate` drops it,
so one bad file never stops an epoch.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from densecap.structures import Instances, xywh_to_xyxy

from .image_io import ImageReadError, read_image, resize_longest_side
from .prepared import PreparedSplit, load_split, load_vocab
from .tokenizer import PAD, UNK, Vocabulary

logger = logging.getLogger(__name__)


class DenseCapDataset(Dataset):
    def __init__(
        self,
        prepared_dir: str,
        split: str,
        *,
        max_size: int = 720,
        flip: bool = False,
        max_images: int = 0,
        vocab: Optional[Vocabulary] = None,
        image_captions: Optional[Dict[int, List[List[str]]]] = None,
        image_caption_match: str = "image_id",
        image_caption_max_tokens: int = 20,
    ) -> None:
        """``image_captions``: ``{id: [[token, ...], ...]}`` whole-image captions, looked up by
        each image's ``image_caption_match`` id ("image_id" or "coco_id")."""
        self.data: PreparedSplit = load_split(prepared_dir, split)
        # the prepared word ids are in ``data_vocab``; captions come out in ``vocab`` (a model's,
        # e.g. a pretrained vocabulary extended by the data's new words): ids are translated word
        # by word when the two differ (a word ``vocab`` lacks becomes <UNK>)
        self.data_vocab = load_vocab(prepared_dir)
        self.vocab = vocab if vocab is not None else self.data_vocab
        self._id_map: Optional[np.ndarray] = None
        if self.vocab != self.data_vocab:
            n = len(self.data_vocab)
            if self.vocab.idx_to_token[:n] != self.data_vocab.idx_to_token:
                self._id_map = np.array([self.vocab.token_to_idx.get(t, UNK) for t in self.data_vocab.idx_to_token],
                                        dtype=np.int64)
                self._id_map[PAD] = PAD
        self.max_size = int(max_size)
        self.flip = bool(flip)
        self.num_images = len(self.data) if max_images <= 0 else min(max_images, len(self.data))
        # token ids swapped by a horizontal flip
        self._swap = {}
        l_id = self.vocab.token_to_idx.get("left")
        r_id = self.vocab.token_to_idx.get("right")
        if l_id is not None and r_id is not None:
            self._swap = {l_id: r_id, r_id: l_id}
        self.image_captions = image_captions
        self.image_caption_max_tokens = int(image_caption_max_tokens)
        self._caption_ids: Optional[np.ndarray] = None
        if image_captions is not None:
            if image_caption_match == "image_id":
                self._caption_ids = self.data.image_ids
            elif image_caption_match == "coco_id":
                if self.data.coco_ids is None:
                    raise ValueError(
                        f"{prepared_dir}/{split}.npz has no coco_ids (prepared by an older version): prepare the "
                        "dataset again to match whole-image captions by coco_id"
                    )
                self._caption_ids = self.data.coco_ids
            else:
                raise ValueError(f"DATASETS.IMAGE_CAPTIONS_MATCH must be 'image_id' or 'coco_id', got {image_caption_match!r}")
            n = self.num_images_with_captions()
            logger.info("%s/%s: %d of %d images have whole-image captions (matched by %s)",
                        prepared_dir, split, n, self.num_images, image_caption_match)

    def num_images_with_captions(self) -> int:
        if self._caption_ids is None:
            return 0
        return sum(1 for i in range(self.num_images) if int(self._caption_ids[i]) in self.image_captions)

    def image_caption_tokens(self, i: int) -> List[List[str]]:
        """The whole-image captions of image i (token lists; [] when it has none)."""
        if self._caption_ids is None:
            return []
        return self.image_captions.get(int(self._caption_ids[i]), [])

    def encode_image_captions(self, captions: Sequence[Sequence[str]]) -> torch.Tensor:
        """(K, T) int64 word ids, 0-padded, truncated to ``image_caption_max_tokens`` words."""
        return torch.from_numpy(self.vocab.encode_padded(captions, self.image_caption_max_tokens))

    def __len__(self) -> int:
        return self.num_images

    def gt_captions_str(self, i: int) -> List[str]:
        return self.data.caption_strings(i, self.data_vocab)

    def gt_boxes_xywh(self, i: int) -> np.ndarray:
        return self.data.boxes[self.data.regions(i)].astype(np.float64)

    def flip_captions(self, captions: torch.Tensor) -> torch.Tensor:
        out = captions.clone()
        for a, b in self._swap.items():
            out[captions == a] = b
        return out

    def __getitem__(self, i: int) -> Optional[Dict]:
        d = self.data
        path = d.path(i)
        try:
            img = read_image(path)
        except ImageReadError as e:
            logger.warning("skipping unreadable image: %s", e)
            return None
        h0, w0 = int(d.heights[i]), int(d.widths[i])
        sl = d.regions(i)
        boxes = d.boxes[sl].astype(np.float32).copy()
        if img.shape[0] != h0 or img.shape[1] != w0:
            # recorded size disagrees with the file: trust the pixels, rescale the boxes
            sx, sy = img.shape[1] / max(w0, 1), img.shape[0] / max(h0, 1)
            boxes[:, [0, 2]] *= sx
            boxes[:, [1, 3]] *= sy
            h0, w0 = img.shape[:2]
        img, scale = resize_longest_side(img, self.max_size)
        hs, ws = img.shape[:2]
        boxes_xyxy = xywh_to_xyxy(boxes) * scale
        captions = d.captions[sl].astype(np.int64)
        if self._id_map is not None:
            captions = self._id_map[captions]
        captions = torch.from_numpy(captions)
        image_caps = self.image_caption_tokens(i)
        image_caption_ids = self.encode_image_captions(image_caps) if self._caption_ids is not None else None
        if self.flip and torch.rand(()) < 0.5:
            img = img[:, ::-1]
            x1 = ws - boxes_xyxy[:, 2]
            x2 = ws - boxes_xyxy[:, 0]
            boxes_xyxy[:, 0], boxes_xyxy[:, 2] = x1, x2
            captions = self.flip_captions(captions)
            if image_caption_ids is not None:
                image_caption_ids = self.flip_captions(image_caption_ids)
        image = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous()
        inst = Instances(
            (hs, ws),
            gt_boxes=torch.from_numpy(np.ascontiguousarray(boxes_xyxy, dtype=np.float32)).reshape(-1, 4),
            gt_captions=captions,
        )
        item = {
            "image": image,
            "image_id": int(d.image_ids[i]),
            "file_name": path,
            "height": h0,
            "width": w0,
            "scale": float(scale),
            "instances": inst,
        }
        if image_caption_ids is not None:
            item["image_captions"] = image_caption_ids
            item["gt_image_captions"] = [" ".join(t) for t in image_caps]
        return item


def collate(batch: List[Optional[Dict]]) -> List[Dict]:
    """Keep the list of dicts; drop items whose image could not be read."""
    return [b for b in batch if b is not None]

"""The region index: every region of an image collection, on disk, memory-mapped.

N: regions (of a shard or of the index), D: region code size, E: joint embedding size.

Layout of an index directory::

    manifest.json                 the only file a reader trusts (replaced atomically), see below
    index.lock                    taken (flock) by a writer, so two indexers cannot interleave
    shards/<name>/
        meta.json                 {"images": [{"path", "width", "height", "start", "count"}], "num_regions"}
        captions.json             [caption, ...] (N), read lazily
        boxes.npy      float32 (N, 4)   [x, y, w, h] in original-image pixels
        scores.npy     float32 (N,)     the detector's score (sigmoid of objectness)
        image_index.npy int32  (N,)     index into meta["images"]
        codes.npy      float16|float32 (N, D)  region codes (the language model's input)
        embeddings.npy float32 (N, E)   joint embeddings, L2-normalised (absent without an embedding head)

    manifest.json = {"format_version", "checkpoint": {"path", "sha256", "size", "mtime_ns"},
                     "region_dim", "embed_dim" (0: no embeddings), "codes_dtype",
                     "shards": [{"name", "num_images", "num_regions"}], "num_images", "num_regions",
                     "options": {...how the regions were produced...}, "updated"}

Crash safety. A shard is written into ``shards/.tmp-<name>-<pid>/`` (every file fsynced), renamed
to ``shards/<name>/`` in one step, and only then listed in a new manifest written next to the old
one and ``os.replace``-d over it. Killed at any point, the previous manifest is intact and lists
only complete shards; a temporary directory or an unlisted shard left behind is ignored by readers
and deleted by the next writer, whose images are then indexed again.

Arrays are opened with ``np.load(mmap_mode="r")``: opening an index of millions of regions costs
only the manifest and the per-shard image lists; searches stream the arrays from the page cache.
The checkpoint the regions came from is recorded (path + sha256 of the file); querying with another
model raises :class:`CheckpointMismatchError` saying which is which.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from densecap.utils.io import atomic_write_json

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARDS = "shards"
LOCK = "index.lock"

__all__ = [
    "RegionIndex", "ImageRecord", "RegionIndexError", "CheckpointMismatchError", "checkpoint_identity", "file_sha256",
]


class RegionIndexError(RuntimeError):
    """A problem with an index directory (missing, unreadable, incompatible, locked)."""


class CheckpointMismatchError(RegionIndexError):
    """The index was built with a different model checkpoint than the one in use."""


# ------------------------------------------------------------------------------------------
# checkpoint identity
# ------------------------------------------------------------------------------------------
def file_sha256(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def checkpoint_identity(path: str, known: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """``{"path", "sha256", "size", "mtime_ns"}`` of a checkpoint file.

    When ``known`` (a recorded identity) names the same file with the same size and modification
    time, its sha256 is reused instead of re-reading a possibly large file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    ap = os.path.abspath(path)
    st = os.stat(ap)
    if known and known.get("path") == ap and known.get("size") == st.st_size and known.get("mtime_ns") == st.st_mtime_ns:
        sha = known["sha256"]
    else:
        sha = file_sha256(ap)
    return {"path": ap, "sha256": sha, "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


# ------------------------------------------------------------------------------------------
# records and shards
# ------------------------------------------------------------------------------------------
@dataclass
class ImageRecord:
    """The regions of one image, as the indexer hands them to :meth:`RegionIndex.add_shard`."""

    path: str
    width: int
    height: int
    boxes: np.ndarray  # n 4, [x, y, w, h] original pixels
    scores: np.ndarray  # n
    captions: List[str]
    codes: np.ndarray  # n D
    embeddings: Optional[np.ndarray] = None  # n E


@dataclass
class Shard:
    name: str
    root: str
    images: List[Dict[str, Any]]
    boxes: np.ndarray  # N 4 (memmap)
    scores: np.ndarray  # N
    image_index: np.ndarray  # N
    codes: np.ndarray  # N D
    embeddings: Optional[np.ndarray]  # N E
    _captions: Optional[List[str]] = field(default=None, repr=False)

    @property
    def num_regions(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def captions(self) -> List[str]:
        if self._captions is None:
            with open(os.path.join(self.root, "captions.json"), "r", encoding="utf-8") as f:
                self._captions = json.load(f)
        return self._captions


def _save_npy(path: str, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def _save_json(path: str, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_shard(shard_dir: str, records: Sequence[ImageRecord], *, codes_dtype: str, embed_dim: int) -> int:
    """Write the files of one shard into ``shard_dir`` (which must not exist). Returns N."""
    os.makedirs(shard_dir)
    images, boxes, scores, idx, codes, embs, caps = [], [], [], [], [], [], []
    start = 0
    for i, r in enumerate(records):
        n = len(r.captions)
        if not (len(r.boxes) == len(r.scores) == len(r.codes) == n):
            raise ValueError(f"{r.path}: {len(r.boxes)} boxes, {len(r.scores)} scores, {len(r.codes)} codes, {n} captions")
        images.append({"path": r.path, "width": int(r.width), "height": int(r.height), "start": start, "count": n})
        start += n
        boxes.append(np.asarray(r.boxes, np.float32).reshape(-1, 4))
        scores.append(np.asarray(r.scores, np.float32).reshape(-1))
        idx.append(np.full(n, i, np.int32))
        codes.append(np.asarray(r.codes, np.float32).reshape(n, -1))
        caps.extend(str(c) for c in r.captions)
        if embed_dim:
            if r.embeddings is None:
                raise ValueError(f"{r.path}: the index stores embeddings but this record has none")
            embs.append(np.asarray(r.embeddings, np.float32).reshape(n, embed_dim))
    d = codes[0].shape[1] if codes else 0
    _save_npy(os.path.join(shard_dir, "boxes.npy"), np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32))
    _save_npy(os.path.join(shard_dir, "scores.npy"), np.concatenate(scores) if scores else np.zeros(0, np.float32))
    _save_npy(os.path.join(shard_dir, "image_index.npy"), np.concatenate(idx) if idx else np.zeros(0, np.int32))
    _save_npy(os.path.join(shard_dir, "codes.npy"), (np.concatenate(codes) if codes else np.zeros((0, d), np.float32)).astype(codes_dtype))
    if embed_dim:
        _save_npy(os.path.join(shard_dir, "embeddings.npy"), np.concatenate(embs) if embs else np.zeros((0, embed_dim), np.float32))
    _save_json(os.path.join(shard_dir, "captions.json"), caps)
    _save_json(os.path.join(shard_dir, "meta.json"), {"images": images, "num_regions": start})
    _fsync_dir(shard_dir)
    return start


def _load_shard(root: str, name: str, embed_dim: int) -> Shard:
    d = os.path.join(root, SHARDS, name)
    try:
        with open(os.path.join(d, "meta.json"), "r", encoding="utf-8") as f:
            meta = json.load(f)
        load = lambda n: np.load(os.path.join(d, n), mmap_mode="r", allow_pickle=False)  # noqa: E731
        shard = Shard(
            name=name,
            root=d,
            images=meta["images"],
            boxes=load("boxes.npy"),
            scores=load("scores.npy"),
            image_index=load("image_index.npy"),
            codes=load("codes.npy"),
            embeddings=load("embeddings.npy") if embed_dim else None,
        )
    except (OSError, ValueError, KeyError) as e:
        raise RegionIndexError(f"{d}: shard listed in the manifest is unreadable ({type(e).__name__}: {e})") from e
    if shard.num_regions != meta["num_regions"]:
        raise RegionIndexError(f"{d}: {shard.num_regions} regions on disk, {meta['num_regions']} in its meta.json")
    return shard


# ------------------------------------------------------------------------------------------
# the index
# ------------------------------------------------------------------------------------------
class RegionIndex:
    """An index directory, open for reading (and for appending with :meth:`add_shard`)."""

    def __init__(self, root: str, manifest: Dict[str, Any]) -> None:
        self.root = os.path.abspath(root)
        self.manifest = manifest
        self.shards: List[Shard] = [_load_shard(self.root, s["name"], self.embed_dim) for s in manifest["shards"]]
        self._offsets = np.cumsum([0] + [s.num_regions for s in self.shards]).astype(np.int64)
        self._lock_fd: Optional[int] = None
        self._ann = None  # the FAISS fast stage, opened (memory-mapped) on first use

    # ---- opening -----------------------------------------------------------------------------
    @staticmethod
    def exists(root: str) -> bool:
        return os.path.isfile(os.path.join(root, MANIFEST))

    @classmethod
    def open(cls, root: str) -> "RegionIndex":
        path = os.path.join(root, MANIFEST)
        if not os.path.isfile(path):
            raise RegionIndexError(f"{root}: not a region index (no {MANIFEST}); build one with 'tools/retrieve.py index'")
        with open(path, "r", encoding="utf-8") as f:
            try:
                manifest = json.load(f)
            except json.JSONDecodeError as e:
                raise RegionIndexError(f"{path}: unreadable manifest ({e})") from e
        if manifest.get("format_version") != FORMAT_VERSION:
            raise RegionIndexError(f"{path}: index format {manifest.get('format_version')}, this code reads {FORMAT_VERSION}")
        return cls(root, manifest)

    @classmethod
    def create(
        cls,
        root: str,
        *,
        checkpoint: Dict[str, Any],
        region_dim: int,
        embed_dim: int,
        codes_dtype: str = "float16",
        options: Optional[Dict[str, Any]] = None,
    ) -> "RegionIndex":
        if cls.exists(root):
            raise RegionIndexError(f"{root}: an index already exists here")
        if codes_dtype not in ("float16", "float32"):
            raise ValueError(f"codes_dtype must be float16 or float32, got {codes_dtype!r}")
        os.makedirs(os.path.join(root, SHARDS), exist_ok=True)
        manifest = {
            "format_version": FORMAT_VERSION,
            "checkpoint": dict(checkpoint),
            "region_dim": int(region_dim),
            "embed_dim": int(embed_dim),
            "codes_dtype": codes_dtype,
            "shards": [],
            "num_images": 0,
            "num_regions": 0,
            "options": dict(options or {}),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        atomic_write_json(os.path.join(root, MANIFEST), manifest, indent=1)
        return cls(root, manifest)

    # ---- properties --------------------------------------------------------------------------
    @property
    def num_regions(self) -> int:
        return int(self._offsets[-1])

    @property
    def num_images(self) -> int:
        return int(sum(len(s.images) for s in self.shards))

    @property
    def region_dim(self) -> int:
        return int(self.manifest["region_dim"])

    @property
    def embed_dim(self) -> int:
        return int(self.manifest["embed_dim"])

    @property
    def has_embeddings(self) -> bool:
        return self.embed_dim > 0

    @property
    def checkpoint(self) -> Dict[str, Any]:
        return self.manifest["checkpoint"]

    @property
    def ann_params(self) -> Dict[str, Any]:
        """``manifest["ann"]``: the fast stage's type and parameters (``{}``: exact scan of the
        embeddings, as for an index built before FAISS support); see :mod:`densecap.retrieval.ann`."""
        return dict(self.manifest.get("ann") or {})

    def ann(self):
        """The FAISS fast stage (:class:`densecap.retrieval.ann.AnnIndex`), memory-mapped; None when flat."""
        params = self.manifest.get("ann") or {}
        if params.get("type", "flat") == "flat":
            return None
        if self._ann is None:
            from .ann import open_ann

            self._ann = open_ann(self.root, params, mmap=True)
        return self._ann

    def done_paths(self) -> set:
        return {im["path"] for s in self.shards for im in s.images}

    def iter_shards(self) -> Iterator[Tuple[int, Shard]]:
        """``(global offset of the shard's first region, shard)``."""
        for off, s in zip(self._offsets[:-1], self.shards):
            yield int(off), s

    def locate(self, ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Global region ids -> (shard number, local id)."""
        ids = np.asarray(ids, np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.num_regions):
            raise IndexError(f"region id out of range 0..{self.num_regions - 1}")
        sh = np.searchsorted(self._offsets, ids, side="right") - 1
        return sh, ids - self._offsets[sh]

    def _gather(self, ids: np.ndarray, attr: str) -> np.ndarray:
        sh, loc = self.locate(ids)
        first = getattr(self.shards[0], attr)
        out = np.empty((len(ids),) + first.shape[1:], dtype=np.float32 if attr in ("codes", "embeddings") else first.dtype)
        for s in np.unique(sh):
            m = sh == s
            order = np.argsort(loc[m], kind="stable")  # sorted reads from the memmap
            rows = np.asarray(getattr(self.shards[s], attr)[loc[m][order]])
            tmp = np.empty_like(rows)
            tmp[order] = rows
            out[m] = tmp
        return out

    def gather_codes(self, ids: np.ndarray) -> np.ndarray:
        """float32 (k, D) region codes of global region ids."""
        return self._gather(ids, "codes")

    def gather_boxes(self, ids: np.ndarray) -> np.ndarray:
        """float32 (k, 4) [x, y, w, h] boxes of global region ids."""
        return self._gather(ids, "boxes").astype(np.float32)

    def gather_image_keys(self, ids: np.ndarray) -> np.ndarray:
        """int64 (k,): equal for regions of one image of the index, different across images."""
        sh, _ = self.locate(ids)
        return (sh.astype(np.int64) << 32) + self._gather(ids, "image_index").astype(np.int64)

    def gather_embeddings(self, ids: np.ndarray) -> np.ndarray:
        if not self.has_embeddings:
            raise RegionIndexError(f"{self.root}: this index has no joint embeddings")
        return self._gather(ids, "embeddings")

    def region(self, rid: int) -> Dict[str, Any]:
        """``{"id", "image", "box": [x, y, w, h], "score", "caption", "width", "height"}`` of one region."""
        sh, loc = self.locate(np.array([rid]))
        s, i = self.shards[int(sh[0])], int(loc[0])
        im = s.images[int(s.image_index[i])]
        return {
            "id": int(rid),
            "image": im["path"],
            "box": [float(v) for v in np.asarray(s.boxes[i], np.float64)],
            "score": float(s.scores[i]),
            "caption": s.captions[i],
            "width": int(im["width"]),
            "height": int(im["height"]),
        }

    def images(self) -> Iterator[Tuple[int, Dict[str, Any]]]:
        """``(global id of the image's first region, image entry)`` for every image."""
        for off, s in self.iter_shards():
            for im in s.images:
                yield off + int(im["start"]), im

    # ---- checkpoint --------------------------------------------------------------------------
    def verify(self, identity: Dict[str, Any]) -> None:
        """Raise :class:`CheckpointMismatchError` unless ``identity`` (see :func:`checkpoint_identity`)
        is the checkpoint this index was built with."""
        rec = self.checkpoint
        if identity.get("sha256") != rec.get("sha256"):
            raise CheckpointMismatchError(
                f"model mismatch: index {self.root} was built with checkpoint {rec.get('path')} "
                f"(sha256 {str(rec.get('sha256'))[:12]}), but the model in use is {identity.get('path')} "
                f"(sha256 {str(identity.get('sha256'))[:12]}). Region codes of one model mean nothing to "
                f"another: use the index's checkpoint, or build a new index with this one"
            )

    def check_checkpoint(self, weights: Optional[str] = None) -> Dict[str, Any]:
        """Identity of the checkpoint to use with this index; raise if it is not the recorded one.

        ``weights`` None = the recorded path (an error if that file is gone or was changed)."""
        rec = self.checkpoint
        path = weights or rec["path"]
        if not os.path.isfile(path):
            raise CheckpointMismatchError(
                f"index {self.root} was built with checkpoint {rec['path']} (sha256 {rec['sha256'][:12]}), "
                f"which no longer exists; pass --weights with that model"
            )
        ident = checkpoint_identity(path, known=rec)
        self.verify(ident)
        return ident

    # ---- writing -----------------------------------------------------------------------------
    def lock(self) -> None:
        """Take the writer lock (non-blocking); also removes what an interrupted writer left."""
        import fcntl

        if self._lock_fd is not None:
            return
        fd = os.open(os.path.join(self.root, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RegionIndexError(f"{self.root}: another process is writing this index") from None
        self._lock_fd = fd
        self.cleanup()

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def cleanup(self) -> List[str]:
        """Delete temporary and unlisted shard directories (left by a killed writer)."""
        listed = {s["name"] for s in self.manifest["shards"]}
        removed = []
        d = os.path.join(self.root, SHARDS)
        for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            if name not in listed:
                shutil.rmtree(os.path.join(d, name), ignore_errors=True)
                removed.append(name)
        if removed:
            logger.info("%s: removed %d incomplete shard(s) of an interrupted run: %s", self.root, len(removed), removed)
        return removed

    def add_shard(self, records: Sequence[ImageRecord]) -> Optional[str]:
        """Append the records as one new shard (crash-safe, see the module docstring)."""
        if self._lock_fd is None:
            raise RegionIndexError("add_shard needs the writer lock: call index.lock() first")
        records = [r for r in records]
        if not records:
            return None
        for r in records:
            if len(r.codes) and np.asarray(r.codes).shape[1] != self.region_dim:
                raise ValueError(f"{r.path}: region codes of size {np.asarray(r.codes).shape[1]}, index has {self.region_dim}")
        seq, name = self._next_name()
        n = self._publish(name, lambda tmp: write_shard(tmp, records, codes_dtype=self.manifest["codes_dtype"],
                                                        embed_dim=self.embed_dim))
        manifest = dict(self.manifest)
        manifest["next_shard"] = seq + 1
        manifest["shards"] = list(self.manifest["shards"]) + [{"name": name, "num_images": len(records), "num_regions": n}]
        manifest["num_images"] = int(self.manifest["num_images"]) + len(records)
        manifest["num_regions"] = int(self.manifest["num_regions"]) + n
        manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        self._write_manifest(manifest)
        self.manifest = manifest
        self.shards.append(_load_shard(self.root, name, self.embed_dim))
        self._offsets = np.append(self._offsets, self._offsets[-1] + n)
        return name

    def adopt(self, part: "RegionIndex") -> int:
        """Append every shard of another index (``part``, same checkpoint and sizes) to this one, in
        its order, with one manifest update (crash-safe like :meth:`add_shard`: files are hard-linked,
        or copied across filesystems, into new shard folders, then listed). Returns the images added."""
        if self._lock_fd is None:
            raise RegionIndexError("adopt needs the writer lock: call index.lock() first")
        part.verify(self.checkpoint)
        if (part.region_dim, part.embed_dim, part.manifest["codes_dtype"]) != (self.region_dim, self.embed_dim,
                                                                             self.manifest["codes_dtype"]):
            raise RegionIndexError(f"{part.root}: region/embedding sizes or codes dtype differ from {self.root}")
        entries, seq = [], None
        for sh_meta, sh in zip(part.manifest["shards"], part.shards):
            seq, name = self._next_name() if seq is None else (seq + 1, f"shard_{seq + 1:06d}")

            def write(tmp: str, src: str = sh.root) -> int:
                os.makedirs(tmp)
                for fname in sorted(os.listdir(src)):
                    try:
                        os.link(os.path.join(src, fname), os.path.join(tmp, fname))
                    except OSError:
                        shutil.copy2(os.path.join(src, fname), os.path.join(tmp, fname))
                _fsync_dir(tmp)
                return sh.num_regions

            self._publish(name, write)
            entries.append({"name": name, "num_images": int(sh_meta["num_images"]), "num_regions": sh.num_regions})
        if not entries:
            return 0
        manifest = dict(self.manifest)
        manifest["next_shard"] = seq + 1
        manifest["shards"] = list(self.manifest["shards"]) + entries
        manifest["num_images"] = int(self.manifest["num_images"]) + sum(e["num_images"] for e in entries)
        manifest["num_regions"] = int(self.manifest["num_regions"]) + sum(e["num_regions"] for e in entries)
        manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        self._write_manifest(manifest)
        self.manifest = manifest
        for e in entries:
            self.shards.append(_load_shard(self.root, e["name"], self.embed_dim))
            self._offsets = np.append(self._offsets, self._offsets[-1] + e["num_regions"])
        return sum(e["num_images"] for e in entries)

    def _next_name(self) -> Tuple[int, str]:
        seq = int(self.manifest.get("next_shard", len(self.manifest["shards"])))
        return seq, f"shard_{seq:06d}"

    def _publish(self, name: str, write) -> int:
        """Run ``write(tmp_dir)`` and rename the directory to ``shards/<name>`` (not yet listed)."""
        shards_dir = os.path.join(self.root, SHARDS)
        final = os.path.join(shards_dir, name)
        if os.path.exists(final):  # an unlisted leftover of a crash
            shutil.rmtree(final)
        tmp = os.path.join(shards_dir, f".tmp-{name}-{os.getpid()}")
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        try:
            n = write(tmp)
            os.rename(tmp, final)
            _fsync_dir(shards_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return n

    def compact(self, chunk: int = 65536) -> Optional[str]:
        """Merge all shards into one (streamed through memory maps, crash-safe like add_shard):
        a collection indexed in many small runs then opens and searches as one set of arrays."""
        if self._lock_fd is None:
            raise RegionIndexError("compact needs the writer lock: call index.lock() first")
        if len(self.shards) <= 1:
            return None
        n_total = self.num_regions

        def write(tmp: str) -> int:
            os.makedirs(tmp)
            first = self.shards[0]
            specs = {"boxes.npy": ("boxes", np.float32), "scores.npy": ("scores", np.float32),
                     "image_index.npy": ("image_index", np.int32), "codes.npy": ("codes", first.codes.dtype)}
            if self.embed_dim:
                specs["embeddings.npy"] = ("embeddings", np.float32)
            images, captions, img_off = [], [], 0
            for off, sh in self.iter_shards():
                for im in sh.images:
                    images.append(dict(im, start=int(im["start"]) + off))
                captions.extend(sh.captions)
            for fname, (attr, dtype) in specs.items():
                shape = (n_total,) + getattr(first, attr).shape[1:]
                out = np.lib.format.open_memmap(os.path.join(tmp, fname), mode="w+", dtype=dtype, shape=shape)
                img_off = 0
                for off, sh in self.iter_shards():
                    src = getattr(sh, attr)
                    for a in range(0, sh.num_regions, chunk):
                        block = np.asarray(src[a : a + chunk])
                        out[off + a : off + a + len(block)] = block + img_off if attr == "image_index" else block
                    img_off += len(sh.images)
                out.flush()
                del out
                with open(os.path.join(tmp, fname), "rb+") as f:
                    os.fsync(f.fileno())
            _save_json(os.path.join(tmp, "captions.json"), captions)
            _save_json(os.path.join(tmp, "meta.json"), {"images": images, "num_regions": n_total})
            _fsync_dir(tmp)
            return n_total

        seq, name = self._next_name()
        self._publish(name, write)
        manifest = dict(self.manifest)
        manifest["next_shard"] = seq + 1
        manifest["shards"] = [{"name": name, "num_images": self.num_images, "num_regions": n_total}]
        manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        self._write_manifest(manifest)
        self.manifest = manifest
        self.shards = [_load_shard(self.root, name, self.embed_dim)]
        self._offsets = np.array([0, n_total], np.int64)
        self.cleanup()  # the merged shards are no longer listed
        return name

    def _write_manifest(self, manifest: Dict[str, Any]) -> None:
        atomic_write_json(os.path.join(self.root, MANIFEST), manifest, indent=1)

    def __enter__(self) -> "RegionIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.unlock()


# ------------------------------------------------------------------------------------------
# building: run the model over a collection
# ------------------------------------------------------------------------------------------
def index_images(
    rmodel,
    paths: Sequence[str],
    index_dir: str,
    *,
    batch_size: int = 4,
    shard_images: int = 256,
    max_boxes: int = 0,
    codes_dtype: str = "float16",
    progress: bool = True,
    _in_part: bool = False,
) -> Dict[str, Any]:
    """Add the images of ``paths`` not yet in the index at ``index_dir`` (created if needed).

    Under ``torchrun`` the images are split across the processes (:mod:`densecap.retrieval.sharded`).

    ``rmodel`` is a :class:`densecap.retrieval.search.RetrievalModel` (model + predictor +
    checkpoint identity). Images are run ``batch_size`` at a time and written every
    ``shard_images`` images as one shard, so a kill loses at most one shard's work. ``max_boxes``
    > 0 keeps only each image's best boxes. Returns counts and the unreadable files.
    """
    from tqdm import tqdm

    from densecap.data.image_io import ImageReadError
    from densecap.utils.comm import env_world_size

    if env_world_size() > 1 and not _in_part:  # under torchrun: this rank's shards, then a merge
        from .sharded import index_images_sharded

        return index_images_sharded(rmodel, paths, index_dir, batch_size=batch_size, shard_images=shard_images,
                                    max_boxes=max_boxes, codes_dtype=codes_dtype, progress=progress)
    if RegionIndex.exists(index_dir):
        index = RegionIndex.open(index_dir)
        rmodel.check_index(index)
    else:
        index = RegionIndex.create(
            index_dir,
            checkpoint=rmodel.checkpoint,
            region_dim=rmodel.region_dim,
            embed_dim=rmodel.embed_dim,
            codes_dtype=codes_dtype,
            options={"max_boxes": int(max_boxes), "image_size": rmodel.image_size},
        )
    errors: List[Dict[str, str]] = []
    with index:
        index.lock()
        done = index.done_paths()
        todo, seen = [], set()
        for p in paths:
            ap = os.path.abspath(p)
            if ap not in done and ap not in seen:
                todo.append(ap)
                seen.add(ap)
        skipped = len(paths) - len(todo)
        logger.info("%s: %d image(s) to index, %d already done", index_dir, len(todo), skipped)
        pending: List[ImageRecord] = []
        added = 0
        bar = tqdm(total=len(todo), desc="index", disable=not progress, dynamic_ncols=True, mininterval=2.0)
        for b in range(0, len(todo), batch_size):
            chunk = todo[b : b + batch_size]
            for p, pred in zip(chunk, rmodel.predictor.predict_paths(chunk)):
                if isinstance(pred, ImageReadError):
                    logger.warning("skipping %s", pred)
                    errors.append({"path": p, "error": str(pred)})
                    continue
                pending.append(rmodel.record_from_prediction(p, pred, max_boxes=max_boxes))
            bar.update(len(chunk))
            if len(pending) >= shard_images:
                index.add_shard(pending)
                added += len(pending)
                pending = []
        if pending:
            index.add_shard(pending)
            added += len(pending)
        bar.close()
        if index.ann_params:  # append the new regions to the fast stage's lists (no retraining)
            from .ann import update_ann

            update_ann(index)
    return {
        "index": os.path.abspath(index_dir),
        "added_images": added,
        "skipped_images": skipped,
        "errors": errors,
        "num_images": index.num_images,
        "num_regions": index.num_regions,
    }

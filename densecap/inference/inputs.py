"""Collect what ``tools/infer.py`` runs on: image files, folders, globs, video files and webcams.

:func:`collect_inputs` turns the command line's ``--input`` arguments into an :class:`InputSet`:
the image files and video files to process, in a stable order, plus the problems found while
collecting (a path that does not exist, a glob that matches nothing, a directory named like an
image). Nothing is capped: every image found is processed. Problems are *reported*, never raised,
so one bad argument does not stop the run. Folder scans pick files by extension (images and
videos; other files are counted and ignored) and skip hidden files and folders (names starting
with "."); a file named explicitly is always tried.

:func:`iter_items` then yields one :class:`InputItem` per image to caption: image files are read
lazily later by the predictor (with the project's one loader, ``densecap.data.image_io``), video
frames and webcam frames arrive decoded (RGB uint8 H x W x 3).

Every item carries a ``name`` that is unique within the run; it names the item's output files
(``vis/<name>.jpg``, ``features/<name>.npz``). Two inputs ``a/1.jpg`` and ``b/1.jpg`` become
``a__1`` and ``b__1``.
"""
from __future__ import annotations

import glob
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from densecap.data.image_io import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp")
_GLOB_CHARS = re.compile(r"[*?\[]")
_UNSAFE = re.compile(r"[^\w.\-+@=,]+", re.UNICODE)


@dataclass
class InputItem:
    """One image to caption.

    ``path`` is the image file (None for video/webcam frames, whose pixels are in ``image``).
    ``img_name`` is what results.json calls the image (the file's base name, as the original
    DenseCap; for frames ``<video file>#<frame index>``); ``name`` is unique in the run and names
    the output files; ``source`` is the video file or ``webcam:<index>`` for frames.
    """

    name: str
    img_name: str
    path: Optional[str] = None
    image: Optional[np.ndarray] = None
    source: Optional[str] = None
    frame_index: Optional[int] = None

    @property
    def display_path(self) -> str:
        if self.path is not None:
            return self.path
        return f"{self.source}#frame={self.frame_index}"


@dataclass
class InputSet:
    """What :func:`collect_inputs` found. ``errors`` holds ``(path, reason)`` pairs."""

    images: List[str] = field(default_factory=list)
    videos: List[str] = field(default_factory=list)
    errors: List[Tuple[str, str]] = field(default_factory=list)
    skipped_non_images: int = 0  # files in folders that are neither image nor video by extension

    def __len__(self) -> int:
        return len(self.images) + len(self.videos)


def is_image_name(path: str) -> bool:
    return os.path.splitext(os.path.normpath(path))[1].lower() in IMAGE_EXTENSIONS


def is_video_name(path: str) -> bool:
    return os.path.splitext(os.path.normpath(path))[1].lower() in VIDEO_EXTENSIONS


def _natural_key(path: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path)]


def _scan_dir(root: str, recursive: bool, out: InputSet) -> None:
    found: List[str] = []
    nested_dirs = 0
    if recursive:
        def unreadable(e: OSError) -> None:
            out.errors.append((e.filename or root, f"cannot list directory ({e.strerror or e})"))

        for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=False):
            dirnames.sort()
            for d in dirnames:
                if is_image_name(d) and not d.startswith("."):
                    # os.walk still descends into it; a folder named like an image is reported once
                    out.errors.append((os.path.join(dirpath, d), "is a directory, not an image file"))
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # no hidden folders
            found.extend(os.path.join(dirpath, f) for f in filenames if not f.startswith("."))
    else:
        try:
            entries = sorted(os.scandir(root), key=lambda e: e.name)
        except OSError as e:
            out.errors.append((root, f"cannot list directory ({e.strerror or e})"))
            return
        for e in entries:
            if e.name.startswith("."):  # hidden files (.DS_Store, ._IMG_1.jpg AppleDouble files)
                continue
            if e.is_dir():
                if is_image_name(e.name):
                    out.errors.append((e.path, "is a directory, not an image file"))
                else:
                    nested_dirs += 1
            else:
                found.append(e.path)
        if nested_dirs:
            logger.info("%s: %d sub-folder(s) not searched (use --recursive)", root, nested_dirs)
    for p in sorted(found, key=_natural_key):
        if is_image_name(p):
            out.images.append(p)
        elif is_video_name(p):
            out.videos.append(p)
        else:
            out.skipped_non_images += 1
            logger.debug("ignoring %s (not an image or video file name)", p)


def _add_path(p: str, recursive: bool, out: InputSet, from_glob: bool) -> None:
    if os.path.isdir(p):
        if is_image_name(p):
            out.errors.append((p, "is a directory, not an image file"))
        else:
            _scan_dir(p, recursive, out)
    elif os.path.exists(p):
        if is_video_name(p):
            out.videos.append(p)
        elif from_glob and not is_image_name(p):
            out.skipped_non_images += 1
        else:
            # a file named explicitly is tried as an image whatever its extension;
            # the loader reports it if it is not one
            out.images.append(p)
    else:
        out.errors.append((p, "file does not exist"))


def collect_inputs(specs: Sequence[str], *, recursive: bool = False) -> InputSet:
    """Expand ``--input`` arguments (files, folders, globs) into images and videos.

    Order: arguments in the order given; inside a folder or glob, natural sort order. A file
    reached twice (e.g. by a folder and a glob) is processed once. Nothing is capped.
    """
    out = InputSet()
    for spec in specs:
        spec = os.fspath(spec)
        if os.path.exists(spec) or not _GLOB_CHARS.search(spec):
            _add_path(spec, recursive, out, from_glob=False)
            continue
        matches = sorted(glob.glob(spec, recursive=True), key=_natural_key)
        if not matches:
            out.errors.append((spec, "no file matches this pattern"))
        for m in matches:
            _add_path(m, recursive, out, from_glob=True)
    out.images = _dedupe(out.images)
    out.videos = _dedupe(out.videos)
    if out.skipped_non_images:
        logger.info("ignored %d file(s) that are neither images nor videos by extension", out.skipped_non_images)
    return out


def _dedupe(paths: List[str]) -> List[str]:
    seen, kept = set(), []
    for p in paths:
        key = os.path.realpath(p)
        if key in seen:
            continue
        seen.add(key)
        kept.append(p)
    return kept


def _sanitize(s: str) -> str:
    s = _UNSAFE.sub("_", s).strip("._")
    return s or "image"


def unique_names(paths: Sequence[str]) -> List[str]:
    """A unique, file-system-safe output stem per path.

    The file's stem when it is unique. Stems shared by files in different folders get the
    shortest run of parent folder names that tells the folders apart (``a/1.jpg``, ``b/1.jpg`` ->
    ``a__1``, ``b__1``); files of one folder sharing a stem get their extension (``1_png``); a
    counter settles anything left. Comparison ignores case (case-insensitive file systems).
    """
    dirs = [os.path.normpath(os.path.dirname(os.path.abspath(p))).split(os.sep) for p in paths]
    base = [os.path.basename(p) for p in paths]
    stems = [_sanitize(os.path.splitext(b)[0]) for b in base]
    groups: Dict[str, List[int]] = {}
    for i, s in enumerate(stems):
        groups.setdefault(s.lower(), []).append(i)
    names = list(stems)
    for g in groups.values():
        if len(g) < 2:
            continue
        distinct = {tuple(dirs[i]) for i in g}
        if len(distinct) > 1:
            depth = 1
            while depth < max(len(d) for d in distinct) and len({d[-depth:] for d in distinct}) < len(distinct):
                depth += 1
            for i in g:
                prefix = "__".join(_sanitize(x) for x in dirs[i][-depth:] if x)
                names[i] = f"{prefix}__{stems[i]}" if prefix else stems[i]
        by_dir: Dict[tuple, List[int]] = {}
        for i in g:
            by_dir.setdefault(tuple(dirs[i]), []).append(i)
        for same in by_dir.values():
            if len(same) > 1:
                for i in same[1:]:  # the first keeps its name, the others get their extension
                    ext = os.path.splitext(base[i])[1].lstrip(".")
                    if ext:
                        names[i] = f"{names[i]}_{_sanitize(ext)}"
    seen: set = set()
    result = []
    for n in names:
        cand, k = n, 2
        while cand.lower() in seen:
            cand = f"{n}_{k}"
            k += 1
        seen.add(cand.lower())
        result.append(cand)
    return result


# ------------------------------------------------------------------------------------------
# video and webcam
# ------------------------------------------------------------------------------------------
class VideoOpenError(IOError):
    pass


def open_capture(source):
    """``cv2.VideoCapture`` for a file path or a webcam index; raises VideoOpenError if it fails."""
    import cv2

    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        cap.release()
        what = f"webcam {source}" if isinstance(source, int) else str(source)
        raise VideoOpenError(f"{what}: cannot open video (unsupported format, corrupt file or no such device)")
    return cap


def video_frame_count(path: str, stride: int) -> Optional[int]:
    """Frames that :func:`iter_video_frames` will yield, from the container's header (may be 0/unknown)."""
    import cv2

    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            return 0
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    finally:
        cap.release()
    if n <= 0:
        return None
    return (n + stride - 1) // stride


def iter_video_frames(source, stride: int = 1, max_frames: int = 0) -> Iterator[Tuple[int, np.ndarray]]:
    """Yield ``(frame_index, RGB uint8 HxWx3)`` for every ``stride``-th frame (0, stride, 2*stride...).

    ``source`` is a video path or a webcam index. ``max_frames`` > 0 stops after that many
    yielded frames. Raises :class:`VideoOpenError` when the source cannot be opened.
    """
    import cv2

    if stride < 1:
        raise ValueError(f"video stride must be >= 1, got {stride}")
    cap = open_capture(source)
    try:
        idx, done = 0, 0
        while True:
            if idx % stride == 0:
                ok, bgr = cap.read()
                if not ok or bgr is None:
                    break
                yield idx, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                done += 1
                if max_frames and done >= max_frames:
                    break
            elif not cap.grab():  # skipped frames are not decoded
                break
            idx += 1
    finally:
        cap.release()


def video_frame_name(video_name: str, frame_index: int) -> str:
    return f"{video_name}_f{frame_index:06d}"


def has_display() -> bool:
    """True when a window can be shown (a desktop session, or an X/Wayland display on Linux)."""
    if sys.platform.startswith("linux") or "bsd" in sys.platform:
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True

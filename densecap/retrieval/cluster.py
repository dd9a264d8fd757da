"""Caption-based clustering of an indexed collection (images grouped by what their captions say).

I: images, M: captions per image used, U: distinct captions, E: joint embedding size, K: clusters.

Each image is described by its best ``captions_per_image`` generated captions; every distinct
caption is embedded by the joint model's sentence encoder (L2-normalised), and the image's vector
is the detector-score-weighted mean of its captions' embeddings, L2-normalised again. The images
are grouped by k-means (k-means++ seeding, several restarts, seeded; plain numpy). A cluster's
"most typical captions" are the captions of its images nearest to its centroid.

Output directory::

    clusters.json      {"k", "seed", "clusters": [{"id", "size", "typical_captions", "images"}],
                        "assignment": {image path: cluster id}, "inertia"}
    cluster_<id>.jpg   contact sheet: the cluster's images nearest to the centroid (with their best
                       box and caption), titled with its typical captions
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from densecap.utils.io import atomic_write_json

logger = logging.getLogger(__name__)

__all__ = ["kmeans", "image_vectors", "cluster_index"]


def _sq_dists(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (N, K), clipped at 0."""
    d = (x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    n = len(x)
    centers = [x[int(rng.integers(n))]]
    d2 = _sq_dists(x, np.asarray(centers))[:, 0]
    for _ in range(1, k):
        total = d2.sum()
        i = int(rng.choice(n, p=d2 / total)) if total > 0 else int(rng.integers(n))
        centers.append(x[i])
        d2 = np.minimum(d2, _sq_dists(x, x[i : i + 1])[:, 0])
    return np.asarray(centers, dtype=np.float64)


def kmeans(
    x: np.ndarray, k: int, *, seed: int = 0, n_init: int = 4, max_iter: int = 100, tol: float = 1e-6
) -> Tuple[np.ndarray, np.ndarray, float]:
    """k-means (Lloyd) with k-means++ seeding; the best of ``n_init`` runs by inertia.

    x: (N, F). Returns (labels int64 (N,), centers float64 (K, F), inertia). An empty cluster is
    re-seeded with the point farthest from its centre. Deterministic for a given seed.
    """
    x = np.asarray(x, np.float64)
    n = len(x)
    if k < 1 or k > n:
        raise ValueError(f"k must be in 1..{n} (the number of points), got {k}")
    rng = np.random.default_rng(seed)
    best: Optional[Tuple[np.ndarray, np.ndarray, float]] = None
    for _ in range(max(1, n_init)):
        c = _kmeans_pp(x, k, rng)
        prev = np.inf
        for _ in range(max_iter):
            d = _sq_dists(x, c)  # N K
            labels = d.argmin(1)
            inertia = float(d[np.arange(n), labels].sum())
            for j in range(k):
                m = labels == j
                if m.any():
                    c[j] = x[m].mean(0)
                else:
                    far = int(d[np.arange(n), labels].argmax())
                    c[j] = x[far]
                    labels[far] = j
            if prev - inertia <= tol * max(prev, 1e-12):
                break
            prev = inertia
        d = _sq_dists(x, c)
        labels = d.argmin(1)
        inertia = float(d[np.arange(n), labels].sum())
        if best is None or inertia < best[2]:
            best = (labels.astype(np.int64), c.copy(), inertia)
    assert best is not None
    return best


def image_vectors(index, rmodel, captions_per_image: int = 20) -> Tuple[List[Dict[str, Any]], np.ndarray, List[List[Tuple[str, float, int]]]]:
    """(images, vectors (I, E), per image [(caption, score, region id)]) for images with regions."""
    images, per_image = [], []
    for first, im in index.images():
        if im["count"] == 0:
            continue
        n = min(int(captions_per_image), int(im["count"]))
        ids = list(range(first, first + n))  # regions are stored best first
        caps = [index.region(i) for i in ids]
        images.append(im)
        per_image.append([(c["caption"], float(c["score"]), c["id"]) for c in caps])
    uniq = sorted({c for caps in per_image for c, _, _ in caps})
    if not uniq:
        return images, np.zeros((0, rmodel.embed_dim or 1), np.float32), per_image
    emb = rmodel.embed_sentences(rmodel.encode_captions(uniq))  # U E
    pos = {c: i for i, c in enumerate(uniq)}
    vecs = np.zeros((len(images), emb.shape[1]), np.float64)
    for i, caps in enumerate(per_image):
        w = np.array([max(s, 1e-6) for _, s, _ in caps])
        vecs[i] = (w[:, None] * emb[[pos[c] for c, _, _ in caps]]).sum(0) / w.sum()
    vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    return images, vecs, per_image


def cluster_index(index, rmodel, *, k: int, output: str, captions_per_image: int = 20, seed: int = 0,
                  typical: int = 5, sheet_images: int = 15) -> Dict[str, Any]:
    """Cluster the index's images, write ``clusters.json`` and one contact sheet per cluster."""
    from .visualize import contact_sheet

    rmodel.check_index(index)
    if rmodel.embedding_head is None:
        from .search import NO_EMBEDDING_HINT, NoEmbeddingError

        raise NoEmbeddingError(f"clustering needs the joint embedding; {NO_EMBEDDING_HINT}")
    images, vecs, per_image = image_vectors(index, rmodel, captions_per_image)
    if len(images) < k:
        raise ValueError(f"--k {k} but the index has only {len(images)} images with regions")
    labels, centers, inertia = kmeans(vecs, k, seed=seed)
    cap_emb_cache: Dict[str, np.ndarray] = {}
    os.makedirs(output, exist_ok=True)
    clusters = []
    for j in range(k):
        members = np.nonzero(labels == j)[0]
        centre = centers[j] / max(np.linalg.norm(centers[j]), 1e-12)
        order = members[np.argsort(-(vecs[members] @ centre), kind="stable")]
        caps = sorted({c for m in members for c, _, _ in per_image[m]})
        missing = [c for c in caps if c not in cap_emb_cache]
        if missing:
            for c, e in zip(missing, rmodel.embed_sentences(rmodel.encode_captions(missing))):
                cap_emb_cache[c] = e
        if caps:
            sims = np.array([cap_emb_cache[c] @ centre for c in caps])
            top = [caps[i] for i in np.argsort(-sims, kind="stable")[:typical]]
        else:
            top = []
        sheet = os.path.join(output, f"cluster_{j:03d}.jpg")
        tiles = []
        for m in order[:sheet_images]:
            cap, score, rid = per_image[m][0]
            r = index.region(rid)
            tiles.append({"image": images[m]["path"], "box": r["box"], "caption": cap, "label": os.path.basename(images[m]["path"])})
        contact_sheet(tiles, sheet, title=[f"cluster {j}: {len(members)} images"] + [f"- {c}" for c in top], tile=192, cols=5)
        clusters.append({"id": j, "size": int(len(members)), "typical_captions": top,
                         "images": [images[m]["path"] for m in order], "contact_sheet": sheet})
    summary = {
        "k": int(k),
        "seed": int(seed),
        "captions_per_image": int(captions_per_image),
        "inertia": float(inertia),
        "clusters": clusters,
        "assignment": {images[i]["path"]: int(labels[i]) for i in range(len(images))},
    }
    path = os.path.join(output, "clusters.json")
    atomic_write_json(path, summary, indent=1)
    summary["assignment_file"] = path
    return summary

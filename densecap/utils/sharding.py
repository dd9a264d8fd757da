"""Work split across the processes of a ``torchrun`` job, resumable shard by shard.

The input list (in its deterministic order) is cut into shards of ``shard_size`` items; shard k goes
to rank ``k % world_size``. A shard's output is written into a temporary folder and renamed to its
final name once complete, with a ``DONE`` marker naming its inputs. A rerun (any number of ranks)
skips every shard whose marker matches its inputs, so completed work is never redone and a failed
rank's shards are the only ones run again. The shard name carries a hash of its inputs: a changed
input list gives new shards rather than reusing stale ones.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from typing import List, Sequence

DONE = "DONE"

__all__ = ["Shard", "plan_shards", "rank_shards", "is_complete", "publish_shard", "tmp_dir"]


@dataclass
class Shard:
    index: int
    name: str
    items: List[str]

    @property
    def digest(self) -> str:
        return _digest(self.items)


def _digest(items: Sequence[str]) -> str:
    h = hashlib.sha1()
    for it in items:
        h.update(it.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()


def plan_shards(items: Sequence[str], shard_size: int) -> List[Shard]:
    """Consecutive shards of ``shard_size`` items: ``shard_<k>-<hash of its items>``."""
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    out = []
    for k, a in enumerate(range(0, len(items), shard_size)):
        chunk = list(items[a : a + shard_size])
        out.append(Shard(k, f"shard_{k:05d}-{_digest(chunk)[:10]}", chunk))
    return out


def rank_shards(shards: Sequence[Shard], rank: int, world_size: int) -> List[Shard]:
    return [s for s in shards if s.index % world_size == rank]


def is_complete(shard_dir: str, shard: Shard) -> bool:
    """True when ``shard_dir`` holds the finished output of ``shard`` (its marker names the same inputs)."""
    try:
        with open(os.path.join(shard_dir, DONE), "r", encoding="utf-8") as f:
            return json.load(f).get("digest") == shard.digest
    except (OSError, ValueError):
        return False


def tmp_dir(parent: str, shard: Shard) -> str:
    """A fresh temporary folder for writing ``shard`` (removed first if a killed run left it)."""
    d = os.path.join(parent, f".tmp-{shard.name}-{os.getpid()}")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def publish_shard(tmp: str, final: str, shard: Shard) -> None:
    """Write the marker into ``tmp`` (fsynced) and rename it to ``final`` in one step."""
    with open(os.path.join(tmp, DONE), "w", encoding="utf-8") as f:
        json.dump({"digest": shard.digest, "items": len(shard.items)}, f)
        f.flush()
        os.fsync(f.fileno())
    if os.path.exists(final):  # an incomplete leftover (no valid marker) of an earlier run
        shutil.rmtree(final)
    os.rename(tmp, final)

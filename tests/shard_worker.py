"""Entry point for the torchrun tests of sharded inference/indexing (tests/test_sharding.py).

    torchrun ... tests/shard_worker.py infer|retrieve ARGS...

Logs every image the model is run on to ``$SHARD_TEST_LOG.<rank>`` and, when ``$SHARD_TEST_FAIL_RANK``
is this rank, kills the process (exit 3, no cleanup) on its ``$SHARD_TEST_FAIL_AT``-th image: a
rank dying in the middle of a shard.
"""
import os
import sys

from densecap.inference.predictor import DenseCapPredictor

_seen = []
_orig = DenseCapPredictor.predict


def _predict(self, images, given_boxes=None, file_names=None):
    rank = os.environ.get("RANK", "0")
    names = list(file_names or [])
    for n in names:
        _seen.append(n)
        if rank == os.environ.get("SHARD_TEST_FAIL_RANK") and len(_seen) >= int(os.environ.get("SHARD_TEST_FAIL_AT", "1")):
            sys.stdout.flush()
            os._exit(3)
    with open(f"{os.environ['SHARD_TEST_LOG']}.{rank}", "a") as f:
        f.writelines(n + "\n" for n in names)
    return _orig(self, images, given_boxes, file_names=file_names)


DenseCapPredictor.predict = _predict

if __name__ == "__main__":
    which, argv = sys.argv[1], sys.argv[2:]
    if which == "infer":
        from densecap.inference.cli import main
    else:
        from densecap.retrieval.cli import main
    sys.exit(main(argv))

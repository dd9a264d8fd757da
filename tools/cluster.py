#!/usr/bin/env python
"""Group an index's images by what their captions say (joint sentence embeddings + k-means).

    python tools/cluster.py --index INDEX_DIR --k K --output DIR
"""
import sys

from densecap.retrieval.cli import cluster_main

if __name__ == "__main__":
    sys.exit(cluster_main())

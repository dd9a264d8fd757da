"""``python -m densecap.serve --weights CKPT [--index INDEX_DIR] ...`` (see :mod:`densecap.serve.cli`)."""
import sys

from densecap.serve.cli import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Train (or --eval-only) a densecap model. See ``densecap/engine/cli.py`` for the options."""
import sys

from densecap.engine.cli import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Region retrieval: ``index`` a collection, ``query`` it by text or region, ``eval`` the paper's
protocol. See ``densecap/retrieval/cli.py`` for the options."""
import sys

from densecap.retrieval.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m bench``: see bench/run.py (``scripts/bench`` sets up and calls this)."""
import sys

from bench.run import main

sys.exit(main())

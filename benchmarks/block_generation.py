"""Block-diffusion speed benchmark (same as ``llamadiff bench``); see llamadiff/bench.py."""

import sys

from llamadiff.bench import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m llamadiff``: the command line (see llamadiff.cli)."""

import sys

from llamadiff.cli import main

sys.exit(main())

"""``python -m edgeslim``: the command line (what ``torchrun … -m edgeslim run CONFIG`` starts on every rank)."""

import sys

from edgeslim.cli import main

sys.exit(main())

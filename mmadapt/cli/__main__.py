"""`python -m mmadapt.cli ...`: the same as the `mmadapt` command (used by accelerate launch and the tests)."""

import sys

from mmadapt.cli import main

sys.exit(main())

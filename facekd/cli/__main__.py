"""``python -m facekd.cli`` (what torchrun launches)."""

import sys

from facekd.cli.main import main

sys.exit(main())

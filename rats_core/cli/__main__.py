"""``python -m rats_core.cli`` (what ``torchrun``/``deepspeed`` launch) is ``rats``."""

import sys

from rats_core.cli.main import main

sys.exit(main())

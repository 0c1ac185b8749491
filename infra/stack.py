"""Entry point of ``infra/stack`` (run with the venv's python; ``infra/stack`` does that)."""

import sys

from stacklib.cli import main

sys.exit(main())

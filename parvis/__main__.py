"""`python -m parvis` (and `torchrun ... -m parvis`) runs the CLI."""

import sys

from parvis.cli.main import main

sys.exit(main())

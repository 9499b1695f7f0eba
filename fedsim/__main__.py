"""`python -m fedsim` = the `fedsim` command."""

import sys

from fedsim.cli import entry

sys.exit(entry())

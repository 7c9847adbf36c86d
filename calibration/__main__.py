"""`python -m calibration`: see calibration/cli.py."""
import sys

from calibration.cli import main

sys.exit(main())

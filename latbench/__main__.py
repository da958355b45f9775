"""`python -m latbench ...` runs the latbench command."""

import sys

from latbench.cli import main

sys.exit(main())

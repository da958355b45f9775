"""The `latbench` command as a script: `python cli.py ...` (the entry point is latbench.cli:main)."""

import sys

from latbench.cli import main

if __name__ == "__main__":
    sys.exit(main())

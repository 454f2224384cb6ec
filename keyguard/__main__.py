"""``python -m keyguard``."""

import sys

from keyguard.cli import main

if __name__ == "__main__":
    sys.exit(main())

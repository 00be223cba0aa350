"""`python -m premem`: the premem command."""

import sys

from premem.cli import main

if __name__ == "__main__":
    sys.exit(main())

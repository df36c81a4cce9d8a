"""`python -m larp ...`: the same as the `larp` command."""

import sys

from larp.cli import main

if __name__ == "__main__":
    sys.exit(main())

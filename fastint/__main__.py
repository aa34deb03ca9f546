"""``python -m fastint``: the command-line interface (see ``fastint.cli``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m annforge`` runs the ``annforge`` console script (see :mod:`annforge.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m annforge.bench`` = ``annforge bench``."""

import sys

from . import main

sys.exit(main())

"""The ``annforge`` console script: ``annforge bench [...]`` (see ``annforge bench --help``)."""

from __future__ import annotations

import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    """Dispatch ``annforge <command>``; ``bench`` is the only command so far."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print("usage: annforge bench [options]   (annforge bench --help for the options)")
        return 0 if args else 2
    if args[0] == "bench":
        from .bench import main as bench_main

        return bench_main(args[1:])
    print(f"annforge: unknown command {args[0]!r}; try `annforge bench --help`", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

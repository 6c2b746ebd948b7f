"""The ``annforge`` console script (also ``python -m annforge``).

Commands: ``annforge bench [...]`` (recall / QPS benchmarks, see ``annforge bench --help``) and
``annforge info`` (how this copy was built). ``annforge --version`` prints the version.

>>> main(["--version"])  # doctest: +ELLIPSIS
annforge ...
0
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

_COMMANDS = {
    "bench": "recall / QPS / latency benchmark of annforge and installed peers (annforge bench --help)",
    "info": "print the version, SIMD levels and build settings of this copy as JSON",
}


def _version() -> str:
    try:
        from . import __version__

        return __version__
    except ImportError:  # the compiled module is missing: still answer from the installed metadata
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("annforge")
        except PackageNotFoundError:
            return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: commands, ``--version`` and ``--help``."""
    p = argparse.ArgumentParser(
        prog="annforge",
        description="annforge: approximate-nearest-neighbour index engine. Run `annforge COMMAND --help` "
                    "for a command's options.",
        epilog="examples:\n  annforge bench                       built-in dataset, every installed library\n"
               "  annforge bench --dataset x.hdf5      an ann-benchmarks HDF5 file\n"
               "  annforge bench --compare a/results.json b/results.json\n"
               "  python -m annforge info",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"annforge {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, text in _COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Dispatch ``annforge <command>``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "bench":
        from .bench import main as bench_main

        return bench_main(args[1:])
    if args and args[0] == "info":
        if len(args) > 1 and args[1] in ("-h", "--help"):
            print("usage: annforge info\n\n" + _COMMANDS["info"])
            return 0
        from . import build_info

        print(json.dumps(build_info(), indent=2))
        return 0
    parser = build_parser()
    if not args:
        parser.print_help()
        return 2
    try:
        parser.parse_args(args)  # --help / --version exit here; anything else is an unknown command
    except SystemExit as exc:
        return int(exc.code or 0)
    return 2


if __name__ == "__main__":
    sys.exit(main())

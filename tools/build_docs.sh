#!/usr/bin/env bash
# Build the API reference (docs/ + the docstrings) into build/site with `mkdocs build --strict`: any
# warning (a broken cross-reference, a docstring mkdocstrings cannot parse) fails the build.
# Needs the docs extra: pip install ".[docs]"  (no compiled module is needed: the docstrings are read
# from the source and python/annforge/_core.pyi).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m mkdocs build --strict --clean "$@"

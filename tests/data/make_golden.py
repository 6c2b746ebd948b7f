"""Writes the golden files of the current format version. Never regenerate an existing golden file:
tests keep loading the old ones in every later version (that is their point). Run from the repo root:
    python tests/data/make_golden.py
"""

import os
import sys

import numpy as np

import annforge as af

HERE = os.path.dirname(os.path.abspath(__file__))


def golden_vectors() -> np.ndarray:
    return (np.arange(40 * 6, dtype=np.float32).reshape(40, 6) % 7 - 3) / 4


def main() -> None:
    path = os.path.join(HERE, f"golden_flat_v{af.build_info()['format_version']}.af")
    if os.path.exists(path):
        sys.exit(f"{path} exists; golden files are never rewritten")
    index = af.FlatIndex(6, "l2")
    index.add(golden_vectors(), ids=np.arange(40, dtype=np.int64) * 5 + 3)
    index.remove([8, 13])
    index.save(path)
    print("wrote", path)


if __name__ == "__main__":
    main()

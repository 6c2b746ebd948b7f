"""The C++ sources keep their floor plan: includes only go down the layers, and one file reads the CPU.

Layers, lowest first: util/ (and common.h, parallel/) -> simd/ -> storage/, codec/ -> cluster/ -> invlists/ ->
index/ -> io/ -> bindings. Runs against the source tree only (skipped when the suite runs against an installed wheel).
"""

from __future__ import annotations

import os
import re
from typing import Dict, Iterator, List, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPP = os.path.join(ROOT, "cpp")

pytestmark = pytest.mark.skipif(not os.path.isdir(os.path.join(CPP, "src", "simd")),
                                reason="needs the source tree")

RANK: Dict[str, int] = {"util": 0, "parallel": 0, "simd": 1, "storage": 2, "codec": 2, "cluster": 3,
                        "invlists": 4, "index": 5, "io": 6}
# Known exceptions, each a separate step of issue 16 (remove the entry when it is fixed):
# product-quantizer training runs k-means; the index families serialize through io/format.h.
ALLOWED: List[Tuple[str, str]] = [("codec/pq.cpp", "cluster/kmeans.h"), ("index/minhash_lsh.h", "io/format.h"),
                                  ("index/vector_index.h", "io/format.h")]
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def _sources() -> Iterator[Tuple[str, str]]:
    """(layer-relative path like 'simd/dispatch.cpp', absolute path) of every core source and header."""
    for base in (os.path.join(CPP, "src"), os.path.join(CPP, "include", "annforge")):
        for folder, _, files in os.walk(base):
            for name in files:
                if name.endswith((".cpp", ".h", ".inc")):
                    path = os.path.join(folder, name)
                    yield os.path.relpath(path, base).replace(os.sep, "/"), path


def _includes(path: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = INCLUDE.match(line)
            if m:
                yield m.group(1)


def test_includes_follow_the_layers() -> None:
    bad = []
    for rel, path in _sources():
        layer = rel.split("/")[0]
        if layer not in RANK:
            continue
        for inc in _includes(path):
            target = inc[len("annforge/"):] if inc.startswith("annforge/") else inc
            if target.startswith("../"):
                bad.append(f"{rel}: relative include into another folder: {inc}")
                continue
            inc_layer = target.split("/")[0]
            if inc_layer in RANK and RANK[inc_layer] > RANK[layer] and (rel, target) not in ALLOWED:
                bad.append(f"{rel} ({layer}) includes {inc} ({inc_layer})")
    assert not bad, "includes against the layers:\n" + "\n".join(bad)


def test_only_the_dispatcher_reads_cpu_features_and_annforge_simd() -> None:
    pattern = re.compile(r"cpuid|xgetbv|getauxval|__builtin_cpu_(init|supports)|\"ANNFORGE_SIMD\"")
    readers = sorted({rel for rel, path in _sources()
                      if pattern.search(open(path, encoding="utf-8").read())})
    assert readers == ["simd/dispatch.cpp"], readers

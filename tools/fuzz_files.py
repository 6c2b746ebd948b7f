#!/usr/bin/env python3
"""Fuzz the annforge file loaders with mutated files whose checksums are recomputed.

Without re-sealing, almost every mutation stops at a checksum; this tool parses a saved file into its
sections, mutates them (bit flips, extreme floats and integers, size fields, truncation, growth, section
swaps and drops, header fields) and writes the file again with a valid directory and checksums, so the
mutation reaches the family's section parser. A small share of cases mutates the raw bytes without
re-sealing (the checksum path must refuse those).

Each case loads the file three ways (``annforge.load``, ``load(mmap=True)``, ``from_bytes``) and, when a
load succeeds, uses the index: search, filtered search (id list and callable), remove, add, search,
reconstruct. Cases run in worker subprocesses, many per worker; when a worker dies from a signal or
exceeds its time, the case it was running is re-run alone to confirm, and the tool goes on with the
next case. Reported as failures: crashes (signals), hangs (timeouts), MemoryError, exceptions of an
unexpected type (a load may only raise OSError; using a loaded index only ValueError) and search
results that name ids the index does not hold. Failing files are written to the corpus folder.

Usage (the full run of the closing note)::

    nice python tools/fuzz_files.py --cases 2000 --corpus fuzz_corpus

    python tools/fuzz_files.py --replay fuzz_corpus/hnsw_sq8-17.af   # re-run one saved file

Exit status 0 when no case failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

# ---------------------------------------------------------------------------------------------------
# The file format (see cpp/include/annforge/io/format.h): header, directory, 64-byte aligned payloads.

MASK = (1 << 64) - 1
P1 = 0x9E3779B185EBCA87
P2 = 0xC2B2AE3D27D4EB4F
P3 = 0x165667B19E3779F9
MAGIC = b"ANNFORGE"
HEADER = 64
ENTRY = 32
ALIGN = 64


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & MASK


def checksum(data: bytes) -> int:
    """The format's 64-bit checksum (four multiply-rotate lanes over 32-byte stripes), as io/format.cpp."""
    n = len(data)
    full = n - n % 32
    a, b, c, d = (P1 + P2) & MASK, P2, 0, (-P1) & MASK
    words = struct.unpack_from(f"<{full // 8}Q", data, 0) if full else ()
    for i in range(0, len(words), 4):
        a = (_rotl((a + words[i] * P2) & MASK, 31) * P1) & MASK
        b = (_rotl((b + words[i + 1] * P2) & MASK, 31) * P1) & MASK
        c = (_rotl((c + words[i + 2] * P2) & MASK, 31) * P1) & MASK
        d = (_rotl((d + words[i + 3] * P2) & MASK, 31) * P1) & MASK
    h = (_rotl(a, 1) + _rotl(b, 7) + _rotl(c, 12) + _rotl(d, 18)) & MASK
    h ^= (n * P3) & MASK
    for byte in data[full:]:
        h = (_rotl(h ^ ((byte * P1) & MASK), 11) * P2) & MASK
    h ^= h >> 33
    h = (h * P2) & MASK
    h ^= h >> 29
    h = (h * P3) & MASK
    h ^= h >> 32
    return h


def _align(x: int) -> int:
    return (x + ALIGN - 1) // ALIGN * ALIGN


@dataclass
class ParsedFile:
    version: int
    kind: int
    sections: List[Tuple[bytes, bytearray]] = field(default_factory=list)  # (4-byte tag, payload)


def parse(data: bytes) -> ParsedFile:
    """Split a valid annforge file into its sections (checksums are checked: seeds must be intact)."""
    if data[:8] != MAGIC:
        raise ValueError("not an annforge file")
    version, _bom, kind, count = struct.unpack_from("<IIII", data, 8)
    out = ParsedFile(version, kind)
    for i in range(count):
        tag, _res, off, length, sumv = struct.unpack_from("<4sIQQQ", data, HEADER + i * ENTRY)
        payload = bytearray(data[off:off + length])
        if checksum(bytes(payload)) != sumv:
            raise ValueError(f"seed file section {tag!r}: checksum differs (this tool's checksum is wrong?)")
        out.sections.append((tag, payload))
    return out


def seal(f: ParsedFile) -> bytes:
    """Write sections as a valid file: offsets, padding, section checksums and header checksum."""
    n = len(f.sections)
    head = bytearray(_align(HEADER + n * ENTRY))
    offsets = []
    offset = len(head)
    for _tag, payload in f.sections:
        offsets.append(offset)
        offset = _align(offset + len(payload))
    head[0:8] = MAGIC
    struct.pack_into("<IIIIQ", head, 8, f.version, 0x01020304, f.kind, n, offset)
    for i, (tag, payload) in enumerate(f.sections):
        struct.pack_into("<4sIQQQ", head, HEADER + i * ENTRY, tag, 0, offsets[i], len(payload),
                         checksum(bytes(payload)))
    struct.pack_into("<Q", head, 32, checksum(bytes(head[:32]) + bytes(head[HEADER:HEADER + n * ENTRY])))
    out = bytearray(head)
    for (_tag, payload), off in zip(f.sections, offsets):
        assert len(out) == off
        out += payload
        out += bytes(_align(len(out)) - len(out))
    return bytes(out)


# ---------------------------------------------------------------------------------------------------
# Seeds: small indexes of every family, saved once by the parent process.

FAMILIES = ["flat", "hnsw_f32", "hnsw_f16", "hnsw_sq8", "hnsw_rabitq", "ivfpq_8bit", "ivfpq_4bit", "ivfpq_opq",
            "ivfpq_refine", "scann", "ivf_rabitq", "minhash_lsh", "lsh_forest"]
DIM = 8


def _rows(n: int, seed: int, normalise: bool = False, dim: int = DIM) -> Any:
    import numpy as np

    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    if normalise:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def build_seeds(family: str) -> List[bytes]:
    """Small saved indexes of one family (a populated one with removals, and variants)."""
    import numpy as np

    import annforge as af

    seeds: List[Any] = []
    if family == "flat":
        for metric in ("l2", "cosine"):
            idx = af.FlatIndex(DIM, metric=metric)
            idx.add(_rows(40, 1))
            idx.remove([3, 7])
            seeds.append(idx)
        seeds.append(af.FlatIndex(DIM))
    elif family.startswith("hnsw_"):
        storage = family.split("_")[1]
        for metric in ("l2", "ip"):
            idx = af.HNSWIndex(DIM, metric=metric, M=4, ef_construction=16, storage=storage)
            idx.add(_rows(60, 2), num_threads=1)
            idx.remove([0, 5, 9])
            seeds.append(idx)
        seeds.append(af.HNSWIndex(DIM, M=4, storage=storage))
    elif family.startswith("ivfpq_"):
        kw: Dict[str, Any] = {
            "ivfpq_8bit": dict(m=2, nbits=8),
            "ivfpq_4bit": dict(m=4, nbits=4),
            "ivfpq_opq": dict(m=4, nbits=4, opq=True),
            "ivfpq_refine": dict(m=2, nbits=4, refine="sq8", residual=False),
        }[family]
        x = _rows(300, 3)
        for metric in ("l2", "ip"):
            idx = af.IVFPQIndex(DIM, 4, metric=metric, **kw)
            idx.train(x, num_threads=1)
            idx.add(x[:80], num_threads=1)
            idx.remove([1, 2])
            seeds.append(idx)
    elif family == "ivf_rabitq":
        x = _rows(300, 5)
        for metric, bits, refine in (("l2", 1, "f32"), ("ip", 3, None), ("cosine", 2, "sq8")):
            idx = af.IVFRaBitQIndex(DIM, 4, bits=bits, metric=metric, refine=refine)
            idx.train(x, num_threads=1)
            idx.add(x[:80], num_threads=1)
            idx.remove([1, 2])
            seeds.append(idx)
    elif family == "scann":
        x = _rows(200, 4, normalise=True)
        for reorder in ("f32", None):
            idx = af.ScaNNIndex(DIM, 4, reorder=reorder, training_sample_size=200)
            idx.train(x, num_threads=1)
            idx.add(x[:60], num_threads=1)
            idx.remove([4])
            seeds.append(idx)
    elif family in ("minhash_lsh", "lsh_forest"):
        sigs = af.minhash_signatures([[f"t{(i * 7 + j) % 50}" for j in range(8)] for i in range(30)], num_perm=32)
        if family == "minhash_lsh":
            idx = af.MinHashLSH(threshold=0.5, num_perm=32)
        else:
            idx = af.MinHashLSHForest(num_perm=32, l=4)
        idx.insert_batch(np.arange(30, dtype=np.int64), sigs)
        idx.remove(3)
        seeds.append(idx)
    else:
        raise ValueError(f"unknown family {family!r}")
    return [s.to_bytes() for s in seeds]


# ---------------------------------------------------------------------------------------------------
# Mutations

EXTREME_FLOATS = [3.4e38, -3.4e38, float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1e-45, 1e-38, 1e30, -1.0]
EXTREME_U32 = [0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFF, 0x10000, 0x80000001, 255, 256]
EXTREME_U64 = [0, 1, 2, (1 << 63) - 1, 1 << 63, MASK, 1 << 32, (1 << 32) - 1, 1 << 40, 0xFFFFFFFF00000000]


def _pick_section(rng: random.Random, f: ParsedFile, nonempty: bool = True) -> Optional[int]:
    cands = [i for i, (_t, p) in enumerate(f.sections) if len(p) > 0 or not nonempty]
    return rng.choice(cands) if cands else None


def _small_section_bias(rng: random.Random, f: ParsedFile) -> Optional[int]:
    # Metadata sections (small) hold the sizes and parameters: mutate them more often.
    small = [i for i, (_t, p) in enumerate(f.sections) if 0 < len(p) <= 256]
    if small and rng.random() < 0.5:
        return rng.choice(small)
    return _pick_section(rng, f)


def m_bitflip(rng: random.Random, f: ParsedFile) -> str:
    i = _pick_section(rng, f)
    if i is None:
        return "none"
    p = f.sections[i][1]
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(len(p))
        p[pos] ^= 1 << rng.randrange(8)
    return f"bitflip {f.sections[i][0]!r}"


def m_float(rng: random.Random, f: ParsedFile) -> str:
    i = _pick_section(rng, f)
    if i is None or len(f.sections[i][1]) < 4:
        return "none"
    p = f.sections[i][1]
    value = rng.choice(EXTREME_FLOATS)
    count = 1 if rng.random() < 0.6 else rng.randint(2, 64)
    start = rng.randrange(len(p) // 4) * 4
    for k in range(count):
        pos = start + 4 * k
        if pos + 4 > len(p):
            break
        struct.pack_into("<f", p, pos, value)
    return f"float {value} x{count} {f.sections[i][0]!r}"


def m_int(rng: random.Random, f: ParsedFile) -> str:
    i = _small_section_bias(rng, f)
    if i is None:
        return "none"
    p = f.sections[i][1]
    if rng.random() < 0.5 and len(p) >= 8:
        pos = rng.randrange(len(p) - 7)
        if rng.random() < 0.7:
            pos = min(pos // 8 * 8 + rng.choice([0, 1]), len(p) - 8)  # metadata packs u64 after a u8 at odd offsets
        old = struct.unpack_from("<Q", p, pos)[0]
        new = rng.choice(EXTREME_U64 + [old + 1, old - 1, old * 2, old // 2, old + 64])
        struct.pack_into("<Q", p, pos, new & MASK)
        return f"u64 {new & MASK:#x} @{pos} {f.sections[i][0]!r}"
    if len(p) < 4:
        p[rng.randrange(len(p))] = rng.choice([0, 1, 2, 3, 255, 128])
        return "u8"
    pos = rng.randrange(len(p) // 4) * 4 if rng.random() < 0.8 else rng.randrange(len(p) - 3)
    old = struct.unpack_from("<I", p, pos)[0]
    new = rng.choice(EXTREME_U32 + [old + 1, old - 1, old * 2, old + 100])
    struct.pack_into("<I", p, pos, new & 0xFFFFFFFF)
    return f"u32 {new & 0xFFFFFFFF:#x} @{pos} {f.sections[i][0]!r}"


def m_byte(rng: random.Random, f: ParsedFile) -> str:
    i = _small_section_bias(rng, f)
    if i is None:
        return "none"
    p = f.sections[i][1]
    pos = rng.randrange(len(p))
    p[pos] = rng.choice([0, 1, 2, 3, 4, 127, 128, 254, 255, p[pos] ^ 0xFF])
    return f"byte @{pos} {f.sections[i][0]!r}"


def m_small(rng: random.Random, f: ParsedFile) -> str:
    # Small integers stay in range for links, counts, levels and list sizes, so they pass the range
    # checks and reach the graph and list code with a structure no build would produce.
    i = _pick_section(rng, f)
    if i is None or len(f.sections[i][1]) < 4:
        return "none"
    p = f.sections[i][1]
    pos = rng.randrange(len(p) // 4) * 4
    value = rng.randrange(0, 70)
    struct.pack_into("<I", p, pos, value)
    return f"small u32 {value} @{pos} {f.sections[i][0]!r}"


def m_shuffle(rng: random.Random, f: ParsedFile) -> str:
    # Swap two aligned words (ids, links, codes, vectors) inside one section.
    i = _pick_section(rng, f)
    if i is None:
        return "none"
    p = f.sections[i][1]
    width = rng.choice([1, 4, 8])
    if len(p) < 2 * width:
        return "none"
    a, b = rng.randrange(len(p) // width) * width, rng.randrange(len(p) // width) * width
    p[a:a + width], p[b:b + width] = p[b:b + width], p[a:a + width]
    return f"shuffle {width}B @{a},{b} {f.sections[i][0]!r}"


def m_truncate(rng: random.Random, f: ParsedFile) -> str:
    i = _pick_section(rng, f)
    if i is None:
        return "none"
    tag, p = f.sections[i]
    cut = rng.choice([1, 4, 8, rng.randint(1, len(p)), len(p)])
    del p[max(0, len(p) - cut):]
    return f"truncate {tag!r} by {cut}"


def m_grow(rng: random.Random, f: ParsedFile) -> str:
    i = _pick_section(rng, f, nonempty=False)
    if i is None:
        return "none"
    tag, p = f.sections[i]
    extra = rng.choice([1, 4, 8, 64, rng.randint(1, 512)])
    if rng.random() < 0.5:
        p += bytes(extra)
    else:
        p += bytes(rng.randrange(256) for _ in range(extra))
    return f"grow {tag!r} by {extra}"


def m_swap(rng: random.Random, f: ParsedFile) -> str:
    if len(f.sections) < 2:
        return "none"
    i, j = rng.sample(range(len(f.sections)), 2)
    (ti, pi), (tj, pj) = f.sections[i], f.sections[j]
    if rng.random() < 0.5:
        f.sections[i], f.sections[j] = (ti, pj), (tj, pi)  # payloads swapped, tags in place
        return f"swap payloads {ti!r} {tj!r}"
    f.sections[i], f.sections[j] = f.sections[j], f.sections[i]  # order of sections swapped
    return f"swap order {ti!r} {tj!r}"


def m_drop(rng: random.Random, f: ParsedFile) -> str:
    if not f.sections:
        return "none"
    i = rng.randrange(len(f.sections))
    tag = f.sections[i][0]
    if rng.random() < 0.7:
        del f.sections[i]
        return f"drop {tag!r}"
    f.sections[i] = (b"ZZZZ", f.sections[i][1])
    return f"rename {tag!r}"


def m_copy(rng: random.Random, f: ParsedFile) -> str:
    # Replace one payload by a copy of another with a similar role (e.g. a longer list of ids).
    if len(f.sections) < 2:
        return "none"
    i, j = rng.sample(range(len(f.sections)), 2)
    f.sections[i] = (f.sections[i][0], bytearray(f.sections[j][1]))
    return f"copy {f.sections[j][0]!r} over {f.sections[i][0]!r}"


def m_header(rng: random.Random, f: ParsedFile) -> str:
    if rng.random() < 0.5:
        f.kind = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 0xFFFFFFFF])
        return f"kind {f.kind}"
    f.version = rng.choice([0, 2, 0xFFFFFFFF])
    return f"version {f.version}"


MUTATORS: List[Tuple[Callable[[random.Random, ParsedFile], str], int]] = [
    (m_bitflip, 14), (m_float, 14), (m_int, 20), (m_byte, 10), (m_small, 10), (m_shuffle, 6), (m_truncate, 6),
    (m_grow, 5), (m_swap, 5), (m_drop, 4), (m_copy, 4), (m_header, 2),
]


def mutate(seed_bytes: bytes, rng: random.Random) -> Tuple[bytes, str]:
    """One mutated file (re-sealed in ~95% of the cases) and a description of what was done."""
    if rng.random() < 0.05:
        data = bytearray(seed_bytes)
        if rng.random() < 0.5:
            pos = rng.randrange(len(data))
            data[pos] ^= 1 << rng.randrange(8)
            return bytes(data), f"raw bitflip @{pos}"
        cut = rng.randrange(len(data))
        return bytes(data[:cut]), f"raw truncate to {cut}"
    f = parse(seed_bytes)
    steps = []
    funcs, weights = zip(*MUTATORS)
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3])):
        steps.append(rng.choices(funcs, weights)[0](rng, f))
    return seal(f), "; ".join(steps)


def make_case(seeds: Sequence[bytes], family: str, case: int, master_seed: int) -> Tuple[bytes, str]:
    rng = random.Random(f"{master_seed}:{family}:{case}")
    seed_index = rng.randrange(len(seeds))
    data, what = mutate(seeds[seed_index], rng)
    return data, f"seed {seed_index}: {what}"


# ---------------------------------------------------------------------------------------------------
# Running one case (inside a worker)


class BadResult(Exception):
    """A search answered ids that the index does not hold."""


def _check_ids(index: Any, found: Any) -> None:
    live = set(index.ids().tolist())
    for i in found.ravel().tolist():
        if i != -1 and i not in live:
            raise BadResult(f"search returned id {i}, which is not in the index")


def _use_vector_index(index: Any, family: str) -> None:
    import numpy as np

    normalise = family == "scann"
    q = _rows(3, 99, normalise, index.dim)
    ids, _ = index.search(q, 5)
    _check_ids(index, ids)
    live = index.ids()
    allowed = live[::2]
    ids, _ = index.search(q, 5, filter=allowed)
    allowed_set = set(allowed.tolist())
    for i in ids.ravel().tolist():
        if i != -1 and i not in allowed_set:
            raise BadResult(f"filtered search returned id {i} outside the filter")
    ids, _ = index.search(q, 3, filter=lambda i: i % 3 == 0)
    _check_ids(index, ids)
    if len(live):
        index.reconstruct(live[:2])
    index.remove(live[:3])
    index.add(_rows(5, 7, normalise, index.dim))
    ids, _ = index.search(q, 10)
    _check_ids(index, ids)
    if np.intersect1d(ids.ravel(), live[:3]).size:
        raise BadResult("a removed id came back")
    type(index).from_bytes(index.to_bytes())


def _use_lsh(index: Any, family: str) -> None:
    import numpy as np

    import annforge as af

    sigs = af.minhash_signatures([[f"t{j}" for j in range(i, i + 8)] for i in range(4)], num_perm=32)
    if family == "minhash_lsh":
        index.query(sigs[0])
        index.query_batch(sigs)
        keys = [k for k in range(30) if k in index][:2]
        for k in keys:
            index.remove(k)
        index.insert_batch(np.arange(1000, 1004, dtype=np.int64), sigs)
        index.query(sigs[1])
        index.candidate_pairs()
    else:
        index.query(sigs[0], 5)
        keys = [k for k in range(30) if k in index][:2]
        for k in keys:
            index.remove(k)
        index.insert_batch(np.arange(1000, 1004, dtype=np.int64), sigs)
        index.query(sigs[1], 5)
    type(index).from_bytes(index.to_bytes())


def run_case(data: bytes, family: str, workdir: str) -> str:
    """Outcome of one case: 'refused', 'loaded', 'loaded+value-error', or 'FAIL ...' (an exception)."""
    import annforge as af

    path = os.path.join(workdir, "case.af")
    with open(path, "wb") as fh:
        fh.write(data)
    loaders: List[Tuple[str, Callable[[], Any]]] = [
        ("load", lambda: af.load(path)),
        ("mmap", lambda: af.load(path, mmap=True)),
        ("bytes", lambda: _from_bytes(af, data)),
    ]
    outcomes = []
    for name, loader in loaders:
        try:
            index = loader()
        except MemoryError as e:
            return f"FAIL MemoryError in {name}: {e}"
        except OSError:
            outcomes.append("refused")
            continue
        except Exception as e:  # noqa: BLE001 - any other type is the finding
            return f"FAIL {type(e).__name__} in {name}: {e}"
        try:
            if family in ("minhash_lsh", "lsh_forest"):
                _use_lsh(index, family)
            else:
                _use_vector_index(index, family)
            outcomes.append("loaded")
        except MemoryError as e:
            return f"FAIL MemoryError using {name}: {e}"
        except BadResult as e:
            return f"FAIL bad result using {name}: {e}"
        except (ValueError, OSError) as e:
            outcomes.append(f"loaded+{type(e).__name__}: {str(e)[:80]}")
        except Exception as e:  # noqa: BLE001
            return f"FAIL {type(e).__name__} using {name}: {e}"
    if len({o.split(":")[0] for o in outcomes}) > 1 and "refused" in outcomes:
        return f"FAIL inconsistent loaders: {outcomes}"
    return outcomes[0]


def _from_bytes(af: Any, data: bytes) -> Any:
    # from_bytes of the class the header names (what unpickling does).
    from annforge import _core
    from annforge._base import family_for

    if len(data) >= 20 and data[:8] == MAGIC:
        kind = struct.unpack_from("<I", data, 16)[0]
        name = {1: "FlatIndex", 2: "HNSWIndex", 3: "IVFPQIndex", 4: "ScaNNIndex", 5: "MinHashLSH",
                6: "MinHashLSHForest", 8: "IVFRaBitQIndex"}.get(kind)
        if name:
            return family_for(name).from_bytes(data)
    return af.FlatIndex.from_bytes(data)  # foreign or damaged: must be refused with OSError


def worker(args: argparse.Namespace) -> int:
    # AddressSanitizer reserves terabytes of address space for its shadow memory: no limit under it.
    if args.memory_limit_gb > 0 and "asan" not in os.environ.get("LD_PRELOAD", ""):
        limit = int(args.memory_limit_gb * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    seeds = [open(p, "rb").read() for p in args.seed_files]
    with tempfile.TemporaryDirectory() as workdir:
        # Self-test hook (tests/test_file_safety.py): "crash:<case>,hang:<case>" makes those cases fail.
        inject = dict(item.split(":")[::-1] for item in os.environ.get("ANNFORGE_FUZZ_INJECT", "").split(",") if item)
        for case in args.worker_cases:
            print(f"S {case}", flush=True)
            if inject.get(str(case)) == "crash":
                os.kill(os.getpid(), signal.SIGSEGV)
            if inject.get(str(case)) == "hang":
                time.sleep(3600)
            data, _what = make_case(seeds, args.family, case, args.seed)
            outcome = run_case(data, args.family, workdir)
            print(f"R {case} {outcome.replace(chr(10), ' ')}", flush=True)
    return 0


# ---------------------------------------------------------------------------------------------------
# The parent: batches, isolation of crashers, report


@dataclass
class Tally:
    cases: int = 0
    refused: int = 0
    loaded: int = 0
    loaded_with_error: int = 0
    errors_after_load: Dict[str, int] = field(default_factory=dict)  # message -> count
    failures: List[Dict[str, Any]] = field(default_factory=list)


def _worker_cmd(args: argparse.Namespace, family: str, seed_files: List[str], cases: Sequence[int]) -> List[str]:
    return [sys.executable, os.path.abspath(__file__), "--worker", family, "--seed", str(args.seed),
            "--memory-limit-gb", str(args.memory_limit_gb), "--seed-files", *seed_files,
            "--worker-cases", *map(str, cases)]


def _run_worker(cmd: List[str], timeout: float) -> Tuple[Optional[int], str]:
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout, text=True)
        return proc.returncode, proc.stdout + "\n#STDERR " + proc.stderr[-2000:]
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return None, out


def _alone(args: argparse.Namespace, family: str, seed_files: List[str], case: int) -> str:
    """Outcome of one case in a worker of its own; crashes and hangs become FAIL outcomes."""
    rc, out = _run_worker(_worker_cmd(args, family, seed_files, [case]), args.case_timeout + args.startup_allowance)
    result = [ln for ln in out.splitlines() if ln.startswith("R ")]
    if rc is None:
        return f"FAIL hang (no answer within {args.case_timeout + args.startup_allowance:.0f} s)"
    if rc < 0:
        return f"FAIL crash (signal {-rc})"
    if rc != 0 or not result:
        tail = out.split("#STDERR", 1)[-1].strip().splitlines()[-3:]
        return f"FAIL worker exit {rc}: {' | '.join(tail)}"
    return result[0].split(" ", 2)[2]


def fuzz_family(args: argparse.Namespace, family: str, seed_files: List[str], seeds: List[bytes],
                log: Callable[[str], None]) -> Tally:
    tally = Tally()
    todo = list(range(args.first_case, args.first_case + args.cases))
    while todo:
        batch = todo[:args.batch]
        rc, out = _run_worker(_worker_cmd(args, family, seed_files, batch),
                              args.case_timeout * len(batch) + args.startup_allowance)
        done: Dict[int, str] = {}
        for line in out.splitlines():
            if line.startswith("R "):
                _, case, outcome = line.split(" ", 2)
                done[int(case)] = outcome
        if rc == 0 and len(done) == len(batch):
            for case in batch:
                _record(tally, args, family, seeds, case, done[case], log)
            todo = todo[len(batch):]
            continue
        # The worker died or hung. The first case without a result is the suspect: run it alone.
        missing = [c for c in batch if c not in done]
        suspect = missing[0] if missing else None
        finished = [c for c in batch if c in done and (suspect is None or c < suspect)]
        suspect_outcome = _alone(args, family, seed_files, suspect) if suspect is not None else ""
        if suspect is None or not suspect_outcome.startswith("FAIL"):
            # Alone it passes (or the worker died after its last case): an earlier case may have
            # damaged the process. Re-run the batch case by case to find the one that fails alone.
            for case in finished:
                done[case] = _alone(args, family, seed_files, case)
            if not any(done[c].startswith("FAIL") for c in finished):
                what = "hang" if rc is None else f"crash (signal {-rc})" if rc < 0 else f"exit {rc}"
                culprit = suspect if suspect is not None else finished[-1]
                suspect, suspect_outcome = culprit, f"FAIL {what} in a batch only, every case passes alone"
                finished = [c for c in finished if c != culprit]
        for case in finished:
            _record(tally, args, family, seeds, case, done[case], log)
        if suspect is not None:
            _record(tally, args, family, seeds, suspect, suspect_outcome, log)
        last = max(finished + ([suspect] if suspect is not None else []))
        todo = todo[todo.index(last) + 1:]
    return tally


def _record(tally: Tally, args: argparse.Namespace, family: str, seeds: List[bytes], case: int, outcome: str,
            log: Callable[[str], None]) -> None:
    tally.cases += 1
    if outcome.startswith("FAIL"):
        data, what = make_case(seeds, family, case, args.seed)
        name = f"{family}-{case}.af"
        if args.corpus:
            os.makedirs(args.corpus, exist_ok=True)
            with open(os.path.join(args.corpus, name), "wb") as fh:
                fh.write(data)
            with open(os.path.join(args.corpus, name + ".txt"), "w") as fh:
                fh.write(f"family {family}\ncase {case}\nmutation {what}\noutcome {outcome}\n")
        tally.failures.append({"family": family, "case": case, "mutation": what, "outcome": outcome})
        log(f"  {family} case {case}: {outcome}  [{what}]")
    elif outcome == "refused":
        tally.refused += 1
    elif outcome == "loaded":
        tally.loaded += 1
    else:
        tally.loaded_with_error += 1
        message = outcome.split("+", 1)[-1]
        tally.errors_after_load[message] = tally.errors_after_load.get(message, 0) + 1


def replay(paths: Sequence[str]) -> int:
    """Run saved corpus files in this process (a crash then shows where)."""
    bad = 0
    with tempfile.TemporaryDirectory() as workdir:
        for p in paths:
            family = os.path.basename(p).rsplit("-", 1)[0]
            outcome = run_case(open(p, "rb").read(), family, workdir)
            print(f"{p}: {outcome}", flush=True)
            bad += outcome.startswith("FAIL")
    return 1 if bad else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="*", default=FAMILIES, help=f"families to fuzz (default: all of {FAMILIES})")
    ap.add_argument("--cases", type=int, default=200, help="cases per family")
    ap.add_argument("--first-case", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1, help="master seed (cases are reproducible from it)")
    ap.add_argument("--batch", type=int, default=250, help="cases per worker process")
    ap.add_argument("--case-timeout", type=float, default=10.0, help="seconds a case may take")
    ap.add_argument("--startup-allowance", type=float, default=20.0,
                    help="seconds a worker may take to start, on top of --case-timeout per case")
    ap.add_argument("--memory-limit-gb", type=float, default=4.0, help="address-space limit per worker (0: none)")
    ap.add_argument("--corpus", default="", help="folder for failing files (with a .txt describing each)")
    ap.add_argument("--json", default="", help="write the summary as JSON here")
    ap.add_argument("--replay", nargs="*", help="run these saved files in-process and exit")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--family", help=argparse.SUPPRESS)
    ap.add_argument("--seed-files", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--worker-cases", nargs="*", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.replay:
        return replay(args.replay)
    if args.worker:
        args.family = args.worker
        return worker(args)

    def log(msg: str) -> None:
        print(msg, flush=True)

    summary: Dict[str, Any] = {"command": " ".join([os.path.basename(sys.argv[0])] + list(argv or sys.argv[1:])),
                               "families": {}}
    failures = 0
    with tempfile.TemporaryDirectory() as seed_dir:
        for family in args.families:
            seeds = build_seeds(family)
            seed_files = []
            for i, s in enumerate(seeds):
                parse(s)  # checks this tool's checksum against the engine's
                p = os.path.join(seed_dir, f"{family}-{i}.af")
                with open(p, "wb") as fh:
                    fh.write(s)
                seed_files.append(p)
            t0 = time.time()
            tally = fuzz_family(args, family, seed_files, seeds, log)
            secs = time.time() - t0
            kinds: Dict[str, int] = {}
            for f in tally.failures:
                key = f["outcome"].split(":")[0].split("(")[0].strip()
                kinds[key] = kinds.get(key, 0) + 1
            summary["families"][family] = {"cases": tally.cases, "refused": tally.refused, "loaded": tally.loaded,
                                           "loaded_then_value_error": tally.loaded_with_error,
                                           "errors_after_load": tally.errors_after_load,
                                           "failures": len(tally.failures), "failure_kinds": kinds,
                                           "seconds": round(secs, 1)}
            failures += len(tally.failures)
            log(f"{family:13s} cases {tally.cases:6d}  refused {tally.refused:6d}  loaded {tally.loaded:5d}  "
                f"loaded+ValueError {tally.loaded_with_error:4d}  FAILURES {len(tally.failures)}  ({secs:.0f} s)")
    summary["total_failures"] = failures
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

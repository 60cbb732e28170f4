"""Identify latency against gallery size, exact and HNSW, with HNSW's recall@1 (issue 27).

Synthetic galleries of N L2-normalised 128-d Gaussian embeddings (uniform on the
sphere: no clusters to help HNSW, a hard case); probes are 200 gallery vectors with
noise added (cosine about 0.7 to their source, like a mated probe). For each N and
index (``facekd.identify.index``): build time, single-probe search latency (top-10,
median and p99 over the probes, one search call per probe), and for HNSW the fraction
of probes whose top-1 equals the exact index's top-1.

    python eval/ident_scale.py --sizes 10000 100000 1000000 --json docs/results/ident-scale.json
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from facekd.identify.index import build_index

BUILD_THREADS = SEARCH_THREADS = faiss.omp_get_max_threads()


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def measure(n: int, dim: int, probes: int, seed: int, hnsw: dict) -> list[dict]:
    rng = np.random.default_rng(seed)
    x = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 100_000):  # in chunks: float64 Gaussians for 1M rows would take 1 GiB
        x[s : s + 100_000] = unit(rng.standard_normal((min(100_000, n - s), dim)))
    src = rng.choice(n, probes, replace=False)
    q = unit(x[src] + rng.standard_normal((probes, dim)).astype(np.float32) / np.sqrt(dim))
    ids = np.arange(n, dtype=np.int64)
    rows, top1 = [], {}
    for kind in ("exact", "hnsw"):
        opts = {k: v for k, v in hnsw.items() if k != "ef_search"} if kind == "hnsw" else {}
        faiss.omp_set_num_threads(BUILD_THREADS)
        t0 = time.perf_counter()
        index = build_index(kind, dim, ids, x, **opts)
        build = time.perf_counter() - t0
        faiss.omp_set_num_threads(SEARCH_THREADS)
        for ef in (hnsw["ef_search"] if kind == "hnsw" else [None]):
            if ef is not None:
                index.ef_search = ef  # the same graph searched with a wider candidate list
            index.search(q[:5], 10)  # warm-up
            lat = []
            found = np.empty(probes, dtype=np.int64)
            for j in range(probes):
                t = time.perf_counter()
                _, i = index.search(q[j : j + 1], 10)
                lat.append(1000 * (time.perf_counter() - t))
                found[j] = i[0, 0]
            if kind == "exact":
                top1["exact"] = found
            row = {"n": n, "dim": dim, "index": kind, "build_s": round(build, 2),
                   "ms_p50": round(float(np.median(lat)), 4), "ms_p99": round(float(np.percentile(lat, 99)), 4),
                   "self_recall": round(float(np.mean(found == src)), 4)}
            if kind == "hnsw":
                row |= opts | {"ef_search": ef}
                row["recall_at_1_vs_exact"] = round(float(np.mean(found == top1["exact"])), 4)
            rows.append(row)
            print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        del index
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--probes", type=int, default=200)
    ap.add_argument("--ef-search", type=int, nargs="+", default=[128], help="HNSW efSearch values, each measured")
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=80)
    ap.add_argument("--threads", type=int, default=0, help="FAISS threads while searching (0: its default)")
    ap.add_argument("--build-threads", type=int, default=0, help="FAISS threads while building (0: its default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, dest="json_out")
    args = ap.parse_args()
    global BUILD_THREADS, SEARCH_THREADS
    BUILD_THREADS = args.build_threads or BUILD_THREADS
    SEARCH_THREADS = args.threads or SEARCH_THREADS
    hnsw = {"m": args.hnsw_m, "ef_construction": args.ef_construction, "ef_search": args.ef_search}
    rows = [r for n in args.sizes for r in measure(n, args.dim, args.probes, args.seed, hnsw)]
    if args.json_out:
        from facekd.io_utils import atomic_write_json

        atomic_write_json(args.json_out, {
            "command": "python " + " ".join(sys.argv), "faiss": faiss.__version__,
            "faiss_search_threads": SEARCH_THREADS, "faiss_build_threads": BUILD_THREADS, "cpu": platform.processor() or platform.machine(),
            "rows": rows,
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())

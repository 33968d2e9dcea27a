"""Filtered search benchmark: recall@10 against exact filtered search, exactly-k and latency per selectivity.

    .venv/bin/python bench/filtered.py                          # 1,000,000 x 512, 300 queries
    .venv/bin/python bench/filtered.py --size 100000 --queries 200

The store is bench/search.py's (`bulk_store`: embedding-like vectors, rows in random order of the
mixture), indexed by `build_index`'s automatic choice. A filter `video_id < 'v…'` keeps the first m
rows: 10%, 1% and 0.1% of them, a random sample of the vector space. Ground truth: the exact top 10
among those m rows. Each query goes through `Searcher.search_vector(q, k=10, where=...)` at one thread.

Two tables: (1) per selectivity, the Searcher as it decides (the exact scan of the allowed rows up to
EXACT_SUBSET_MAX, FAISS with an id selector above); (2) the crossover: both paths forced on the same
filters (m from 1,000 to 64,000 rows), to choose EXACT_SUBSET_MAX from the p50s.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.search import ENCODER, K, bulk_store, fmt, log, machine, pinned  # noqa: E402
from bench.vectors import LatentMixture  # noqa: E402
from embedstore.index import Searcher, build_index  # noqa: E402
from embedstore.index import search as search_module  # noqa: E402
from embedstore.store import open_store  # noqa: E402

SELECTIVITIES = (0.1, 0.01, 0.001)
CROSSOVER_ROWS = (1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000)


def where_first(m: int) -> str:
    """A filter keeping rows 0..m-1 (bulk_store names row i 'v{i:07d}')."""
    return f"video_id < 'v{m:07d}'"


def measure(searcher: Searcher, data: np.ndarray, queries: np.ndarray, m: int) -> dict:
    """recall@10 against the exact top 10 of rows < m, share of answers with exactly min(k, m) hits, p50/p99 ms."""
    where = where_first(m)
    truth = faiss.knn(queries, data[:m], K, metric=faiss.METRIC_INNER_PRODUCT)[1]
    searcher.search_vector(queries[0], k=K, where=where)  # the filter's rows are evaluated once, then cached
    found, full, ms = [], 0, []
    for q in queries:
        t = time.perf_counter()
        found_ids = searcher.search_vector(q, k=K, where=where).ids
        ms.append((time.perf_counter() - t) * 1000)
        ids = [int(i[1:]) for i in found_ids]
        full += len(ids) == min(K, m)
        found.append(ids)
    recall = float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))
    return {"recall": recall, "exactly_k": full / len(queries), "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--centres", type=int, default=2000, help="mixture centres (bench/search.py's --centres)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="embedstore-filtered-"))
    path = workdir / f"store-{args.size}"
    shutil.rmtree(path, ignore_errors=True)
    space = LatentMixture(args.dim, centres=args.centres)
    data, _ = space.sample(args.size, seed=1)
    queries, _ = space.sample(args.queries, seed=2)
    try:
        bulk_store(path, data).close()
        with open_store(path, read_only=True) as store:
            side = build_index(store, ENCODER, progress=False)
            log(f"[{args.size}] {side['factory']} {side['search_params']} in {side['build_seconds']:.1f} s")
            searcher = Searcher(store, ENCODER)
            print(f"# embedstore filtered search, {time.strftime('%Y-%m-%d')}\n\n{machine()}\n")
            print(f"{args.size:,} x {args.dim} ({args.centres:,} centres), {args.queries} queries, k={K}, 1 thread; "
                  f"index {side['factory']} {side['search_params']}; EXACT_SUBSET_MAX "
                  f"{search_module.EXACT_SUBSET_MAX:,}\n")
            print("| kept | rows | path | recall@10 vs exact filtered | exactly k | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|")
            with pinned(1):
                for share in SELECTIVITIES:
                    m = max(1, round(share * args.size))
                    r = measure(searcher, data, queries, m)
                    path_name = "exact subset" if m <= search_module.EXACT_SUBSET_MAX else "FAISS + id selector"
                    print(f"| {share:.1%} | {m:,} | {path_name} | {r['recall']:.3f} | {r['exactly_k']:.1%} | "
                          f"{fmt(r['p50'], 3)} | {fmt(r['p99'], 3)} |", flush=True)
                print("\nCrossover (both paths forced on the same filter):\n\n"
                      "| rows kept | exact subset p50 ms | selector p50 ms | selector recall@10 | selector exactly k |\n"
                      "|---|---|---|---|---|")
                default = search_module.EXACT_SUBSET_MAX
                try:
                    for m in (m for m in CROSSOVER_ROWS if m < args.size):
                        search_module.EXACT_SUBSET_MAX = args.size
                        exact = measure(searcher, data, queries, m)
                        search_module.EXACT_SUBSET_MAX = 0
                        selector = measure(searcher, data, queries, m)
                        print(f"| {m:,} | {fmt(exact['p50'], 3)} | {fmt(selector['p50'], 3)} | {selector['recall']:.3f} | "
                              f"{selector['exactly_k']:.1%} |", flush=True)
                finally:
                    search_module.EXACT_SUBSET_MAX = default
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

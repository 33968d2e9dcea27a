"""Audit benchmark: `embedstore audit` time at scale on the automatic index, and recall of its near-duplicate pairs
against an exact pass (every pair above the same threshold, faiss range search) on a subset.

    .venv/bin/python bench/audit.py                          # 1,000,000 x 512, recall on the first 50,000
    .venv/bin/python bench/audit.py --n 100000 --subset 50000

Data: embedding-like unit vectors (bench/vectors.py), written with bench/search.py's bulk_store; a share
of rows (--dup-share) is overwritten by a near copy of the row before it (noise 0.002 per dimension:
cosine ~0.999), so the planted pairs sit side by side and most fall inside the subset. No video files:
the audit takes its vectors-only threshold rule, as on released vectors. FAISS uses all cores.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.search import ENCODER, bulk_store  # noqa: E402
from bench.vectors import LatentMixture  # noqa: E402
from embedstore.analysis.audit import audit, near_pairs  # noqa: E402
from embedstore.index import Searcher, build_index  # noqa: E402
from embedstore.store import open_store  # noqa: E402


def vectors_with_copies(n: int, dim: int, share: float, seed: int = 1) -> tuple[np.ndarray, int]:
    vectors, _ = LatentMixture(dim).sample(n, seed)
    rng = np.random.default_rng(seed + 1)
    copies = np.sort(rng.choice(np.arange(1, n), int(share * n), replace=False))
    copies = copies[np.diff(copies, prepend=-2) > 1]  # no copy of a copy
    noisy = vectors[copies - 1] + 0.002 * rng.standard_normal((len(copies), dim), dtype=np.float32)
    vectors[copies] = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    return vectors, len(copies)


def exact_pairs(vectors: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    """Every pair (i < j) with cosine >= threshold: faiss range search over a flat index, in blocks."""
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    found = set()
    for start in range(0, len(vectors), 4096):
        lims, _, hits = index.range_search(vectors[start:start + 4096], threshold)
        for q in range(len(lims) - 1):
            i = start + q
            found.update((i, int(j)) for j in hits[lims[q]:lims[q + 1]] if j > i)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--subset", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--dup-share", type=float, default=0.01)
    parser.add_argument("--factory", default=None, help="FAISS factory string (default: build_index's automatic choice)")
    args = parser.parse_args()
    print(f"# bench/audit.py: n {args.n:,} x {args.dim}, {args.factory or 'automatic index'}, subset {args.subset:,}, "
          f"{os.cpu_count()} cores, faiss threads {faiss.omp_get_max_threads()}, load {os.getloadavg()[0]:.2f}")
    vectors, planted = vectors_with_copies(args.n, args.dim, args.dup_share)
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        bulk_store(Path(tmp) / "store", vectors).close()
        with open_store(Path(tmp) / "store", read_only=True) as store:
            start = time.perf_counter()
            side = build_index(store, ENCODER, factory=args.factory, progress=False)
            build_s = time.perf_counter() - start
            start = time.perf_counter()
            result = audit(store, ENCODER, progress=False)
            audit_s = time.perf_counter() - start
            threshold = result.report["threshold"]["value"]
            searcher = Searcher(store, ENCODER)
            start = time.perf_counter()
            pairs = near_pairs(searcher, threshold, 10)
            pairs_s = time.perf_counter() - start
    start = time.perf_counter()
    truth = exact_pairs(vectors[:args.subset], threshold)
    exact_s = time.perf_counter() - start
    found = {(a, b) for a, b, _ in pairs if b < args.subset}
    recall = len(found & truth) / max(1, len(truth))
    print(f"planted pairs {planted:,}; threshold {threshold:.6f} ({result.report['threshold']['method']})")
    print(f"| step | seconds |\n|---|---|\n| build {side['factory']} (recall@10 {side['recall_at_10']:.3f}, "
          f"{side['search_params']}) | {build_s:.1f} |\n| whole audit | {audit_s:.1f} |\n"
          f"| near-duplicate pass alone ({len(pairs):,} pairs) | {pairs_s:.1f} |\n"
          f"| exact pass on the subset ({len(truth):,} pairs) | {exact_s:.1f} |")
    print(f"near-duplicate recall on the first {args.subset:,} rows: {recall:.4f} "
          f"({len(found & truth):,} of {len(truth):,}; {len(found - truth)} found that the exact pass has not)")
    scale = 1_000_000 / args.n
    print(f"linear extrapolation to 1M (index search and build grow a little faster than n): audit "
          f"~{audit_s * scale / 60:.1f} min, build ~{build_s * scale / 60:.1f} min")


if __name__ == "__main__":
    main()

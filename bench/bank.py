"""EchoPrime candidate bank: top-50 over a memory-mapped 1.23M x 512 bank vs the same matrix held in memory.

    .venv/bin/python bench/bank.py [--rows 1230000] [--queries 20]

Writes an embedding-like bank (bench/vectors.py) as float32 .npy in a temporary folder, then times
`index.predict.top_k` (the path `embedstore predict --bank` takes: chunked matrix products over
np.load(mmap_mode='r'), page cache warm) against the raw alternative (the whole matrix in process
memory, one matrix-vector product + argpartition). Reports per-query median and p99 latency and the
process's resident memory after each, split as /proc/self/status does: RssAnon (the process's own
memory) and RssFile (mapped file pages: shared page cache the kernel can drop).
"""
from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.vectors import CHUNK, LatentMixture  # noqa: E402
from embedstore.index.predict import top_k  # noqa: E402

K = 50


def rss_mb() -> tuple[float, float]:
    """(RssAnon, RssFile) in MB, now."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return tuple(int(fields[k].split()[0]) / 1024 for k in ("RssAnon", "RssFile"))


def timed(fn, queries: np.ndarray) -> list[float]:
    out = []
    for q in queries:
        start = time.perf_counter()
        fn(q)
        out.append((time.perf_counter() - start) * 1000)
    return out


def raw_top_k(matrix: np.ndarray, q: np.ndarray) -> np.ndarray:
    scores = matrix @ q
    top = np.argpartition(-scores, K - 1)[:K]
    return top[np.argsort(-scores[top])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_230_000)
    ap.add_argument("--queries", type=int, default=20)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-bank-"))
    try:
        mixture = LatentMixture(512)
        npy = work / "candidate_embeddings.npy"
        out = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=(args.rows, 512))
        for start in range(0, args.rows, CHUNK):
            n = min(CHUNK, args.rows - start)
            out[start : start + n] = mixture.sample(n, seed=start + 1)[0]
        out.flush()
        del out  # unmapped: the written pages leave this process's RSS
        queries = mixture.sample(args.queries, seed=10**9)[0]
        before = rss_mb()
        bank = np.load(npy, mmap_mode="r")
        top_k(bank, queries[0], K)  # warm the page cache
        mapped = timed(lambda q: top_k(bank, q, K), queries)
        mapped_rss = rss_mb()
        memory = np.load(npy)
        raw = timed(lambda q: raw_top_k(memory, q), queries)
        raw_rss = rss_mb()
        same = all(set(top_k(bank, q, K)[1].tolist()) == set(raw_top_k(memory, q).tolist()) for q in queries[:3])
        print(f"machine: {platform.processor() or platform.machine()}, bank {args.rows} x 512 float32 "
              f"({args.rows * 512 * 4 / 2**30:.2f} GiB), top-{K}, {args.queries} single queries, same top-{K}: {same}")
        print("| path | median ms | p99 ms | RssAnon MB | RssFile MB |")
        print("|---|---|---|---|---|")
        for name, times, (anon, file) in (("mmap + chunked top_k (predict --bank)", mapped, mapped_rss),
                                          ("in memory, one product (raw numpy)", raw, raw_rss)):
            p99 = float(np.percentile(times, 99))
            print(f"| {name} | {statistics.median(times):.1f} | {p99:.1f} | {anon:.0f} | {file:.0f} |")
        print(f"(before mapping: RssAnon {before[0]:.0f} MB, RssFile {before[1]:.0f} MB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

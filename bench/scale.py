"""Scale benchmark: the automatic index beyond the in-RAM limit (IVF-PQ + exact re-ranking, memory-mapped) vs HNSW32.

    .venv/bin/python bench/scale.py                       # 2,000,000 x 512, 1,000 queries, 8 GiB in-RAM limit
    .venv/bin/python bench/scale.py --n 1000000 --memory 4G

Data: embedding-like unit vectors (bench/vectors.py), generated chunk by chunk into a memory-mapped
.npy and written to a store by bench.search.bulk_store; 1,000 fresh queries from the same mixture;
ground truth = exact inner product over the store (streamed, tuning.exact_neighbours).

The automatic choice runs under an in-RAM limit ($EMBEDSTORE_INDEX_MEMORY = --memory): HNSW32 at
2M x 512 needs ~4.8 GB, more than half of 8 GiB, so `build_index` picks IVF{K},PQ{m},RFlat. HNSW32
is then built too when it fits in this machine's available memory. Each index is loaded in a fresh
process the way the service does (`load_index`: the IVF-PQ file memory-mapped), and measured:
recall@10 on the fresh queries with the sidecar's parameters, single queries at one thread
(latency p50/p99, q/s), batches at one thread and at all cores. Extra rows on the same IVF-PQ file:
without re-ranking (k_factor 1: the PQ ceiling) and read with IO_FLAG_MMAP (exact vectors in RAM).

Every phase runs in its own process, so its peak RSS (ru_maxrss) is its own. RSS counts the touched
pages of memory-mapped files, which are page cache the kernel can drop (and, with fault-around, maps
neighbouring cached pages too); "anon" (RssAnon, sampled every 50 ms for the peak) is the process's
own memory, which is what a mapped index saves. Timings are on a shared, noisy machine: compare
rows of one run, not across runs.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.search import ENCODER, K, bulk_store, log, machine, pinned  # noqa: E402
from bench.vectors import LatentMixture  # noqa: E402

SINGLE_BUDGET_S = 20.0  # single-query loops stop after this (and at least 100 queries)
CHUNK = 100_000


# -- phases (each in its own process) --------------------------------------------------------------
def make_data(workdir: Path, n: int, dim: int, n_queries: int) -> dict:
    """Store of n vectors + fresh queries; the vectors go through a memory-mapped file, never all in RAM."""
    space = LatentMixture(dim)
    raw = np.lib.format.open_memmap(workdir / "vectors.npy", mode="w+", dtype=np.float32, shape=(n, dim))
    for start in range(0, n, CHUNK):
        raw[start : start + CHUNK] = space.sample(min(CHUNK, n - start), seed=1 + start // CHUNK)[0]
    raw.flush()
    np.save(workdir / "queries.npy", space.sample(n_queries, seed=2)[0])
    bulk_store(workdir / "store", raw).close()
    del raw
    (workdir / "vectors.npy").unlink()
    return {}


def exact_truth(workdir: Path) -> dict:
    from embedstore.index.tuning import exact_neighbours
    from embedstore.store import open_store

    queries = np.load(workdir / "queries.npy")
    with open_store(workdir / "store", read_only=True) as store:
        rows = np.array([r for _, r in store.catalog.embedding_map(ENCODER, "videos")], dtype=np.int64)
        np.save(workdir / "truth.npy", exact_neighbours(store, ENCODER, "videos", rows, queries, K))
    return {}


def build(workdir: Path, memory: str, factory: str | None) -> dict:
    """build_index as `embedstore index` runs it, under the in-RAM limit."""
    from embedstore.index import build_index
    from embedstore.store import open_store

    os.environ["EMBEDSTORE_INDEX_MEMORY"] = memory
    with open_store(workdir / "store", read_only=True) as store:
        return build_index(store, ENCODER, factory=factory, progress=False)


def measure(workdir: Path, memory: str, variant: str, cores: int) -> dict:
    """Load the index as the service does and measure recall, latency and throughput."""
    from embedstore.index.build import load_index
    from embedstore.index.factory import search_parameters
    from embedstore.index.files import index_paths
    from embedstore.store import open_store

    os.environ["EMBEDSTORE_INDEX_MEMORY"] = memory
    queries, truth = np.load(workdir / "queries.npy"), np.load(workdir / "truth.npy")
    with open_store(workdir / "store", read_only=True) as store:
        started = time.perf_counter()
        index, side = load_index(store, ENCODER)
        if variant == "IO_FLAG_MMAP":
            index = faiss.read_index(str(index_paths(store, ENCODER)[0]), faiss.IO_FLAG_MMAP)
        load_s = time.perf_counter() - started
        after_load = memory_status()
        params = dict(side["search_params"], **({"k_factor": 1} if variant == "no re-rank" else {}))
        sp = search_parameters(params, K)
        with pinned(cores):
            found = index.search(queries, K, params=sp)[1]
        recall = float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)]))
        with pinned(1):
            latencies = single_latencies(lambda q: index.search(q[None], K, params=sp), queries)
            qps_1 = batch_qps(lambda Q: index.search(Q, K, params=sp), queries)
        with pinned(cores):
            qps_all = batch_qps(lambda Q: index.search(Q, K, params=sp), queries)
    return {"side": side, "params": params, "recall": recall, "load_s": load_s, "rss_load": after_load,
            "single_qps": 1000 / float(np.mean(latencies)), "p50": float(np.percentile(latencies, 50)),
            "p99": float(np.percentile(latencies, 99)), "n_single": len(latencies), "qps_1": qps_1,
            "qps_all": qps_all, "rss_end": memory_status()}


# -- measuring helpers ---------------------------------------------------------------------------
def single_latencies(search, queries: np.ndarray) -> list[float]:
    """Milliseconds per single query, stopping after SINGLE_BUDGET_S (at least 100 queries)."""
    out: list[float] = []
    started = time.perf_counter()
    for i, q in enumerate(queries):
        t = time.perf_counter()
        search(q)
        out.append((time.perf_counter() - t) * 1000)
        if i >= 99 and time.perf_counter() - started > SINGLE_BUDGET_S:
            break
    return out


def batch_qps(search, queries: np.ndarray) -> float:
    search(queries[:16])  # warm up
    t = time.perf_counter()
    search(queries)
    return len(queries) / (time.perf_counter() - t)


def memory_status() -> dict:
    """RSS split into anonymous memory and mapped file pages (GB), from /proc/self/status."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    kb = {k: int(fields[k].split()[0]) for k in ("VmRSS", "RssAnon", "RssFile")}
    return {k: v * 1024 / 1e9 for k, v in kb.items()}


def run_phase(name: str, fn, *args) -> dict:
    """fn(*args) in a fresh process; its result plus wall time and peak RSS (GB)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        started = time.perf_counter()
        result = pool.submit(_with_peak, fn, *args).result()
    result["seconds"] = time.perf_counter() - started
    log(f"{name}: {result['seconds']:.0f} s, peak RSS {result['peak_rss']:.2f} GB (anon {result['peak_anon']:.2f} GB)")
    return result


def _with_peak(fn, *args) -> dict:
    """fn(*args), its peak RSS (ru_maxrss: counts touched pages of mapped files too) and peak RssAnon (sampled)."""
    peak, done = [0.0], threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], memory_status()["RssAnon"])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out = fn(*args)
    finally:
        done.set()
        sampler.join()
    return {**out, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
            "peak_anon": max(peak[0], memory_status()["RssAnon"])}


def available_gb() -> float:
    from embedstore.index.factory import available_memory

    os.environ.pop("EMBEDSTORE_INDEX_MEMORY", None)
    return (available_memory() or 0) / 1e9


# -- report ---------------------------------------------------------------------------------------
def table(n: int, dim: int, n_queries: int, rows: list[tuple[str, dict, dict]], cores: int) -> str:
    lines = [f"### {n:,} x {dim}, {n_queries:,} fresh queries, k={K} ({machine()})", "",
             f"| index | params | recall@10 | build s | build peak RSS GB (anon) | file GB | after load RSS GB (anon) | "
             f"single q/s (1 thr) | p50 ms | p99 ms | batch q/s (1 thr) | batch q/s ({cores} thr) | after searches RSS GB (anon) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, built, m in rows:
        side, load, end = m["side"], m["rss_load"], m["rss_end"]
        build_s, peak = (f"{built['build_seconds']:.0f}", f"{built['peak_rss']:.2f} ({built['peak_anon']:.2f})") if built else ("-", "-")
        lines.append(
            f"| {label} | {m['params']} | {m['recall']:.3f} | {build_s} | {peak} | "
            f"{side['index_bytes'] / 1e9:.2f} | {load['VmRSS']:.2f} ({load['RssAnon']:.2f}) | {m['single_qps']:,.0f} | "
            f"{m['p50']:.2f} | {m['p99']:.2f} | {m['qps_1']:,.0f} | {m['qps_all']:,.0f} | {end['VmRSS']:.2f} ({end['RssAnon']:.2f}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--memory", default="8G", help="in-RAM limit for the automatic choice ($EMBEDSTORE_INDEX_MEMORY)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/embedstore-scale"))
    parser.add_argument("--no-hnsw", action="store_true", help="skip the HNSW32 comparison")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    log(f"{args.n:,} x {args.dim}, in-RAM limit {args.memory}, {machine()}")
    data = run_phase("data", make_data, args.workdir, args.n, args.dim, args.queries)
    truth = run_phase("exact ground truth", exact_truth, args.workdir)
    auto = run_phase("build automatic", build, args.workdir, args.memory, None)
    log(f"automatic: {auto['factory']} ({auto['choice']}), {auto['search_params']}, recall {auto['recall_at_10']}")
    rows = [(f"automatic: {auto['factory']} (mapped)", auto, run_phase("search automatic", measure, args.workdir, args.memory, "", cores))]
    rows.append(("same file, no re-rank", {}, run_phase("search no re-rank", measure, args.workdir, args.memory, "no re-rank", cores)))
    rows.append(("same file, IO_FLAG_MMAP", {}, run_phase("search IO_FLAG_MMAP", measure, args.workdir, args.memory, "IO_FLAG_MMAP", cores)))
    hnsw_gb = args.n * (4 * args.dim + 2 * 32 * 4 * 1.1 + 64) / 1e9
    if args.no_hnsw or hnsw_gb > 0.8 * available_gb():
        log(f"HNSW32 skipped: needs ~{hnsw_gb:.1f} GB, {available_gb():.1f} GB available")
    else:
        hnsw = run_phase("build HNSW32", build, args.workdir, args.memory, "HNSW32")
        rows.append(("HNSW32 (in RAM)", hnsw, run_phase("search HNSW32", measure, args.workdir, args.memory, "", cores)))
    print(table(args.n, args.dim, args.queries, rows, cores))
    print(f"\ndata + store: {data['seconds']:.0f} s, peak RSS {data['peak_rss']:.2f} GB (anon {data['peak_anon']:.2f}); "
          f"exact ground truth: {truth['seconds']:.0f} s. RSS counts the touched pages of mapped files (page cache the "
          f"kernel can drop); anon is the process's own memory. Threads pinned with faiss.omp_set_num_threads, torch "
          f"and threadpoolctl (bench.search.pinned).")
    shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

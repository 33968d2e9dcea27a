"""Everything that needs a GPU, in one run of under 5 minutes on one GPU, with no network; one table.

    .venv/bin/python bench/gpu_smoke.py                  # on a CUDA machine, after `make install-gpu`
    .venv/bin/python bench/gpu_smoke.py --device cpu --n 20000 --videos 2 --encoders r3d   # the script, on a CPU

1. the @pytest.mark.gpu tests (encoders CUDA vs CPU, batch vs single, GPU exact search, Ray GPU actor);
2. per encoder (random init: the architecture, so the cost, is the published one): videos/s of the
   bare model at fp32 and bf16, the whole encode pipeline / bare model ratio, the cosine between bf16 and
   fp32 vectors of the same videos, and between GPU and CPU vectors;
3. FAISS exact search of 1M x 512 embedding-like vectors, batch queries/s on the GPU vs the CPU;
4. where the faiss build has cuVS: a CAGRA graph build vs the CPU HNSW32 build on the same vectors.
A lent machine may have another torch build and only what was carried: the script needs only this
repository, its .venv and no download.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.vectors import embedding_like  # noqa: E402
from embedstore.datasets.ingest import ingest  # noqa: E402
from embedstore.datasets.phantom import make_phantom  # noqa: E402
from embedstore.devices import faiss_gpus, runtime  # noqa: E402
from embedstore.encode import encode_store  # noqa: E402
from embedstore.encoders import get_encoder  # noqa: E402
from embedstore.index.exact import knn  # noqa: E402
from embedstore.store import open_store  # noqa: E402
from embedstore.video.read import read_video  # noqa: E402

ENCODERS = ("r3d", "r3d-v0", "videomae", "echoclip")
rows: list[tuple[str, str, str]] = []  # (what, figure, note): the one table


def row(what: str, figure: str, note: str = "") -> None:
    rows.append((what, figure, note))
    print(f"  {what}: {figure} {note}", flush=True)


def gpu_tests(device: str) -> None:
    if device == "cpu":
        row("gpu tests", "not run", "--device cpu")
        return
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py"], cwd=ROOT,
                          capture_output=True, text=True)
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr.strip()[-200:]
    row("gpu tests (pytest -m gpu)", "passed" if done.returncode == 0 else "FAILED", tail)


def cosines(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def timed(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def encoders(names: list[str], device: str, videos: int, frames: int, batch: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="gpu-smoke-"))
    make_phantom(work / "cohort", patients=videos, videos_per_patient=1, seed=3, frames=frames)
    paths = sorted((work / "cohort" / "Videos").glob("*.avi"))
    clips = [read_video(p) for p in paths]
    for name in names:
        vectors = {}
        for precision in ("fp32", "bf16"):
            enc = get_encoder(name, random_init=True, device=device, precision=precision)
            inputs = [enc.preparer(v) for v in clips]
            enc.embed_prepared(inputs[:batch])  # warm-up (cudnn autotune, lazy init)
            seconds = timed(lambda: [enc.embed_prepared(inputs[i : i + batch]) for i in range(0, len(inputs), batch)])
            vectors[precision] = enc.embed_prepared(inputs)
            row(f"{name} {precision} bare model", f"{len(inputs) / seconds:.1f} videos/s", f"batch {batch}, {device}")
            if precision == "fp32":
                with open_store(work / f"s-{name}", create=True) as store:
                    ingest(work / "cohort", store, progress=False)
                    summary = encode_store(store, enc, batch_size=batch, progress=False)
                row(f"{name} fp32 pipeline / bare", f"{summary.per_second * seconds / len(inputs):.2f}",
                    f"{summary.per_second:.1f} videos/s read+decode+prepare+model+write")
        row(f"{name} bf16 vs fp32", f"min cosine {cosines(vectors['bf16'], vectors['fp32']):.5f}")
        if device != "cpu":
            cpu = get_encoder(name, random_init=True, device="cpu").embed_videos(clips[:2])
            row(f"{name} {device} vs cpu", f"min cosine {cosines(vectors['fp32'][:2], cpu):.5f}")


def exact_search(n: int, queries: int) -> None:
    base = embedding_like(n, seed=1)
    q = embedding_like(queries, seed=2)
    cpu_q = q[: max(1, queries // 10)]  # the CPU scan is ~100x slower: fewer queries, same per-query figure
    cpu = timed(lambda: knn(cpu_q, base, 10, use_gpu=False), repeats=1)
    row(f"exact search {n:,} x 512, cpu", f"{len(cpu_q) / cpu:.0f} queries/s", f"{faiss.omp_get_max_threads()} threads")
    if faiss_gpus() == 0:
        row(f"exact search {n:,} x 512, gpu", "not run", "the faiss build sees no GPU (make install-gpu)")
        return
    knn(q[:10], base, 10, use_gpu=True)  # warm-up
    gpu = timed(lambda: knn(q, base, 10, use_gpu=True))
    _, ids_gpu = knn(cpu_q, base, 10, use_gpu=True)
    _, ids_cpu = knn(cpu_q, base, 10, use_gpu=False)
    row(f"exact search {n:,} x 512, gpu", f"{queries / gpu:.0f} queries/s",
        f"{(cpu / len(cpu_q)) / (gpu / queries):.0f}x cpu; same top-10 ids {np.mean(ids_gpu == ids_cpu):.4f}")
    if hasattr(faiss, "GpuIndexCagra"):
        graph = min(n, 200_000)
        start = time.perf_counter()
        cagra = faiss.GpuIndexCagra(faiss.StandardGpuResources(), 512, faiss.METRIC_INNER_PRODUCT)
        cagra.train(base[:graph])
        hnsw = faiss.IndexHNSWCagra()
        cagra.copyTo(hnsw)
        cagra_s = time.perf_counter() - start
        start = time.perf_counter()
        cpu_hnsw = faiss.IndexHNSWFlat(512, 32, faiss.METRIC_INNER_PRODUCT)
        cpu_hnsw.add(base[:graph])
        row(f"graph build {graph:,} x 512", f"CAGRA->HNSW {cagra_s:.1f} s", f"CPU HNSW32 {time.perf_counter() - start:.1f} s")
    else:
        row("CAGRA", "not available", "this faiss build has no cuVS")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--n", type=int, default=1_000_000, help="vectors for the exact-search figure")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--encoders", default=",".join(ENCODERS))
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("error: torch sees no CUDA device; run on a GPU machine, or --device cpu to check the script")
    info = runtime()
    print(f"runtime: {info}", flush=True)
    gpu_tests(args.device)
    encoders(args.encoders.split(","), args.device, args.videos, args.frames, args.batch_size)
    exact_search(args.n, args.queries)
    print(f"\n| what | figure | note |  ({', '.join(info['cuda_devices']) or 'no GPU'}; torch {info['torch_version']}, "
          f"faiss {info['faiss_version']} {info['faiss_build']})")
    print("|---|---|---|")
    for what, figure, note in rows:
        print(f"| {what} | {figure} | {note} |")
    sys.exit(1 if any(figure == "FAILED" for _, figure, _ in rows) else 0)


if __name__ == "__main__":
    main()

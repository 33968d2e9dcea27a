"""Ingesting the R3D-v0 release format: embedstore's path vs a plain numpy.loadtxt of the same file.

    .venv/bin/python bench/release_ingest.py [--rows 10030] [--repeats 5]

Writes a synthetic file in the exact release format (FileName.avi, 400 floats as Python prints
float32 values, single spaces, a trailing space; embedding-like directions from bench/vectors.py with
fc-like norms), then times, interleaved so drifting load on a shared machine hits all alike:
  - numpy.loadtxt of the floats (ids skipped with usecols), float32: the obvious alternative;
  - embedstore's parser (`parse_r3d_text`) with all threads and with Arrow pinned to one thread;
  - `embedstore download` end to end from a loopback HTTP server: transfer, sha256, parse, and the
    ingest into a fresh store (catalog rows + HDF5 vectors).
Prints a markdown table: median and max seconds, and the ratio to numpy.loadtxt.
"""
from __future__ import annotations

import argparse
import functools
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.vectors import LatentMixture  # noqa: E402
from embedstore.datasets.releases import download, parse_r3d_text  # noqa: E402

DIM = 400


def write_release(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    unit, _ = LatentMixture(DIM, centres=500, latent=32, seed=seed).sample(rows, seed + 1)
    raw = (unit * rng.uniform(4, 16, size=(rows, 1))).astype(np.float32)
    ids = rng.integers(0, 2**63, size=rows)
    with open(path, "w") as fh:
        for i, v in zip(ids, raw):
            fh.write(f"0X{i:016X}.avi " + " ".join(repr(float(x)) for x in v) + " \n")


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_030)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-release-"))
    path = work / "echonet_embeddings.txt"
    write_release(path, args.rows)
    data = path.read_bytes()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(work)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_port}/{path.name}"

    reference = np.loadtxt(path, usecols=range(1, DIM + 1), dtype=np.float32)
    assert np.array_equal(parse_r3d_text(data, DIM)[1], reference)  # same numbers, and a warm-up

    def one_thread() -> None:
        threads = pa.cpu_count()
        pa.set_cpu_count(1)
        try:
            parse_r3d_text(data, DIM)
        finally:
            pa.set_cpu_count(threads)

    def end_to_end() -> None:
        store = work / f"store-{time.monotonic_ns()}"
        summary = download(url, store, progress=False)
        assert summary["added"] == args.rows
        shutil.rmtree(store)

    steps = {
        "numpy.loadtxt (usecols, float32)": lambda: np.loadtxt(path, usecols=range(1, DIM + 1), dtype=np.float32),
        f"embedstore parse_r3d_text ({pa.cpu_count()} threads)": lambda: parse_r3d_text(data, DIM),
        "embedstore parse_r3d_text (1 thread)": one_thread,
        "embedstore download: HTTP + sha256 + parse + ingest": end_to_end,
    }
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, fn in steps.items():
            times[name].append(timed(fn))
    httpd.shutdown()
    shutil.rmtree(work)

    base = statistics.median(times["numpy.loadtxt (usecols, float32)"])
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{args.rows} x {DIM} release-format file, {len(data) / 2**20:.1f} MiB; {args.repeats} runs each, interleaved")
    print("| step | median s | max s | vs loadtxt |")
    print("|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {max(values):.2f} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()

"""REST load benchmark: requests/s and p50/p99 latency of id and vector queries at 1, 8 and 32 concurrent clients.

    .venv/bin/python bench/rest.py                        # a 10,030-video store in a temporary folder
    .venv/bin/python bench/rest.py --store /tmp/rest10k   # reuse that store (built there on the first run)
    .venv/bin/python bench/rest.py --store W/store-1000000 --workers 1   # the 1M store bench/search.py --workdir W left

The store holds 10,030 embedding-like 512-d vectors (bench/vectors.py) with catalog rows (patient, split,
EF, path), written by bench/search.py's `bulk_store` and indexed by `build_index` (exact Flat at this size).
The server is `embedstore serve` (uvicorn, 1 and then 2 worker processes, no access log) in a subprocess on 127.0.0.1;
the clients are keep-alive connections from this process (bare asyncio HTTP/1.1 by default, httpx with
--client httpx), on the same 2-core machine, so both compete for the cores. "Server CPU" is the server
process tree's CPU time per request, which a busy machine distorts less than latency; "client CPU" is this
process's. Each (workers, query, clients) cell is run --repeats times on fresh connections, each run sending
--requests requests or running --seconds, whichever comes first, after a warm-up; the table gives the
medians and the requests/s range. Loopback only, and everything stops by itself. "In-process" is the same queries through the
same library call the route makes (`Searcher.search(id=...)` / `search(vector=...)`, one at a time, FAISS
on one OpenMP thread as in the server), so HTTP p50 / in-process p50 is the cost of the service around it.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.search import ENCODER, bulk_store, log, machine  # noqa: E402
from bench.vectors import LatentMixture  # noqa: E402
from embedstore.index import Searcher, build_index  # noqa: E402
from embedstore.index.build import read_sidecar  # noqa: E402
from embedstore.store import open_store  # noqa: E402

N = 10_030
DIM = 512
K = 10
CLIENTS = (1, 8, 32)
WARMUP = 100
CLIENT_NAMES = {"raw": "bare asyncio HTTP/1.1 keep-alive connections", "httpx": "httpx.AsyncClient connections"}
GOAL = "id queries at 8 clients: >= 500 requests/s with p99 < 50 ms"


def ensure_store(path: Path, n: int) -> None:
    """Build the store and its index once; a later run with the same --store reuses them (whatever their size:
    bench/search.py --workdir W leaves a 1M store with its HNSW index in W/store-1000000)."""
    if (path / "catalog.duckdb").exists():
        return
    log(f"building a {n:,} x {DIM} store in {path}")
    vectors, _ = LatentMixture(DIM).sample(n, seed=1)
    with bulk_store(path, vectors) as store:
        build_index(store, ENCODER, progress=False)


def queries(path: Path, n: int) -> tuple[list[dict], list[dict]]:
    """n id-query and n vector-query bodies: stored ids at random, fresh vectors from the same mixture."""
    rng = np.random.default_rng(7)
    with open_store(path, read_only=True) as store:
        ids = [r[0] for r in store.catalog.query("SELECT item_id FROM embeddings WHERE encoder = ?", [ENCODER])]
    vectors, _ = LatentMixture(DIM).sample(n, seed=2)
    by_id = [{"encoder": ENCODER, "k": K, "query": {"video_id": ids[i]}} for i in rng.integers(0, len(ids), n)]
    by_vector = [{"encoder": ENCODER, "k": K, "query": {"vector": v.tolist()}} for v in vectors]
    return by_id, by_vector


def in_process(path: Path, bodies: list[dict]) -> np.ndarray:
    """Milliseconds per query through the same Searcher call the route makes, one at a time (wall = CPU here)."""
    faiss.omp_set_num_threads(1)
    with open_store(path, read_only=True) as store:
        searcher = Searcher(store, ENCODER)
        out = []
        for body in bodies:
            q = body["query"]
            t = time.perf_counter()
            searcher.search(id=q.get("video_id"), vector=q.get("vector"), k=K)
            out.append(time.perf_counter() - t)
    return np.array(out) * 1000


def cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its children (uvicorn's worker processes): a cost per
    request that a busy machine distorts less than latency."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir()
                for c in (task / "children").read_text().split()]
    return own + sum(cpu_seconds(child) for child in children)


class RawClient:
    """A bare HTTP/1.1 keep-alive connection sending pre-encoded requests and reading Content-Length responses.

    Why not only httpx: an httpx.AsyncClient request costs ~2 ms of CPU here (measured against /health, whose
    server side costs 0.5 ms), so on 2 cores the client, not the server, would cap the rate at ~250/s.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, requests: list[bytes]):
        self.reader, self.writer, self.requests = reader, writer, requests

    @classmethod
    async def connect(cls, url: str, requests: list[bytes]) -> "RawClient":
        host, port = url.removeprefix("http://").split(":")
        return cls(*await asyncio.open_connection(host, int(port)), requests)

    async def post(self, i: int) -> int:
        self.writer.write(self.requests[i])
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
        await self.reader.readexactly(length)
        return int(head.split(b" ", 2)[1])

    async def close(self) -> None:
        self.writer.close()

    @staticmethod
    def encode(bodies: list[dict]) -> list[bytes]:
        """Each body as a complete POST /search request, encoded once for every connection."""
        out = []
        for body in bodies:
            data = json.dumps(body).encode()
            out.append(b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
        return out


class HttpxClient:
    """One httpx.AsyncClient connection, for comparison (--client httpx)."""

    def __init__(self, session: httpx.AsyncClient, bodies: list[dict]):
        self.session, self.bodies = session, bodies

    @classmethod
    async def connect(cls, url: str, bodies: list[dict]) -> "HttpxClient":
        return cls(httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=1), timeout=60), bodies)

    async def post(self, i: int) -> int:
        return (await self.session.post("/search", json=self.bodies[i])).status_code

    async def close(self) -> None:
        await self.session.aclose()

    @staticmethod
    def encode(bodies: list[dict]) -> list[dict]:
        return bodies


async def load(url: str, bodies: list[dict], clients: int, limit: int, seconds: float, pid: int, kind: str) -> dict:
    """`clients` connections sending bodies back to back until `limit` requests or `seconds` have passed."""
    cls = RawClient if kind == "raw" else HttpxClient
    payloads = cls.encode(bodies)
    connections = [await cls.connect(url, payloads) for _ in range(clients)]
    latencies: list[float] = []
    errors = sent = 0

    async def client(connection) -> None:
        nonlocal errors, sent
        while sent < limit and time.perf_counter() < stop:
            i = sent % len(bodies)
            sent += 1
            t = time.perf_counter()
            status = await connection.post(i)
            latencies.append(time.perf_counter() - t)
            errors += status != 200

    for i in range(WARMUP):
        await connections[0].post(i)
    start, cpu, own = time.perf_counter(), cpu_seconds(pid), time.process_time()
    stop = start + seconds
    await asyncio.gather(*(client(c) for c in connections))
    elapsed, cpu, own = time.perf_counter() - start, cpu_seconds(pid) - cpu, time.process_time() - own
    for c in connections:
        await c.close()
    ms = np.array(latencies) * 1000
    return {"n": len(ms), "rps": len(ms) / elapsed, "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99)), "errors": errors, "cpu_ms": 1000 * cpu / len(ms),
            "client_cpu_ms": 1000 * own / len(ms)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(path: Path, log_file: Path, workers: int = 1) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "EMBEDSTORE_QUEUE_SIZE": str(2 * max(CLIENTS))}
    proc = subprocess.Popen([sys.executable, "-m", "embedstore", "serve", "--store", str(path), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", str(workers), "--log-level", "warning"],
                            stdout=log_file.open("w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                settle(proc.pid)  # the other worker processes may still be loading the store
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server did not start; its log: {log_file}")


def settle(pid: int, quiet_cpu_s: float = 0.05, window_s: float = 1.0) -> None:
    """Wait until the server's process tree uses under quiet_cpu_s of CPU in window_s: every worker has loaded."""
    before = cpu_seconds(pid)
    while True:
        time.sleep(window_s)
        now = cpu_seconds(pid)
        if now - before < quiet_cpu_s:
            return
        before = now


def median_of(runs: list[dict]) -> dict:
    """Each figure's median over repeated runs of one cell, plus the requests/s range (connections are made
    anew each run, and with several worker processes how they are spread over the processes varies)."""
    out = {key: float(np.median([r[key] for r in runs])) for key in runs[0]}
    out.update(n=sum(r["n"] for r in runs), errors=sum(r["errors"] for r in runs),
               rps_min=min(r["rps"] for r in runs), rps_max=max(r["rps"] for r in runs))
    return out


def table(rows: list[tuple[int, str, int, dict, np.ndarray]]) -> str:
    lines = ["| workers | query | clients | requests | requests/s (range) | p50 ms | p99 ms | errors | server CPU ms/request | "
             "client CPU ms/request | in-process p50 ms | p99 ms | HTTP/in-process p50 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for workers, kind, clients, r, local in rows:
        p50, p99 = np.percentile(local, 50), np.percentile(local, 99)
        lines.append(f"| {workers} | {kind} | {clients} | {r['n']} | {r['rps']:,.0f} ({r['rps_min']:,.0f}-{r['rps_max']:,.0f}) | "
                     f"{r['p50']:.2f} | {r['p99']:.2f} | {r['errors']} | {r['cpu_ms']:.2f} | {r['client_cpu_ms']:.2f} | "
                     f"{p50:.2f} | {p99:.2f} | {r['p50'] / p50:.1f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, default=None, help="store folder to reuse or build (default: temporary)")
    parser.add_argument("--n", type=int, default=N, help="vectors in a store built here (a reused --store keeps its own)")
    parser.add_argument("--requests", type=int, default=3000, help="requests per run at most")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per run at most")
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell; the table gives medians")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw",
                        help="raw: a bare keep-alive HTTP/1.1 client (default); httpx: httpx.AsyncClient")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="uvicorn worker processes, one server each")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    path = args.store or Path(tempfile.mkdtemp(prefix="embedstore-rest-")) / "store"
    ensure_store(path, args.n)
    with open_store(path, read_only=True) as store:
        sidecar = read_sidecar(store, ENCODER)
    size, factory = sidecar["n"], sidecar["factory"]
    by_id, by_vector = queries(path, 1000)
    local = {"id": in_process(path, by_id), "vector": in_process(path, by_vector)}
    log_file = path.parent / "rest-server.log"
    rows = []
    for workers in args.workers:
        proc, url = start_server(path, log_file, workers)
        try:
            for kind, bodies in (("id", by_id), ("vector", by_vector)):
                for clients in CLIENTS:
                    result = median_of([asyncio.run(load(url, bodies, clients, args.requests, args.seconds, proc.pid,
                                                         args.client)) for _ in range(args.repeats)])
                    log(f"{workers} worker(s), {kind} x {clients}: {result['rps']:.0f} requests/s, "
                        f"p50 {result['p50']:.2f} ms, p99 {result['p99']:.2f} ms (medians of {args.repeats})")
                    rows.append((workers, kind, clients, result, local[kind]))
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"# embedstore REST benchmark, {time.strftime('%Y-%m-%d %H:%M')}\n\n{machine()}; 1-min load average "
          f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (other work on the machine skews every figure)\n")
    print(f"{size:,} x {DIM} vectors ({factory} index), k={K}; server: `embedstore serve --workers N` (uvicorn, FAISS 1 thread), "
          f"clients: {CLIENT_NAMES[args.client]} in this process on the same machine; medians of {args.repeats} runs per cell, each "
          f"at most {args.requests} requests or {args.seconds:g} s.\n")
    print(table(rows) + "\n")
    for workers, kind, clients, r, _ in rows:
        if kind == "id" and clients == 8:
            met = r["rps"] >= 500 and r["p99"] < 50
            print(f"Goal ({GOAL}) with {workers} worker(s): {'met' if met else 'missed'} "
                  f"({r['rps']:,.0f} requests/s, p99 {r['p99']:.1f} ms).")


if __name__ == "__main__":
    main()

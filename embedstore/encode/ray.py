"""`embedstore encode --engine ray`: the local engine's reader and model, spread over a Ray cluster.

A Ray Data pipeline in which one block is one shard of consecutive pending videos (id order):
  catalog rows (video_id, path) of videos without a vector for the encoder
  -> CPU tasks: read + prepare every video of the block (reader.prepare_one, the local reader job)
  -> encoder actors, one model each (one GPU each when the cluster has GPUs)
  -> each actor writes its block to <store>/staging/<encoder>/<run>-<first position>.npz
     (ids, vectors, failed ids and why), atomically
  -> the driver merges the shards into the store through Store.writer as they arrive, in block
     order (= id order), and deletes them.

Why shard files: work the workers finished survives the driver. A run that dies leaves shards
behind; the next run merges them first (Store.writer skips ids already embedded, so merging twice
is harmless) and then encodes only what is still missing. Ray restarts a lost actor and retries its
blocks; an actor call that raised is retried too (up to MAX_TASK_RETRIES), so a worker failure
costs one block, not the run. Names are deterministic per block, so a retried block overwrites
its own shard instead of adding a second one. The store folder must be visible at the same path
to the driver and every worker (a shared filesystem on a cluster; docs/scaling.md).
"""
from __future__ import annotations

import io
import logging
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedstore import config
from embedstore.encode.job import EncodeSummary, pending_videos, run_args, store_encoding, write_batch
from embedstore.encode.reader import prepare_one
from embedstore.encoders import Encoder
from embedstore.encoders.provenance import rebuild
from embedstore.errors import BadInput
from embedstore.progress import bar
from embedstore.store import Run, Store

SHARD_VIDEOS = 64  # videos per block and shard file: big enough to keep a GPU busy, small enough to retry
MAX_TASK_RETRIES = 3  # per block; a block that fails more often than this fails the run (its shards stay)
CPUS_PER_ACTOR = 1
STAGING = "staging"


@dataclass(frozen=True)
class EncoderRecipe:
    """How an actor rebuilds the driver's encoder: its provenance (picklable; the model is never shipped),
    rebuilt and checked like a query encoder, at the driver's precision whatever the actor's device."""

    cls: type[Encoder]
    provenance: dict

    @classmethod
    def of(cls, encoder: Encoder) -> "EncoderRecipe":
        return cls(type(encoder), encoder.provenance())

    def build(self, device: str) -> Encoder:
        return rebuild(self.provenance, device=device, cls=self.cls)


# -- shard files ------------------------------------------------------------------------------------
def staging_dir(store: Store, encoder: str) -> Path:
    return store.path / STAGING / encoder


def shard_path(staging: Path, run_id: str, first: int) -> Path:
    """Deterministic per block: a retried block rewrites its own file."""
    return staging / f"{run_id}-{first:09d}.npz"


def write_shard(path: Path, ids: np.ndarray, vectors: np.ndarray, failed: np.ndarray, errors: np.ndarray) -> None:
    """Write to a temporary name, flush to disk, then rename: a reader never sees half a shard."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.savez(fh, ids=ids.astype(str), vectors=vectors, failed=failed.astype(str), errors=errors.astype(str))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def merge_shard(write, path: Path, run: Run | None) -> int:
    """Commit a shard's vectors (one atomic batch), record its failures in `run`, delete it; returns how many were new."""
    with np.load(path, allow_pickle=False) as shard:
        ids, vectors, failed, errors = (shard[k] for k in ("ids", "vectors", "failed", "errors"))
    added = write_batch(write, run, ids.tolist(), vectors) if len(ids) else 0
    if run is not None:
        for item, error in zip(failed.tolist(), errors.tolist()):
            run.fail(item, error)
    path.unlink()
    return added


def leftover_shards(staging: Path) -> list[Path]:
    """Complete shards a dead run left behind, in name order; half-written temporaries are removed."""
    if not staging.exists():
        return []
    for tmp in staging.glob("*.npz.tmp*"):
        tmp.unlink()
    return sorted(staging.glob("*.npz"))


# -- the two stages -------------------------------------------------------------------------------
def _pack(array: np.ndarray) -> bytes:
    """Prepared inputs differ in shape from video to video; .npy bytes carry any of them through Arrow."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _unpack(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(blob), allow_pickle=False)


def prepare_block(block: dict[str, np.ndarray], preparer) -> dict[str, np.ndarray]:
    """CPU task: read + prepare every video of a block; a video that fails carries its error instead."""
    inputs, errors = [], []
    for item in zip(block["video_id"].tolist(), block["path"].tolist()):
        _, result = prepare_one(item, preparer)
        failed = isinstance(result, str)
        inputs.append(b"" if failed else _pack(result))
        errors.append(result if failed else "")
    return {"pos": block["pos"], "video_id": block["video_id"],
            "input": np.array(inputs, dtype=object), "error": np.array(errors, dtype=object)}


class ShardEncoder:
    """Ray Data actor: builds the model once, then embeds one block per call and writes it as one shard."""

    def __init__(self, recipe: EncoderRecipe, staging: str, run_id: str, batch_size: int, device: str):
        self.encoder = recipe.build(device)
        self.staging, self.run_id, self.batch_size = Path(staging), run_id, batch_size

    def __call__(self, block: dict[str, np.ndarray]) -> dict[str, list]:
        errors = np.asarray(block["error"], dtype=str)
        ok = errors == ""
        inputs = [_unpack(blob) for blob in block["input"][ok]]
        chunks = [self.encoder.embed_prepared(inputs[s : s + self.batch_size])
                  for s in range(0, len(inputs), self.batch_size)]
        vectors = np.concatenate(chunks) if chunks else np.zeros((0, self.encoder.dim), np.float32)
        first = int(block["pos"][0])
        path = shard_path(self.staging, self.run_id, first)
        ids = np.asarray(block["video_id"], dtype=str)
        write_shard(path, ids[ok], vectors, ids[~ok], errors[~ok])
        return {"shard": [str(path)], "videos": [len(ids)]}


def plan_actors(resources: dict, gpus_per_worker: float, cpus_per_decode: float, device: str) -> tuple[int, float, str]:
    """(encoder actors, GPUs per actor, actor device) for a cluster's resources, or BadInput.

    Actors never take the CPUs the decode tasks need (more actors than that stalled the run: every
    CPU held by an idle model, no decoder left to feed it); GPUs per actor must exist in the cluster;
    `--device cpu` asks for no GPU, `--device cuda` refuses a cluster without one.
    """
    device = config.requested_device(device)
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    if cpus < CPUS_PER_ACTOR + cpus_per_decode:
        raise BadInput(f"the Ray cluster has {cpus:g} CPUs; an encoder actor and a decode task "
                       f"need {CPUS_PER_ACTOR + cpus_per_decode:g}")
    cpu_actors = max(1, int((cpus - cpus_per_decode) // CPUS_PER_ACTOR))
    use_gpus = device != "cpu" and gpus_per_worker > 0 and gpus > 0
    if device.startswith("cuda") and not use_gpus:
        raise BadInput(f"--device cuda, but the Ray cluster has {gpus:g} GPUs (or --gpus-per-worker is 0); "
                       "use --device cpu or add GPU nodes")
    if not use_gpus:
        return max(1, min(cpu_actors, int(cpus) // 2)), 0.0, "cpu"
    if gpus_per_worker > gpus:
        raise BadInput(f"--gpus-per-worker {gpus_per_worker:g} is more than the {gpus:g} GPUs of the Ray cluster")
    return max(1, min(cpu_actors, int(gpus // gpus_per_worker))), gpus_per_worker, "cuda"


def shard_stream(items: list[tuple[str, str]], recipe: EncoderRecipe, preparer, staging: Path, run_id: str,
                 batch_size: int, shard_size: int, gpus_per_worker: float, cpus_per_decode: float,
                 device: str = "auto") -> Iterator[dict]:
    """Run the pipeline on the connected Ray cluster; yield {"shard", "videos"} per block, in block order."""
    import ray
    from ray.data import ActorPoolStrategy

    actors, gpus, actor_device = plan_actors(ray.cluster_resources(), gpus_per_worker, cpus_per_decode, device)
    rows = [{"pos": i, "video_id": video_id, "path": path} for i, (video_id, path) in enumerate(items)]
    ds = ray.data.from_items(rows, override_num_blocks=-(-len(rows) // shard_size))
    _configure(ds.context)
    ds = ds.map_batches(prepare_block, fn_kwargs={"preparer": preparer}, batch_size=None, batch_format="numpy",
                        num_cpus=cpus_per_decode)
    with warnings.catch_warnings():
        # max_task_retries has no named parameter in Ray Data yet; the **ray_remote_args route warns
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = ds.map_batches(ShardEncoder, fn_constructor_kwargs={"recipe": recipe, "staging": str(staging),
                                                                "run_id": run_id, "batch_size": batch_size,
                                                                "device": actor_device},
                            batch_size=None, batch_format="numpy", compute=ActorPoolStrategy(size=actors),
                            num_cpus=CPUS_PER_ACTOR, num_gpus=gpus,
                            max_task_retries=MAX_TASK_RETRIES)
    yield from ds.iter_rows()


def _configure(context) -> None:
    """This dataset's own context (a copy; the process-wide one is left alone)."""
    context.execution_options.preserve_order = True  # shards reach the driver in id order
    context.actor_task_retry_on_errors = True  # an actor call that raised is retried like a lost one
    context.enable_progress_bars = False  # the driver shows one bar, in videos
    context.print_on_execution_start = False


@contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Use the Ray this process already joined; else join `address` (or $RAY_ADDRESS), else start Ray here.

    Only a Ray started here is shut down at the end. A local start has no dashboard and sends no
    usage statistics, so it needs no network.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    local = address is None and not os.environ.get("RAY_ADDRESS")
    if local:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING,
             **({"include_dashboard": False} if local else {}))
    try:
        yield
    finally:
        ray.shutdown()


# -- the driver -----------------------------------------------------------------------------------
def encode_store_ray(store: Store, encoder: Encoder, batch_size: int = 8, address: str | None = None,
                     gpus_per_worker: float = 1.0, cpus_per_decode: float = 1.0, shard_size: int = SHARD_VIDEOS,
                     progress: bool = True, target: str = "videos", device: str = "auto") -> EncodeSummary:
    """Embed every video of `store` that `encoder` has not embedded yet, on Ray; same vectors as the local engine."""
    if target != "videos":
        raise BadInput("--engine ray encodes videos; encode reports with --engine local (text is fast)")
    if batch_size < 1 or shard_size < 1:
        raise BadInput(f"batch size and shard size must be >= 1, got {batch_size} and {shard_size}")
    prov, preparer = store_encoding(store, encoder)
    summary = EncodeSummary(encoder.name, target, provenance=prov)
    staging = staging_dir(store, encoder.name)
    args = run_args(store, prov, summary, encoder=encoder.name, target=target, engine="ray", ray_address=address,
                    batch_size=batch_size, shard_size=shard_size, gpus_per_worker=gpus_per_worker,
                    cpus_per_decode=cpus_per_decode, device=device)
    start = time.perf_counter()
    with store.run("encode", args) as run, store.writer(prov, target, run) as write:
        for path in leftover_shards(staging):
            merge_shard(write, path, None)  # its failures are retried below and reported then
        items, done = pending_videos(store, encoder.name)
        summary.already = done - run.added
        if items:
            with ray_session(address), bar(total=len(items), desc=f"encode {encoder.name} (ray)", unit="video",
                                           enabled=progress) as pbar:
                for row in shard_stream(items, EncoderRecipe.of(encoder), preparer, staging, run.run_id,
                                        batch_size, shard_size, gpus_per_worker, cpus_per_decode, device):
                    merge_shard(write, Path(row["shard"]), run)
                    pbar.update(int(row["videos"]))
        summary.added = run.added
        summary.failed = list(run.failures)
    summary.seconds = time.perf_counter() - start
    return summary

"""`embedstore encode --engine`: `local` (reader threads on this machine, local.py) or `ray` (a Ray cluster, ray.py).

Both run the same reader job (reader.prepare_one) and the same Encoder.embed_prepared, and commit
through job.write_batch and Store.writer, so they give the same vectors for the same videos. Ray is an optional
dependency (`pip install 'embedstore[ray]'`), imported only when the ray engine runs.
"""
from __future__ import annotations

import importlib.util

from embedstore.encode.job import EncodeSummary
from embedstore.encode.local import encode_store
from embedstore.encoders import Encoder
from embedstore.errors import BadInput
from embedstore.index.build import refresh
from embedstore.store import Store

ENGINES = ("local", "ray")


def encode_with(engine: str, store: Store, encoder: Encoder, batch_size: int = 8, workers: int | None = None,
                target: str = "videos", progress: bool = True, ray_address: str | None = None,
                gpus_per_worker: float = 1.0, cpus_per_decode: float = 1.0, device: str = "auto") -> EncodeSummary:
    """Run `encode` on the chosen engine (`workers` is the local engine's, the rest the ray engine's;
    the local engine's device is the encoder's own)."""
    summary = _run(engine, store, encoder, batch_size, workers, target, progress, ray_address, gpus_per_worker,
                   cpus_per_decode, device)
    refresh(store, encoder.name, target)  # a writer refreshes the index, so readers never write
    return summary


def _run(engine: str, store: Store, encoder: Encoder, batch_size: int, workers: int | None, target: str, progress: bool,
         ray_address: str | None, gpus_per_worker: float, cpus_per_decode: float, device: str) -> EncodeSummary:
    if engine == "local":
        return encode_store(store, encoder, batch_size=batch_size, workers=workers, target=target, progress=progress)
    if engine != "ray":
        raise BadInput(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if importlib.util.find_spec("ray") is None:
        raise BadInput("--engine ray needs Ray Data: pip install 'embedstore[ray]'")
    from embedstore.encode.ray import encode_store_ray

    return encode_store_ray(store, encoder, batch_size=batch_size, address=ray_address, gpus_per_worker=gpus_per_worker,
                            cpus_per_decode=cpus_per_decode, progress=progress, target=target, device=device)

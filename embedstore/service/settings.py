"""The REST service's limits, read from `EMBEDSTORE_*` environment variables and overridable by arguments.

Why limits at all: one oversized upload, one long cine or one k of 10^9 must cost the client a clear
error, not the server its memory; and a burst of requests must queue boundedly and then be told to
come back (503 + Retry-After), not pile up until every request times out.
Each field is read from `EMBEDSTORE_<FIELD>` (the token from `EMBEDSTORE_API_TOKEN`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Mapping

from embedstore.errors import BadInput

MiB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Service limits; every number must be positive except queue_size (0: no waiting, only running)."""

    host: str = "127.0.0.1"  # loopback unless told otherwise: the service has no TLS
    max_upload_bytes: int = 64 * MiB  # one uploaded file; 413 as soon as the stream passes it
    max_body_bytes: int = 1 * MiB  # a JSON body (a 4,096-d vector as text is ~100 kB)
    max_frames: int = 1024  # frames decoded from one upload or thumbnail (EchoNet clips: 28-1,002)
    max_k: int = 1000
    request_timeout_s: float = 60.0  # whole request, upload included; past it: 503 code "timeout"
    worker_threads: int = 2  # threads that decode and embed uploads (searches have one thread of their own)
    queue_size: int = 64  # requests that may wait for a worker thread; beyond: 503 code "busy"
    retry_after_s: int = 2  # the Retry-After of every 503
    search_threads: int = 1  # OpenMP threads per FAISS call: a single query gains nothing from more
    max_batch: int = 256  # queries in one POST /search/batch (the body limit bounds vectors too)
    api_token: str | None = None  # when set, every route but /health needs `Authorization: Bearer <token>`
    filter_timeout_s: float = 5.0  # a where filter's DuckDB work is interrupted past this (or the request timeout)
    expose_source_paths: bool = False  # trusted local use only: REST metadata then carries the server's file paths

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", "float") and not (value > 0 or (f.name == "queue_size" and value == 0)):
                raise BadInput(f"service setting {f.name} must be positive, got {value!r}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> "Settings":
        """Defaults, then EMBEDSTORE_<FIELD> variables, then keyword overrides (None means 'not given')."""
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            raw = env.get(f"EMBEDSTORE_{f.name.upper()}")
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _parse(name: str, kind: str, raw: str):
    """One environment value as the field's type; BadInput naming the variable when it is not one."""
    try:
        if kind == "bool":
            return {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}[raw.strip().lower()]
        return int(raw) if kind == "int" else float(raw) if kind == "float" else raw
    except (KeyError, ValueError):
        expected = {"int": "n integer", "float": " number", "bool": " yes/no value (true, false, 1, 0)"}[kind]
        raise BadInput(f"EMBEDSTORE_{name.upper()}={raw!r} is not a{expected}") from None

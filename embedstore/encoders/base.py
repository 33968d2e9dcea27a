"""The Encoder interface every model implements, and the registry that names them.

An encoder is split in two so the encode pipeline can overlap decoding with inference:
`preparer` (model-free, picklable, runs in reader workers) turns a Video into the model input of
one video, and `embed_prepared` runs the model on a batch of those inputs.
"""
from __future__ import annotations

import contextlib
import json
from abc import ABC, abstractmethod
from collections import defaultdict
from copy import deepcopy
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from embedstore import config
from embedstore.devices import bf16_native, out_of_memory_as_error
from embedstore.encoders.provenance import RANDOM_INIT, numerics
from embedstore.encoders.weights import WEIGHTS, Resolved, find, resolve
from embedstore.hashing import sha256_file
from embedstore.errors import BadInput, NotFound
from embedstore.video.read import Video

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class Encoder(ABC):
    """A model that maps videos (and, for CLIP models, texts) to L2-normalised float32 vectors."""

    name: ClassVar[str] = ""
    dim: int = 0
    modalities: frozenset[str] = frozenset({"video"})
    spec: dict = {}
    licence: str = ""
    # precision: auto = bf16 autocast on CUDA (fp16 where bf16 is not native), fp32 on CPU
    defaults: ClassVar[dict[str, Any]] = {"batch_size": 8, "seed": 0, "precision": "auto"}
    # what `embedstore encoders` shows of the published procedure: input scale, frames, resize kernel
    card: ClassVar[dict[str, str]] = {}

    def __init__(self, weights: str | Path | None = None, random_init: bool = False, device: str = "auto", **options):
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise BadInput(
                f"encoder {self.name} has no option {', '.join(unknown)}; its options are {', '.join(sorted(self.defaults))}"
            )
        if random_init and weights is not None:
            raise BadInput(f"encoder {self.name}: give weights or random_init=True, not both")
        self.options = {**self.defaults, **options}
        self.device = config.device(device)
        self.precision = resolve_precision(self.options["precision"], self.device, self.name)
        self.spec = deepcopy(type(self).spec)
        self.resolved: Resolved | None = None if random_init else resolve(self.name, weights)
        self.model = self._build(self.resolved).eval().to(self.device)

    def _build(self, resolved: Resolved | None):
        """Random init is seeded, so a query encoder rebuilt later matches the stored vectors."""
        if resolved is not None:
            return self._load(resolved)
        import torch

        seed = int(self.options["seed"])
        self.spec["random_init_seed"] = seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._load(None)

    @abstractmethod
    def _load(self, resolved: Resolved | None):
        """Build the torch module (random init when `resolved` is None); may update dim and spec."""

    @property
    @abstractmethod
    def preparer(self) -> Callable[[Video], np.ndarray]:
        """A picklable, model-free callable: Video -> the model input of one video (no batch dim)."""

    @abstractmethod
    def _forward(self, batch):
        """Model on a device tensor [B, ...] of prepared inputs -> unnormalised vectors [B, D]."""

    def embed_prepared(self, inputs: list[np.ndarray]) -> np.ndarray:
        """float32 [B, D], L2-normalised; equal shapes are batched, other lengths run one group at a time."""
        out = np.zeros((len(inputs), self.dim), dtype=np.float32)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, x in enumerate(inputs):
            groups[tuple(x.shape)].append(i)
        size = int(self.options["batch_size"])
        for idx in groups.values():
            for start in range(0, len(idx), size):
                chunk = idx[start : start + size]
                out[chunk] = self._run(self._forward, np.stack([inputs[i] for i in chunk]))
        return out

    def embed_videos(self, videos: list[Video]) -> np.ndarray:
        prepare = self.preparer
        return self.embed_prepared([prepare(v) for v in videos])

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        raise BadInput(f"encoder {self.name} has no text tower; use echoclip or echoclip-r")

    def provenance(self) -> dict:
        """What produced these vectors: stored with every vector set and carried by search results."""
        import embedstore

        weights = str(self.resolved.file) if self.resolved else RANDOM_INIT
        preprocessing = {**deepcopy(self.spec), "options": self.recorded_options(), "precision": self.precision,
                         "numerics": numerics(self.device, self.precision)}
        return {
            "encoder": self.name,
            "dim": self.dim,
            "weights": weights,
            "weights_sha256": sha256_file(self.resolved.file) if self.resolved else RANDOM_INIT,
            "preprocessing": preprocessing,
            "package_version": str(getattr(embedstore, "__version__", "0")),
            "modalities": sorted(self.modalities),
        }

    def recorded_options(self) -> dict:
        """Every constructor option, JSON-ready, as provenance records it (encoders add resolved files)."""
        return json.loads(json.dumps(self.options, default=str))

    def _run(self, fn: Callable, array: np.ndarray) -> np.ndarray:
        """fn on `array` moved to the device, in inference mode (autocast at bf16/fp16); normalised float32 rows."""
        import torch
        import torch.nn.functional as F

        with out_of_memory_as_error(f"a batch of {array.shape[0]} inputs of shape {array.shape[1:]}"):
            x = torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
            with torch.inference_mode(), self.autocast():
                y = fn(x)
        return F.normalize(y.float(), dim=-1).cpu().numpy()

    def autocast(self):
        """Autocast at the encoder's precision (nothing at fp32); training uses it too."""
        import torch

        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.split(":")[0], dtype=dtype)

    @classmethod
    def describe(cls) -> dict:
        """Registry row for `embedstore encoders`: no model is built, weights are only looked up."""
        found = find(cls.name)
        precision = cls.defaults["precision"]
        return {
            "name": cls.name,
            "dim": cls.dim,
            "modalities": sorted(cls.modalities),
            **cls.card,
            "precision": "auto (bf16 on CUDA, fp32 on CPU)" if precision == "auto" else precision,
            "weights_file": " or ".join(WEIGHTS[cls.name].files),
            "spec": deepcopy(cls.spec),
            "licence": cls.licence,
            "weights": str(found.file) if found else "not found",
        }


def resolve_precision(requested: str, device: str, name: str = "encoder") -> str:
    """fp32 | bf16 | fp16 from a requested precision: auto is bf16 on a GPU with native bf16, fp16 on an older
    GPU, fp32 on CPU (bf16 on CPU is emulated and slow: only on request)."""
    if requested not in PRECISIONS:
        raise BadInput(f"{name} precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested != "auto":
        return requested
    if not device.startswith("cuda"):
        return "fp32"
    return "bf16" if bf16_native() else "fp16"


_REGISTRY: dict[str, type[Encoder]] = {}


def register(name: str) -> Callable[[type[Encoder]], type[Encoder]]:
    """Class decorator: make an encoder available to get_encoder under `name` (a key of weights.WEIGHTS)."""

    def add(cls: type[Encoder]) -> type[Encoder]:
        if name not in WEIGHTS:
            raise ValueError(f"encoder {name} has no entry in embedstore.encoders.weights.WEIGHTS")
        cls.name = name
        cls.licence = WEIGHTS[name].licence
        _REGISTRY[name] = cls
        return cls

    return add


def _builtins() -> None:
    """Import the built-in encoder modules so their @register lines run."""
    from embedstore.encoders import echoclip, echoprime, echoprime_text, panecho, pixels, r3d, videomae  # noqa: F401


def get_encoder(
    name: str, weights: str | Path | None = None, random_init: bool = False, device: str = "auto", **options
) -> Encoder:
    """Build encoder `name` with weights found by weights.resolve (or explicit `weights`)."""
    _builtins()
    cls = _REGISTRY.get(name)
    if cls is None:
        known = ", ".join(c.name for c in _ordered())
        raise NotFound(f"unknown encoder '{name}'; known: {known}; run `embedstore encoders`")
    return cls(weights=weights, random_init=random_init, device=device, **options)


def list_encoders() -> list[dict]:
    """One row per registered encoder: name, dim, modalities, spec, licence, where its weights are."""
    _builtins()
    return [cls.describe() for cls in _ordered()]


def _ordered() -> list[type[Encoder]]:
    """Registered encoders in the order of the weights table."""
    return sorted(_REGISTRY.values(), key=lambda c: list(WEIGHTS).index(c.name))

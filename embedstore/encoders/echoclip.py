"""EchoCLIP and EchoCLIP-R (Nature Medicine 2024): open_clip image + text towers, frame by frame.

Weights come from a folder in open_clip's hub format (open_clip_config.json with model_cfg and
preprocess_cfg, plus open_clip_model.safetensors or open_clip_pytorch_model.bin): the hub cache
of mkaichristensen/echo-clip(-r) or a local copy. Embed dim, image size and mean/std are read from
that config at load time.

Frames, per the authors: every frame, centre-cropped square, central 80% kept, bicubic resize to
the image size, the model's mean/std. Video vector = mean of the L2-normalised frame vectors,
re-normalised. Text: CLIP BPE for EchoCLIP, the template tokenizer for EchoCLIP-R.
"""
from __future__ import annotations

import json
import os
from copy import deepcopy
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from embedstore.config import weights_dir
from embedstore.encoders.base import Encoder, register
from embedstore.encoders.weights import Resolved
from embedstore.errors import BadInput, WeightsNotFound
from embedstore.hashing import sha256_file
from embedstore.video.prepare import center_crop_square, resize_uint8, zoom_center
from embedstore.video.read import Video

VOCAB_ENV = "EMBEDSTORE_ECHOCLIP_R_VOCAB"
VOCAB_FILE = "template_vocab.txt"
DEFAULT_MODEL = "convnext_base"  # open_clip's config matching EchoCLIP's published architecture
EF_PROMPTS = (
    "THE LEFT VENTRICULAR EJECTION FRACTION IS ESTIMATED TO BE <#>% ",
    "LV EJECTION FRACTION IS <#>%. ",
)


@dataclass(frozen=True)
class EchoCLIPPreparer:
    """Video -> uint8 [T, 3, h, w]: square crop, keep the central `keep` fraction, bicubic resize."""

    size: tuple[int, int]
    keep: float = 0.8

    def __call__(self, video: Video) -> np.ndarray:
        frames = zoom_center(center_crop_square(video.frames), self.keep)
        return resize_uint8(frames, self.size, mode="bicubic")


@register("echoclip")
class EchoCLIP(Encoder):
    dim = 512
    modalities = frozenset({"video", "text"})
    spec = {
        "sampling": "all",
        "frames": "all, embedded one by one",
        "size": [224, 224],
        "crop": "centre square, then central 80% (10% off each side)",
        "resize": "bicubic a=-0.75, no antialias (OpenCV INTER_CUBIC, as the authors)",
        "colour": "RGB (the authors' OpenCV reader feeds BGR; identical for grey B-mode, differs for colour Doppler)",
        "scale": "0-1",
        "mean": None,  # the model's, read from open_clip_config.json at load time
        "std": None,
        "layout": "frames,C,H,W",
        "pooling": "mean of L2-normalised frame embeddings, re-normalised",
        "tokenizer": "CLIP BPE",
    }
    card = {"input_scale": "0-1, then the model's open_clip mean/std; RGB (the authors feed BGR)",
            "frames": "every frame, one by one, mean of L2-normalised vectors (zero-shot: 0..40 stride 2)",
            "resize": "centre square crop, central 80% (int trims), bicubic a=-0.75 no antialias (OpenCV INTER_CUBIC)"}
    # batch_size: frames (or texts) per forward pass; model_cfg: open_clip model config for random_init
    defaults = {**Encoder.defaults, "batch_size": 64, "model_cfg": None}

    def _load(self, resolved: Resolved | None):
        import open_clip

        if resolved is None:
            model_cfg = deepcopy(self.options["model_cfg"] or open_clip.get_model_config(DEFAULT_MODEL))
            preprocess: dict = {}
        elif self.options["model_cfg"]:
            raise BadInput(f"{self.name} model_cfg applies to random_init only; a checkpoint brings its own config")
        else:
            model_cfg, preprocess = _read_config(resolved.path / "open_clip_config.json")
        model = _build(model_cfg)
        if resolved is not None:
            try:
                open_clip.load_checkpoint(model, str(resolved.file), strict=True)
            except (RuntimeError, KeyError, ValueError, OSError) as exc:
                why = " ".join(str(exc).split())[:200]
                raise BadInput(
                    f"{resolved.file}: does not fit the model in its open_clip_config.json ({why}); "
                    "expected open_clip hub-format weights"
                ) from exc
        size = preprocess.get("size", model.visual.image_size)
        size = [size, size] if isinstance(size, int) else [int(s) for s in size]
        self.dim = int(model_cfg["embed_dim"])
        self.context_length = int(model.context_length)
        self.vocab_size = int(model.vocab_size)
        self.spec.update(
            size=size,
            mean=[float(m) for m in preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN)],
            std=[float(s) for s in preprocess.get("std", open_clip.OPENAI_DATASET_STD)],
        )
        return model

    @property
    def preparer(self) -> EchoCLIPPreparer:
        return EchoCLIPPreparer(tuple(self.spec["size"]))

    def _forward(self, batch):
        import torch

        mean = torch.tensor(self.spec["mean"], device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(self.spec["std"], device=batch.device).view(1, 3, 1, 1)
        return self.model.encode_image((batch.float() / 255.0 - mean) / std)

    def embed_frames(self, prepared: np.ndarray) -> np.ndarray:
        """float32 [F, D]: one L2-normalised vector per prepared frame."""
        size = int(self.options["batch_size"])
        parts = [self._run(self._forward, prepared[i : i + size]) for i in range(0, len(prepared), size)]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)

    def embed_prepared(self, inputs: list[np.ndarray]) -> np.ndarray:
        """Frames of all videos run through the image tower together; each video's mean is re-normalised."""
        if not inputs:
            return np.zeros((0, self.dim), dtype=np.float32)
        frames = self.embed_frames(np.concatenate(inputs))
        ends = np.cumsum([len(x) for x in inputs])[:-1]
        means = np.stack([f.mean(axis=0) for f in np.split(frames, ends)])
        return (means / np.linalg.norm(means, axis=1, keepdims=True)).astype(np.float32)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokenize(list(texts))
        size = int(self.options["batch_size"])
        parts = [self._run(self.model.encode_text, tokens[i : i + size]) for i in range(0, len(tokens), size)]
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), dtype=np.float32)

    def tokenize(self, texts: list[str]) -> np.ndarray:
        import open_clip

        return open_clip.tokenize(texts, context_length=self.context_length).numpy()


@register("echoclip-r")
class EchoCLIPR(EchoCLIP):
    """EchoCLIP-R: the same towers, reports tokenized with the template tokenizer."""

    spec = {**EchoCLIP.spec, "tokenizer": "EchoCLIP-R template tokenizer"}
    # vocab: the authors' template_vocab.txt (else $EMBEDSTORE_ECHOCLIP_R_VOCAB, else in the weights folder)
    defaults = {**EchoCLIP.defaults, "vocab": None}

    def tokenize(self, texts: list[str]) -> np.ndarray:
        return self.template_tokenizer(texts).numpy()

    def recorded_options(self) -> dict:
        """The vocabulary by path and sha256 (None when none is set up yet: a video-only set)."""
        options = super().recorded_options()
        try:
            path = self._vocab_path()
        except WeightsNotFound:
            path = None
        found = path is not None and path.is_file()
        options["vocab"] = str(path.resolve()) if found else None
        options["vocab_sha256"] = sha256_file(path) if found else None
        return options

    @cached_property
    def template_tokenizer(self):
        """Built on first use, so video-only work never needs the vocabulary."""
        from embedstore.encoders.template_tokenizer import TemplateTokenizer

        tokenizer = TemplateTokenizer(self._vocab_path(), context_length=self.context_length)
        if tokenizer.eos >= self.vocab_size:
            raise BadInput(
                f"{tokenizer.path}: its ids reach {tokenizer.eos} but the text tower has {self.vocab_size};"
                " this vocabulary does not belong to this EchoCLIP-R checkpoint"
            )
        return tokenizer

    def _vocab_path(self) -> Path:
        explicit = self.options["vocab"] or os.environ.get(VOCAB_ENV)
        if explicit:
            return Path(explicit).expanduser()
        root = weights_dir()
        if root is not None and (root / self.name / VOCAB_FILE).is_file():
            return root / self.name / VOCAB_FILE
        raise WeightsNotFound(
            f"echoclip-r needs the EchoCLIP-R template vocabulary ({VOCAB_FILE}, academic licence, not shipped):"
            f" set {VOCAB_ENV}=/path/to/{VOCAB_FILE}, pass vocab=PATH, or put it in $EMBEDSTORE_WEIGHTS/echoclip-r/"
        )


def frame_embeddings(encoder: Encoder, video: Video, start: int = 0, stop: int = 40, stride: int = 2) -> np.ndarray:
    """float32 [F, D]: L2-normalised vectors of frames start..min(stop, N) by stride (the zero-shot frames)."""
    if not isinstance(encoder, EchoCLIP):
        raise BadInput(f"frame_embeddings needs echoclip or echoclip-r, not {encoder.name}")
    frames = video.frames[start : min(stop, video.n_frames) : stride]
    if len(frames) == 0:
        raise BadInput(f"no frames in {start}..{stop} step {stride} of a {video.n_frames}-frame video")
    return encoder.embed_frames(encoder.preparer(replace(video, frames=frames)))


def ef_prompts() -> tuple[list[str], np.ndarray]:
    """The 202 zero-shot EF prompts (two templates x 0..100) and their values."""
    prompts = [t.replace("<#>", str(v)) for t in EF_PROMPTS for v in range(101)]
    return prompts, np.array([v for _ in EF_PROMPTS for v in range(101)], dtype=np.float32)


def zero_shot_binary(encoder: Encoder, videos: list[Video], prompts: list[str], start: int = 0, stop: int = 40,
                     stride: int = 2) -> np.ndarray:
    """Binary zero-shot score per video, as the EchoCLIP authors: the mean over prompts and frames of the
    cosine similarity between each frame and each prompt (higher: the finding is more likely)."""
    if not prompts:
        raise BadInput("zero-shot binary scoring needs at least one prompt")
    text = encoder.embed_texts(list(prompts))
    return np.array([float((frame_embeddings(encoder, v, start, stop, stride) @ text.T).mean()) for v in videos],
                    dtype=np.float32)


def zero_shot_ef(encoder: Encoder, videos: list[Video], start: int = 0, stop: int = 40, stride: int = 2,
                 prompts: list[str] | None = None, values: np.ndarray | None = None) -> np.ndarray:
    """Zero-shot EF (%) per video, as the EchoCLIP authors: per frame rank all prompts (default the 202 EF
    prompts; EchoCLIP-R: sampled report texts, with their EF as `values`) by cosine similarity, average the
    ranked values over frames, keep the top 20% ranks, take their median."""
    import torch

    if prompts is None:
        prompts, values = ef_prompts()
    values = np.asarray(values, dtype=np.float32)
    text = torch.from_numpy(encoder.embed_texts(prompts))
    values_t = torch.from_numpy(values)
    top = int(len(prompts) * 0.2)
    out = np.zeros(len(videos), dtype=np.float32)
    for i, video in enumerate(videos):
        sims = torch.from_numpy(frame_embeddings(encoder, video, start, stop, stride)) @ text.T  # [F, 202]
        order = torch.argsort(sims, dim=-1, descending=True, stable=True)
        ranked = values_t[order].mean(dim=0)  # [202]: mean value at each rank
        out[i] = ranked[:top].median().item()  # torch's median: the lower middle, as the authors'
    return out


def _read_config(path: Path) -> tuple[dict, dict]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        return config["model_cfg"], config.get("preprocess_cfg", {})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInput(f"{path}: not an open_clip hub config (needs a model_cfg object): {exc}") from exc


def _build(model_cfg: dict):
    """An open_clip CLIP from a model config, as open_clip.create_model does, never fetching tower weights."""
    from open_clip import CLIP, CustomTextCLIP

    cfg = deepcopy(model_cfg)
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if "timm_model_name" in vision:
        vision["timm_model_pretrained"] = False
    if "hf_model_name" in text:
        text["hf_model_pretrained"] = False
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in text
    try:
        return (CustomTextCLIP if custom_text else CLIP)(**cfg)
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise BadInput(f"open_clip cannot build this model config ({' '.join(str(exc).split())[:200]})") from exc

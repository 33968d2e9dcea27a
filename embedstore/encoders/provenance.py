"""Vectors' provenance: what produced a vector set, how to rebuild its encoder, and when two sets differ.

A provenance dict (Encoder.provenance(), stored in the catalog's `encoders` row) holds the encoder
name, dim, weights path and sha256 (RANDOM_INIT for seeded random weights) and `preprocessing`:
the encoder's input spec plus, since this module exists,
- `options`: every constructor option (echoclip-r's vocabulary by path, with `vocab_sha256`);
- `precision`: the numeric precision the model ran at (fp32, bf16, fp16);
- `numerics`: device, autocast dtype, TF32 setting and torch version of the run that made the set.
Stores written before carry no `options`/`precision`/`numerics`: their options are read back from
the spec (`_legacy_options`), and keys they lack are not compared.
"""
from __future__ import annotations

import json
from pathlib import Path

from embedstore.errors import Conflict

RANDOM_INIT = "random-init"
# Spec keys that may say in words how frames are prepared; a changed wording (an old store) only warns,
# a changed number (videomae's 16 frames) is a conflict.
DESCRIPTIVE = frozenset({"resize", "crop", "frames", "colour", "tokens", "layout", "tokenizer"})
# Never compared: how the run went, not what the vectors are.
NOT_COMPARED = frozenset({"options", "numerics", "precision"})
# Options that do not change the vectors.
NO_EFFECT = frozenset({"batch_size"})


def is_random(info: dict) -> bool:
    return info.get("weights_sha256") == RANDOM_INIT


def numerics(device: str, precision: str) -> dict:
    """The numeric setting of a run: device, autocast dtype, TF32 and torch version."""
    import torch

    cuda = device.startswith("cuda")
    return {
        "device": device,
        "precision": precision,
        "autocast_dtype": {"bf16": "bfloat16", "fp16": "float16"}.get(precision),
        "tf32": bool(torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32) if cuda else False,
        "torch_version": str(torch.__version__),
        "gpu": torch.cuda.get_device_name(device) if cuda and torch.cuda.is_available() else None,
    }


def recorded_options(info: dict) -> dict:
    """The constructor options that rebuild the encoder of a stored set (old stores: read back from the spec)."""
    spec = info.get("preprocessing") or {}
    options = dict(spec["options"]) if isinstance(spec.get("options"), dict) else _legacy_options(info["name"], spec)
    if spec.get("precision"):  # the precision the set was made at, not the request ("auto")
        options["precision"] = spec["precision"]
    return options


def _legacy_options(name: str, spec: dict) -> dict:
    """Options of a set recorded before options were: videomae's pooling, r3d's input scale, r3d-v0's resize."""
    options: dict = {}
    if name == "videomae" and spec.get("pooling") in ("max", "mean"):
        options["pooling"] = spec["pooling"]
    if name in ("r3d", "r3d-v0"):
        options["scale"] = "kinetics" if spec.get("mean") else "0-255"
        if name == "r3d-v0" and "size" in spec and spec["size"] is None:
            options["resize"] = False
    options["precision"] = "auto"  # before precision was recorded: autocast on CUDA, fp32 on CPU
    return options


def rebuild(info: dict, device: str = "auto", cls: type | None = None, **overrides):
    """The encoder that made a stored set, rebuilt from its provenance and checked against it (Conflict otherwise).

    Weights: the recorded path when it still exists, else the default lookup (the sha256 must match).
    `cls`: the Encoder class to build (default: the registered one of that name; the Ray engine passes
    the driver's own class).
    """
    from embedstore.encoders import get_encoder

    info = {**info, "name": info.get("name") or info["encoder"]}  # a catalog row or an Encoder.provenance()
    random_init = is_random(info)
    weights = info["weights"] if not random_init and Path(info["weights"]).exists() else None
    options = {**recorded_options(info), **overrides}
    options.pop("vocab_sha256", None)
    vocab = options.get("vocab")
    if vocab is not None and not Path(vocab).is_file():
        options["vocab"] = None  # moved: fall back to $EMBEDSTORE_ECHOCLIP_R_VOCAB / the weights folder (sha256 checked)
    if cls is None:
        model = get_encoder(info["name"], weights=weights, random_init=random_init, device=device, **options)
    else:
        model = cls(weights=weights, random_init=random_init, device=device, **options)
    check_compatible(info, model.provenance(), what=f"query encoder {info['name']}")
    return model


def check_compatible(stored: dict, new: dict, what: str = "these vectors") -> list[str]:
    """Raise Conflict when `new` vectors would not be comparable with the `stored` set (weights, dimension,
    preparation, options that change vectors, vocabulary); return warnings for differences that do not
    (spec wording of older versions, precision, device)."""
    stored, new = _plain(stored), _plain(new)
    name = stored.get("name") or stored.get("encoder")
    if new["weights_sha256"] != stored["weights_sha256"] or int(new["dim"]) != int(stored["dim"]):
        raise Conflict(f"{what} has weights {new['weights_sha256'][:12]} (dim {new['dim']}) but the store's {name} "
                       f"vectors come from {stored['weights_sha256'][:12]} (dim {stored['dim']}); point $EMBEDSTORE_WEIGHTS "
                       f"at the weights the store was encoded with, or use another store")
    old_spec, new_spec = stored.get("preprocessing") or {}, new.get("preprocessing") or {}
    shared = (set(old_spec) & set(new_spec)) - NOT_COMPARED
    wording = {k for k in shared & DESCRIPTIVE if isinstance(old_spec[k], str) and isinstance(new_spec[k], str)}
    differ = sorted(k for k in shared - wording if old_spec[k] != new_spec[k])
    old_opts, new_opts = old_spec.get("options") or {}, new_spec.get("options") or {}
    differ += sorted(f"option {k}" for k in (set(old_opts) & set(new_opts)) - NO_EFFECT - {"vocab", "precision"}
                     if old_opts[k] != new_opts[k])
    if old_opts.get("vocab_sha256") and new_opts.get("vocab_sha256") and old_opts["vocab_sha256"] != new_opts["vocab_sha256"]:
        differ.append("vocabulary file (sha256)")
    if differ:
        raise Conflict(f"{what} prepares inputs differently from the store's {name} vectors ({', '.join(differ)}: "
                       f"{'; '.join(_change(old_spec, new_spec, k) for k in differ[:2])}); vectors would not be comparable")
    warnings = [f"{name}: preparation wording changed since the store was written ({k})"
                for k in sorted(wording) if old_spec[k] != new_spec[k]]
    old_p, new_p = old_spec.get("precision"), new_spec.get("precision")
    if old_p and new_p and old_p != new_p:
        warnings.append(f"{name}: the store's vectors were computed at {old_p}, these at {new_p} "
                        f"(they differ by up to ~1e-3 per component); pass --precision {old_p} to keep one precision")
    return warnings


def _change(old: dict, new: dict, key: str) -> str:
    if key.startswith("option ") or key.startswith("vocabulary"):
        k = key.removeprefix("option ")
        return f"{k} {(old.get('options') or {}).get(k)!r} -> {(new.get('options') or {}).get(k)!r}"
    return f"{key} {old.get(key)!r} -> {new.get(key)!r}"


def _plain(prov: dict) -> dict:
    """JSON round trip: tuples become lists, paths strings, as in the catalog."""
    return json.loads(json.dumps(prov, default=str))

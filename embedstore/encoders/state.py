"""Loading released state dicts into torch modules, with one-line errors that say what was expected.

Why one helper: EchoPrime's three files, PanEcho's dict and the view classifier's two layouts all come
down to "open a torch file, pick the dict, compare its keys and shapes with the module's".
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable


def load_torch_file(path: Path, expected: str):
    """torch.load on the CPU with weights_only (no code runs from the file); BadInput naming `expected`."""
    import torch

    from embedstore.errors import BadInput

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle and zip errors have no common base
        if "weights_only" in str(exc):  # e.g. a Lightning .ckpt with pickled hyper-parameters
            raise BadInput(f"{path}: holds pickled objects beyond tensors, which are not loaded (they could run code);"
                           " if you trust the file, re-save just its tensors, e.g. torch.save(torch.load(PATH,"
                           " weights_only=False)['state_dict'], NEW.pt) for a Lightning .ckpt, and load NEW.pt;"
                           f" expected {expected}") from exc
        why = " ".join(str(exc).split())[:160]
        raise BadInput(f"{path}: not a loadable checkpoint ({type(exc).__name__}: {why}); expected {expected}") from exc


def load_into(module, state, path: Path, expected: str, ignore: Callable[[str], bool] = lambda key: False) -> None:
    """Load `state` into `module` strictly, except keys for which `ignore(key)` is true (dropped before
    loading and allowed to be missing); any other missing, unexpected or misshapen key is a BadInput."""
    from embedstore.errors import BadInput

    if not isinstance(state, dict) or not state:
        raise BadInput(f"{path}: not a state dict; expected {expected}")
    state = {k: v for k, v in state.items() if not ignore(k)}
    own = {k: v for k, v in module.state_dict().items() if not ignore(k)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state)
                    if tuple(getattr(state[k], "shape", ())) != tuple(own[k].shape))
    if missing or unexpected or shapes:
        problems = [f"{label} {few(keys)}" for label, keys in
                    (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)) if keys]
        raise BadInput(f"{path}: does not fit ({'; '.join(problems)}); expected {expected}")
    module.load_state_dict(state, strict=False)


def few(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")

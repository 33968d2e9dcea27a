"""The training recipe as data: the R3D paper's settings are the defaults (FACTS.md, R3D-18 section)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from embedstore.errors import BadInput

BALANCES = ("none", "oversample", "undersample")
INITS = ("kinetics", "random")
RESUMABLE = ("epochs", "device", "workers")  # may differ between a run and its --resume


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one `embedstore train r3d` run; `init` is kinetics, random, or a checkpoint path."""

    label: str = "ef < 50"
    epochs: int = 4
    lr: float = 1e-5
    weight_decay: float = 5e-4
    accumulate: int = 20
    period: int = 4
    init: str = "kinetics"
    balance: str = "none"
    batch_size: int = 1
    clip_length: int | None = None  # None: whole videos, as the paper
    seed: int = 0
    device: str = "auto"
    workers: int = 2

    def check(self) -> None:
        """One-line BadInput for a setting no run could use, before anything is loaded."""
        for name in ("epochs", "accumulate", "period", "batch_size", "workers"):
            if getattr(self, name) < 1:
                raise BadInput(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.clip_length is not None and self.clip_length < 1:
            raise BadInput(f"--clip-length must be >= 1 frame, got {self.clip_length}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise BadInput(f"--lr must be > 0 and --weight-decay >= 0, got {self.lr} and {self.weight_decay}")
        if self.balance not in BALANCES:
            raise BadInput(f"--balance must be one of {', '.join(BALANCES)}, got {self.balance!r}")
        if not self.init:
            raise BadInput(f"--init must be one of {', '.join(INITS)} or a checkpoint path")

    def recipe(self) -> dict:
        """The settings a resumed run must share with the run it continues."""
        return {k: v for k, v in asdict(self).items() if k not in RESUMABLE}

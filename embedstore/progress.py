"""One progress bar for every long job (ingest, encode, index, download)."""
from __future__ import annotations

import sys
from typing import Iterable, Iterator, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def bar(iterable: Iterable[T] | None = None, total: int | None = None, desc: str = "", unit: str = "it",
        enabled: bool = True, **kwargs) -> tqdm:
    """A tqdm bar on stderr; off when disabled or when nothing is to be done."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled or total == 0,
                file=sys.stderr, dynamic_ncols=True, mininterval=0.5, **kwargs)


def track(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it",
          enabled: bool = True) -> Iterator[T]:
    yield from bar(iterable, total=total, desc=desc, unit=unit, enabled=enabled)

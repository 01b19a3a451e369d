"""The online algorithms, one module each, chosen once by `--algorithm` from this registry.

Each is an `Algorithm` (base.py): where its responses come from, who labels its pairs, what the learner
needs and its per-pair loss. Nothing outside this package compares algorithm names: adding one is a
module with a subclass and a line here.
"""
from __future__ import annotations

from typing import Any

from ..config import ConfigError, RunConfig
from .base import Algorithm, Sampler
from .bpo import BPO
from .online_dpo import OfflineDPO, OnlineDPO
from .sail import SAILDP, SAILPP, SAILPR
from .selm import SELM
from .xpo import XPO

ALGORITHMS: dict[str, type[Algorithm]] = {
    cls.name: cls for cls in (OnlineDPO, OfflineDPO, SELM, XPO, BPO, SAILPR, SAILPP, SAILDP)
}


def algorithm_class(name: str) -> type[Algorithm]:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ConfigError(f"unknown algorithm {name!r}: choose one of {', '.join(ALGORITHMS)}") from None


def build_algorithm(cfg: RunConfig, *, tokenizer: Any = None, rank: int = 0) -> Algorithm:
    """The algorithm of cfg.algorithm for this rank (its random draws are seeded per rank)."""
    return algorithm_class(cfg.algorithm)(cfg, tokenizer=tokenizer, rank=rank)


__all__ = ["ALGORITHMS", "Algorithm", "Sampler", "algorithm_class", "build_algorithm"]

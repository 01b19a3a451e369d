"""One seeding scheme for every random stream of a run.

Each stream is named by a component and integer keys (rank, round, ...) and drawn from
`numpy.random.SeedSequence([run seed, component tag, *keys])`, so streams of different components,
ranks and rounds are independent by construction, and a stream depends only on its name: resuming a
run, adding a component or changing the world size never shifts another component's draws.
"""
from __future__ import annotations

import zlib

import numpy as np
import torch


def _tag(component: str) -> int:
    return zlib.crc32(component.encode("utf-8"))


def seed_sequence(run_seed: int, component: str, *keys: int) -> np.random.SeedSequence:
    if any(int(k) < 0 for k in (run_seed, *keys)):
        raise ValueError(f"seeds and stream keys must be ≥ 0, got seed {run_seed} and keys {keys} for {component!r}")
    return np.random.SeedSequence([int(run_seed), _tag(component), *(int(k) for k in keys)])


def stream_seed(run_seed: int, component: str, *keys: int, bits: int = 63) -> int:
    """A non-negative integer seed of `bits` bits (≤ 64) for the named stream, for APIs that take an int
    (the C++ selection, torch generators; vLLM's engine seed must fit 32 bits)."""
    hi, lo = seed_sequence(run_seed, component, *keys).generate_state(2, dtype=np.uint32)
    return ((int(hi) << 32) | int(lo)) >> (64 - bits)


def stream_rng(run_seed: int, component: str, *keys: int) -> np.random.Generator:
    return np.random.default_rng(seed_sequence(run_seed, component, *keys))


def torch_generator(run_seed: int, component: str, *keys: int) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(run_seed, component, *keys))

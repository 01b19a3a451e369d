"""Pair selection for active exploration: one response pair per prompt from reward samples R[B, N, E].

The C++ extension (`fastalign._C`, csrc/selection.cpp) is the fast path; this module holds the
numpy reference and the public entry point `select_pairs`. Both follow one exact specification so
they agree bit for bit (tests check it):

* Randomness: one SplitMix64 stream per (seed, row b): state = mix64(seed ^ mix64(b + G)), then
  each draw is state += G; mix64(state). A draw "below n" is draw % n. Rows never share a stream,
  so the reference advances all rows in lock step while C++ may stop a row's stream early.
* Float math in float64, sums over heads in order e = 0..E-1:
  mean[n] = Σ_e R[n,e] / E;  c[n,e] = R[n,e] − mean[n];  V(a,b) = Σ_e (c[a,e] − c[b,e])² / E,
  the population variance over heads of R[e,a] − R[e,b], in its centred form.
* Ties: argmax/argmin go to the lowest index; pair ties to the lowest (first, second) row-major.
* Identity ids: responses with equal ids are identical; once the first response is chosen, every
  response identical to it is unavailable. Rows with < 2 distinct responses return pair (-1, -1).

Strategies (heads = ensemble heads used, -1 when none; score = the quantity the rule ranked by):
  passive      first = below(N); second = the below(#available)-th available response;
               score = mean[first] − mean[second].
  ee-ts        e1 = below(E); first = argmax_n R[n,e1]; the other heads in ascending order are
               shuffled by a forward Fisher–Yates (step i swaps i with i + below(E−1−i)); the first
               head e2 in that order whose argmax_n R[n,e2] is not identical to `first` gives
               second; if none does, second = the best available response under e1 (e2 = -1).
               score = R[first,e1] − R[second,e1].
  bai-ts       e* = below(E); first = argmax_n R[n,e*]; second = argmax over available n of
               V(first, n); score = that variance.
  uncertainty  the pair a < b, not identical, maximising V(a, b); score = V(a, b).
  best-worst   first = argmax mean, second = argmin mean over available; score = mean margin.
  best-of-n    first = argmax mean, second = the below(#available)-th available response;
               score = mean margin.
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

STRATEGIES = ("passive", "ee-ts", "bai-ts", "uncertainty", "best-worst", "best-of-n")
THOMPSON_RULES = ("ee-ts", "bai-ts")  # the rules that draw ensemble heads (Thompson samples) from the stream
BACKENDS = ("auto", "cpp", "numpy")

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_warned_fallback = False
_FLOAT32 = np.dtype(np.float32)
_INT64 = np.dtype(np.int64)


@dataclass(slots=True)
class Selection:
    """Chosen pairs plus what the explorer logs about them."""

    pairs: np.ndarray  # [B, 2] int64 (first, second); (-1, -1) if a prompt has < 2 distinct responses
    heads: np.ndarray  # [B, 2] int64 ensemble heads behind the choice, -1 where none was used
    scores: np.ndarray  # [B] float64 the ranked quantity (see module docstring); NaN for invalid rows
    strategy: str
    backend: str  # "cpp" or "numpy": which implementation produced it

    @property
    def valid(self) -> np.ndarray:
        """[B] bool: rows that received a pair."""
        return self.pairs[:, 0] >= 0


# ----------------------------------------------------------------------------- RNG


def _mix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * _MUL1
    z = (z ^ (z >> np.uint64(27))) * _MUL2
    return z ^ (z >> np.uint64(31))


class RowStreams:
    """The SplitMix64 streams of rows 0..B-1 for one seed, advanced together (uint64 wraps)."""

    def __init__(self, seed: int, rows: int) -> None:
        row_ids = np.arange(rows, dtype=np.uint64)
        self._state = _mix64(np.uint64(seed) ^ _mix64(row_ids + _GOLDEN))

    def next(self) -> np.ndarray:
        self._state = self._state + _GOLDEN
        return _mix64(self._state)

    def below(self, n: int | np.ndarray) -> np.ndarray:
        """One draw per row reduced modulo n (n ≥ 1, scalar or per row), as int64."""
        return (self.next() % np.asarray(n).astype(np.uint64)).astype(np.int64)

    def below_many(self, n: np.ndarray) -> np.ndarray:
        """[B, K] the next K draws of every row at once, draw k reduced modulo n[k].

        SplitMix64 is counter based (draw k uses state + (k+1)·G), so a block of draws needs no loop.
        """
        steps = np.arange(1, len(n) + 1, dtype=np.uint64) * _GOLDEN
        states = self._state[:, None] + steps[None, :]
        self._state = states[:, -1].copy() if len(n) else self._state
        return (_mix64(states) % np.asarray(n, dtype=np.uint64)[None, :]).astype(np.int64)


# ----------------------------------------------------------------------------- shared math


def _means(heads64: np.ndarray) -> np.ndarray:
    """[B, N] ensemble means, summed over heads in order (matches the C++ loop bit for bit)."""
    total = np.zeros(heads64.shape[1:])
    for head in heads64:
        total += head
    return total / heads64.shape[0]


def _centred(heads64: np.ndarray) -> np.ndarray:
    """[E, B, N] per-response centred rewards."""
    return heads64 - _means(heads64)[None]


def _variance_against(c: np.ndarray, first: np.ndarray) -> np.ndarray:
    """[B, N] V(first_b, n) for every response n, from centred rewards [E, B, N]."""
    rows = np.arange(c.shape[1])
    acc = np.zeros(c.shape[1:])
    for head in c:
        t = head[rows, first][:, None] - head
        acc += t * t
    return acc / c.shape[0]


def _kth_available(available: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Index of the k-th (0-based) True per row of `available`."""
    running = np.cumsum(available, axis=1)
    return np.argmax(available & (running == (k + 1)[:, None]), axis=1)


class _Prompts:
    """One batch's reward samples and identities, with the helpers every rule uses."""

    def __init__(self, rewards: np.ndarray, ids: np.ndarray) -> None:
        self.r32 = rewards
        self.ids = ids
        self.B, self.N, self.E = rewards.shape
        self.rows = np.arange(self.B)

    @cached_property
    def heads64(self) -> np.ndarray:
        """[E, B, N] float64, head-major so every per-head slice is contiguous; built only by the
        rules that average every response."""
        return self.r32.transpose(2, 0, 1).astype(np.float64)

    def means_of(self, *picks: np.ndarray) -> list[np.ndarray]:
        """Ensemble means of the picked responses only (same in-order sum as _means)."""
        x = self.r32[self.rows[:, None], np.stack(picks, axis=1)].astype(np.float64)  # [B, k, E]
        total = np.zeros(x.shape[:2])
        for e in range(self.E):
            total += x[:, :, e]
        return list((total / self.E).T)

    def valid(self) -> np.ndarray:
        return (self.ids != self.ids[:, :1]).any(axis=1)

    def available(self, first: np.ndarray) -> np.ndarray:
        """[B, N] True where a response is not identical to the row's first pick."""
        return self.ids != self.ids[self.rows, first][:, None]

    def argmax_head(self, head: np.ndarray) -> np.ndarray:
        return np.argmax(self.r32[self.rows, :, head], axis=1)

    def random_available(self, first: np.ndarray, streams: RowStreams) -> np.ndarray:
        available = self.available(first)
        count = np.maximum(available.sum(axis=1), 1)  # invalid rows draw below(1) and are masked
        return _kth_available(available, streams.below(count))


# ----------------------------------------------------------------------------- strategies
# Each returns (first, second, head1, head2, score) as [B] arrays; invalid rows are masked later.

def _passive(p: _Prompts, streams: RowStreams) -> tuple:
    first = streams.below(p.N)
    second = p.random_available(first, streams)
    mean_first, mean_second = p.means_of(first, second)
    return first, second, None, None, mean_first - mean_second


def _best_of_n(p: _Prompts, streams: RowStreams) -> tuple:
    mean = _means(p.heads64)
    first = np.argmax(mean, axis=1)
    second = p.random_available(first, streams)
    return first, second, None, None, mean[p.rows, first] - mean[p.rows, second]


def _best_worst(p: _Prompts, streams: RowStreams) -> tuple:
    mean = _means(p.heads64)
    first = np.argmax(mean, axis=1)
    second = np.argmin(np.where(p.available(first), mean, np.inf), axis=1)
    return first, second, None, None, mean[p.rows, first] - mean[p.rows, second]


def _ee_ts(p: _Prompts, streams: RowStreams) -> tuple:
    head1 = streams.below(p.E)
    first = p.argmax_head(head1)
    under_head1 = p.r32[p.rows, :, head1]
    second = np.argmax(np.where(p.available(first), under_head1, -np.inf), axis=1)  # fallback
    head2 = np.full(p.B, -1, dtype=np.int64)
    if p.E > 1:
        others = _shuffled_other_heads(head1, p.E, streams)  # [B, E-1]
        candidates = np.take_along_axis(np.argmax(p.r32, axis=1), others, axis=1)  # argmax per head
        differs = np.take_along_axis(p.ids, candidates, axis=1) != p.ids[p.rows, first][:, None]
        found = differs.any(axis=1)
        pos = np.argmax(differs, axis=1)
        second = np.where(found, candidates[p.rows, pos], second)
        head2 = np.where(found, others[p.rows, pos], -1)
    score = under_head1[p.rows, first].astype(np.float64) - under_head1[p.rows, second].astype(np.float64)
    return first, second, head1, head2, score


def _shuffled_other_heads(head1: np.ndarray, E: int, streams: RowStreams) -> np.ndarray:
    """Per row, the heads ≠ head1 in ascending order, then a forward Fisher–Yates shuffle."""
    rows = np.arange(head1.shape[0])
    others = np.arange(E - 1) + (np.arange(E - 1)[None, :] >= head1[:, None])
    targets = np.arange(E - 1) + streams.below_many(np.arange(E - 1, 0, -1))  # step i swaps i, j_i
    for i in range(E - 1):
        j = targets[:, i]
        swapped = others[rows, j]
        others[rows, j] = others[:, i]
        others[:, i] = swapped
    return others


def _bai_ts(p: _Prompts, streams: RowStreams) -> tuple:
    head1 = streams.below(p.E)
    first = p.argmax_head(head1)
    variance = _variance_against(_centred(p.heads64), first)
    second = np.argmax(np.where(p.available(first), variance, -np.inf), axis=1)
    return first, second, head1, None, variance[p.rows, second]


def _uncertainty(p: _Prompts, streams: RowStreams) -> tuple:
    c = _centred(p.heads64)
    acc = np.zeros((p.B, p.N, p.N))
    for head in c:
        t = head[:, :, None] - head[:, None, :]
        acc += t * t
    variance = acc / p.E
    upper = np.triu(np.ones((p.N, p.N), dtype=bool), k=1)
    allowed = upper[None] & (p.ids[:, :, None] != p.ids[:, None, :])
    flat = np.argmax(np.where(allowed, variance, -np.inf).reshape(p.B, p.N * p.N), axis=1)
    first, second = flat // p.N, flat % p.N
    return first, second, None, None, variance[p.rows, first, second]


_RULES = {
    "passive": _passive,
    "ee-ts": _ee_ts,
    "bai-ts": _bai_ts,
    "uncertainty": _uncertainty,
    "best-worst": _best_worst,
    "best-of-n": _best_of_n,
}


# ----------------------------------------------------------------------------- validation


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown selection strategy {strategy!r}; expected one of: {' '.join(STRATEGIES)}")


def _check_seed(seed: Any) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= int(seed) < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return int(seed)


def _check_arrays(rewards: np.ndarray, ids: np.ndarray | None) -> None:
    """The same checks, with the same messages, as csrc/bindings.cpp and check_finite."""
    if rewards.ndim != 3:
        raise ValueError(f"rewards must have shape [B, N, E] (prompts, responses, heads), got {list(rewards.shape)}")
    if rewards.dtype != np.float32:
        raise ValueError(f"rewards must be float32, got {rewards.dtype}; convert with .astype(np.float32)")
    B, N, E = rewards.shape
    if N < 2:
        raise ValueError(f"need at least 2 responses per prompt to form a pair, got N={N}")
    if E < 1:
        raise ValueError("need at least one ensemble head, got E=0")
    if ids is not None:
        if ids.shape != (B, N):
            raise ValueError(f"ids must have shape [B, N] = [{B}, {N}] like rewards, got {list(ids.shape)}")
        if ids.dtype != np.int64:
            raise ValueError(f"ids must be int64, got {ids.dtype}; convert with .astype(np.int64)")
    bad = np.flatnonzero(~np.isfinite(rewards))
    if bad.size:
        b, n, e = np.unravel_index(bad[0], rewards.shape)
        raise ValueError(
            f"rewards must be finite, found {rewards[b, n, e]} at [b, n, e] = [{b}, {n}, {e}]; "
            "check the reward model's outputs"
        )


# ----------------------------------------------------------------------------- entry points


def select_pairs_numpy(
    rewards: np.ndarray, ids: np.ndarray | None, strategy: str, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference: same signature and outputs as `fastalign._C.select_pairs`."""
    _check_strategy(strategy)
    seed = _check_seed(seed)
    _check_arrays(rewards, ids)
    B, N, _ = rewards.shape
    if ids is None:
        ids = np.broadcast_to(np.arange(N, dtype=np.int64), (B, N))
    prompts = _Prompts(rewards, ids)
    first, second, head1, head2, score = _RULES[strategy](prompts, RowStreams(seed, B))
    valid = prompts.valid()
    pairs = np.where(valid[:, None], np.stack([first, second], axis=1), -1).astype(np.int64)
    heads = np.full((B, 2), -1, dtype=np.int64)
    for col, head in ((0, head1), (1, head2)):
        if head is not None:
            heads[:, col] = np.where(valid, head, -1)
    scores = np.where(valid, score, np.nan).astype(np.float64)
    return pairs, heads, scores


def _to_numpy(x: Any, name: str, floating: bool) -> np.ndarray:
    """Torch tensors and array-likes → numpy; floats become float32, integers int64."""
    want = np.float32 if floating else np.int64
    if type(x) is np.ndarray and x.dtype == want:
        return x  # the common case, kept cheap: this runs on every call
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach()
        if x.is_floating_point() and x.dtype != torch.float32:
            x = x.float()  # bf16 has no numpy dtype
        x = x.cpu().numpy()
    arr = np.asarray(x)
    if floating and arr.dtype.kind != "f":
        raise ValueError(f"{name} must hold floating-point rewards, got dtype {arr.dtype}")
    if not floating and arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer response ids, got dtype {arr.dtype}")
    return arr.astype(want, copy=False)


def _cpp_module() -> Any | None:
    return sys.modules.get("fastalign._C") or _import_cpp()


def _import_cpp() -> Any | None:
    try:
        from fastalign import _C
    except ImportError:
        return None
    return _C


def _resolve_backend(backend: str) -> tuple[str, Any | None]:
    global _warned_fallback
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of: {' '.join(BACKENDS)}")
    if backend == "numpy":
        return "numpy", None
    module = _cpp_module()
    if module is not None:
        return "cpp", module
    if backend == "cpp":
        raise ValueError(
            "backend='cpp' but the extension fastalign._C is not built; run "
            "`pip install -e . --no-build-isolation` in the fastalign checkout, or use backend='numpy'"
        )
    if not _warned_fallback:
        warnings.warn("fastalign._C is not built; pair selection falls back to the slower numpy reference")
        _warned_fallback = True
    return "numpy", None


def select_pairs(
    rewards: Any,
    ids: Any | None = None,
    strategy: str = "ee-ts",
    seed: int = 0,
    backend: str = "auto",
) -> Selection:
    """Pick one pair per prompt from reward samples [B, N, E] (numpy array or torch tensor).

    `ids` [B, N] marks identical responses (equal id) so they are never paired; None means all
    distinct. Floating inputs are cast to float32 first: the selection is defined on float32
    rewards. Deterministic for a seed; "auto" uses C++ when built, else numpy (warning once).
    """
    name, module = _resolve_backend(backend)
    if (
        module is not None
        and type(rewards) is np.ndarray
        and rewards.dtype is _FLOAT32
        and (ids is None or (type(ids) is np.ndarray and ids.dtype is _INT64))
        and type(seed) is int
    ):
        # The common call, kept cheap: the extension checks strategy, seed, shapes and finiteness
        # itself, in the same order and with the same messages as the checks below.
        pairs, heads, scores = module.select_pairs(rewards, ids, strategy, seed)
        return Selection(pairs=pairs, heads=heads, scores=scores, strategy=strategy, backend=name)
    _check_strategy(strategy)
    seed = _check_seed(seed)
    r = _to_numpy(rewards, "rewards", floating=True)
    i = None if ids is None else _to_numpy(ids, "ids", floating=False)
    run = module.select_pairs if module is not None else select_pairs_numpy
    pairs, heads, scores = run(r, i, strategy, seed)
    return Selection(pairs=pairs, heads=heads, scores=scores, strategy=strategy, backend=name)

"""APL — Active Preference Learning (Muldrew, Hayes, Zhang & Barber, ICML 2024, arXiv 2402.08114).

A baseline of the SEA paper: no reward model of its own; it ranks with the policy itself. Each round:

1. Prompt selection by predictive entropy. The loop draws a pool of `pool_factor × batch_size` prompts
   (`prompts_per_round`) and samples N responses for each. The policy's predictive entropy of a prompt
   is estimated by Monte Carlo from those samples, H(x) ≈ −(1/N) Σ_n log π_θ(y_n|x) (sequence log-probs
   summed over tokens, from the engine's raw log-probs), and the `batch_size` prompts with the HIGHEST
   entropy are kept — the paper's rule and its authors' code (willmuldrew/active-preference-learning,
   `acquire_completion_pairs_predictive_entropy`: over-sample prompts ×4 (TL;DR) or ×16 (IMDB), keep
   the top by `argsort(h)[-minimum_count:]`).
2. Pair selection by preference certainty. For each kept prompt, the pair of distinct responses with
   the largest implicit-reward margin |r̂(y_i) − r̂(y_j)|, r̂(y) = log π_θ(y|x) − log π_ref(y|x) (β left
   out: it does not change the argmax), as oat's `implicit_reward_filtering_response_only`. The authors'
   CERTAINTY acquisition ranks |r̂_a − r̂_b| the same way (`compute_model_uncertainty`).
3. The oracle labels those pairs: exactly one query per kept prompt, so APL spends `batch_size` queries
   per round like every other explorer, and its win-rate curve against queries is comparable.

Deliberate differences from the references, all documented in docs/exploration.md:
* oat (sail-sg/oat `oat/algorithms/apl.py`) sorts prompts by the mean *log-probability*
  (`cumulative_logprob`, ≤ 0) and keeps the top, i.e. the LOWEST entropy — a sign slip — and its pool
  equals the kept batch (`pi_buffer_maxlen_per_device`), so its filter is a no-op. `pool_factor=1`
  reproduces oat's effective behaviour exactly (no prompt filter; max-margin pair per prompt).
* The authors estimate the entropy from 32 extra samples per prompt; here the N samples that also form
  the candidate pairs are reused (oat does the same), which costs nothing extra.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..types import Completion, Prompt
from .explorer import PassiveExplorer, identity_ids

ImplicitRewards = Callable[[list[list[int]], list[list[list[int]]]], np.ndarray]


def predictive_entropy(completions: list[list[Completion]]) -> np.ndarray:
    """[B] Monte Carlo predictive entropy −mean_n log π(y_n|x) from each prompt's sampled responses."""
    sums = np.array([[c.logprob_sum for c in row] for row in completions], dtype=np.float64)
    if np.isnan(sums).any():
        raise ValueError("APL estimates each prompt's entropy from the sampled responses' log-probs, and the "
                         "engine returned none: generate with log-probs (both fastalign engines do)")
    return -sums.mean(axis=1)


def top_entropy_rows(entropy: np.ndarray, pairable: np.ndarray, keep: int) -> np.ndarray:
    """Indices (ascending) of the `keep` pairable prompts of highest entropy; ties go to the lower index."""
    order = np.argsort(-entropy, kind="stable")
    return np.sort(order[pairable[order]][:keep])


def max_margin_pairs(rewards: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """[K, N] implicit rewards → [K, 2] the pair i < j of distinct responses with the largest |r_i − r_j|.

    Ties go to the lowest (i, j) in row-major order; a row whose responses are all identical gets -1.
    """
    K, N = rewards.shape
    margin = np.abs(rewards[:, :, None] - rewards[:, None, :])
    allowed = np.triu(np.ones((N, N), dtype=bool), k=1)[None] & (ids[:, :, None] != ids[:, None, :])
    flat = np.argmax(np.where(allowed, margin, -np.inf).reshape(K, N * N), axis=1)
    pairs = np.stack([flat // N, flat % N], axis=1)
    return np.where(allowed.any(axis=(1, 2))[:, None], pairs, -1)


class ActivePreferenceExplorer(PassiveExplorer):
    """APL: keep the highest-entropy prompts of a larger pool, ask about their most certain pair (module doc)."""

    strategy = "apl"

    def __init__(self, implicit_rewards: ImplicitRewards, seed: int, pool_factor: int = 4):
        super().__init__(seed)
        if int(pool_factor) != pool_factor or pool_factor < 1:
            raise ValueError(f"pool_factor must be a positive integer, got {pool_factor}")
        self.implicit_rewards, self.pool_factor = implicit_rewards, int(pool_factor)
        self._metrics: dict[str, float] = {}

    def prompts_per_round(self, batch_size: int) -> int:
        return batch_size * self.pool_factor

    def select(self, prompts: list[Prompt], completions: list[list[Completion]], queries: int = 0) -> np.ndarray:
        """[pool, 2]: the kept prompts' pairs; -1 for the prompts left out (never asked, never trained on)."""
        pool = len(prompts)
        ids = identity_ids(completions)
        entropy = predictive_entropy(completions)
        kept = top_entropy_rows(entropy, (ids != ids[:, :1]).any(axis=1), max(1, pool // self.pool_factor))
        idx = np.full((pool, 2), -1, dtype=np.int64)
        margins = np.zeros(0)
        if kept.size:
            r = np.asarray(self.implicit_rewards([prompts[k].token_ids for k in kept],
                                                 [[c.token_ids for c in completions[k]] for k in kept]))
            if r.shape != (kept.size, ids.shape[1]):
                raise ValueError(f"implicit_rewards returned shape {r.shape}, expected {(kept.size, ids.shape[1])}")
            idx[kept] = max_margin_pairs(r, ids[kept])
            margins = np.abs(r[np.arange(kept.size), idx[kept, 0]] - r[np.arange(kept.size), idx[kept, 1]])
        self.model_labelled = np.zeros(pool, dtype=bool)
        self.calls += 1
        nan = float("nan")
        self._metrics = {"apl/pool": float(pool), "apl/kept": float(kept.size),
                         "apl/entropy_pool": float(entropy.mean()),
                         "apl/entropy_kept": float(entropy[kept].mean()) if kept.size else nan,
                         "apl/margin": float(margins.mean()) if margins.size else nan}
        return idx

    def observe(self, rows: np.ndarray, idx: np.ndarray, a_wins: np.ndarray, informative: np.ndarray) -> dict:
        """APL learns only through the policy; it reports what it selected this round."""
        return dict(self._metrics)

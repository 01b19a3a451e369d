"""The oracle interface: batched pairwise preferences, seeded labels, and query counting.

Every oracle turns a batch of pairs into P(a ≻ b); the base class turns that probability into the
training label (deterministic or Bradley–Terry sampled) and counts queries. Training and evaluation
draw from separate seeded streams so that running an evaluation never shifts the training labels.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

from ..config import PREFERENCE_MODES
from ..types import Preference

_SEED_TAG = 0x0AC1E  # decorrelates the oracle's stream from other components seeded with the same seed


class PermanentOracleError(RuntimeError):
    """A failure retrying cannot fix (an unknown model, a refused key): `DurableOracle` stops at once."""


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Overflow-free logistic function; exactly 0.5 at 0 so ties stay ties."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))


def check_batch(prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> int:
    """Refuse mismatched or non-text batches before any model work is spent on them."""
    n = len(prompts)
    if len(a) != n or len(b) != n:
        raise ValueError(f"compare() needs one prompt per pair: got {n} prompts, {len(a)} a-responses, "
                         f"{len(b)} b-responses")
    for name, texts in (("prompts", prompts), ("a", a), ("b", b)):
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise TypeError(f"compare(): {name}[{bad}] is {type(texts[bad]).__name__}, expected str "
                            "(pass raw instruction and response texts)")
    return n


class Oracle(ABC):
    """A preference oracle: `compare` answers a batch of pairwise queries.

    queries counts training queries (the x-axis of the win-rate curve); eval_queries counts the
    `count=False` queries made by evaluation, kept apart so they never inflate the sample budget.
    """

    name: str = "oracle"

    def __init__(self, *, preference: str = "deterministic", bt_temperature: float = 1.0, seed: int = 0):
        if preference not in PREFERENCE_MODES:
            raise ValueError(f"unknown preference mode {preference!r}: choose one of {', '.join(PREFERENCE_MODES)}")
        if not bt_temperature > 0:
            raise ValueError(f"bt_temperature must be > 0, got {bt_temperature}")
        self.preference = preference
        self.bt_temperature = float(bt_temperature)
        self.seed = int(seed)
        train_seq, eval_seq = np.random.SeedSequence([self.seed, _SEED_TAG]).spawn(2)
        self._rngs = {True: np.random.default_rng(train_seq), False: np.random.default_rng(eval_seq)}
        self.queries = 0
        self.eval_queries = 0

    def compare(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str], *,
                count: bool = True) -> Preference:
        """P(a_i ≻ b_i) and the training label for each pair; counts the pairs as queries."""
        n = check_batch(prompts, a, b)
        prompts, a, b = list(prompts), list(a), list(b)
        if n == 0:
            empty = np.zeros(0)
            return Preference(prob_a=empty, a_wins=np.zeros(0, dtype=bool))
        prob_a, scores_a, scores_b = self._probabilities(prompts, a, b)
        prob_a = np.asarray(prob_a, dtype=np.float64)
        if prob_a.shape != (n,) or not np.all((prob_a >= 0) & (prob_a <= 1)):
            raise RuntimeError(f"{self.name} oracle produced invalid probabilities {prob_a!r}")
        a_wins = self._labels(prob_a, self._rngs[count].random(n))
        if count:
            self.queries += n
        else:
            self.eval_queries += n
        return Preference(prob_a=prob_a, a_wins=a_wins, scores_a=scores_a, scores_b=scores_b)

    def _labels(self, prob_a: np.ndarray, u: np.ndarray) -> np.ndarray:
        """One uniform per pair in both modes, so the stream's position depends only on the batch sizes."""
        if self.preference == "bt":
            return u < prob_a
        return np.where(prob_a == 0.5, u < 0.5, prob_a > 0.5)

    @abstractmethod
    def _probabilities(self, prompts: list[str], a: list[str], b: list[str]
                       ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(prob_a, scores_a, scores_b) for a non-empty, validated batch."""


class RewardOracle(Oracle):
    """An oracle backed by a scalar reward r(prompt, response).

    bt mode: P(a ≻ b) = σ((r_a − r_b)/bt_temperature); deterministic mode: 1, 0, or 0.5 on equal rewards.
    """

    @abstractmethod
    def score(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """One finite reward per (prompt, response)."""

    def _probabilities(self, prompts, a, b):
        n = len(prompts)
        rewards = self._checked_scores(prompts + prompts, a + b)  # one call: a's and b's share a batch
        scores_a, scores_b = rewards[:n], rewards[n:]
        diff = scores_a - scores_b
        if self.preference == "bt":
            prob_a = sigmoid(diff / self.bt_temperature)
        else:
            prob_a = 0.5 + 0.5 * np.sign(diff)
        return prob_a, scores_a, scores_b

    def _checked_scores(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        raw = self.score(prompts, responses)
        try:
            rewards = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{self.name} oracle: rewards must be numbers, got {raw!r:.200}") from None
        if rewards.ndim != 1 or len(rewards) != len(responses):
            raise ValueError(f"{self.name} oracle: expected {len(responses)} rewards (one per response), "
                             f"got shape {rewards.shape}")
        if not np.all(np.isfinite(rewards)):
            bad = int(np.flatnonzero(~np.isfinite(rewards))[0])
            raise ValueError(f"{self.name} oracle: reward {bad} is {rewards[bad]} (rewards must be finite)")
        return rewards

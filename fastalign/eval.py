"""Evaluation: oracle win rate of the policy's greedy responses against the reference policy's.

The reference responses are generated once, before the first update, by the same engine (so the
comparison is engine-consistent); each evaluation then costs one greedy pass and one oracle batch,
which is not counted as training queries. Ties count ½.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .engine import GenerationEngine
from .oracle import Oracle
from .types import Completion, Prompt


def win_rate(prob_a: np.ndarray) -> tuple[float, float]:
    """(win rate with ties as ½, tie share) from the oracle's P(policy ≻ reference)."""
    prob_a = np.asarray(prob_a, dtype=np.float64)
    wins = np.where(prob_a > 0.5, 1.0, np.where(prob_a < 0.5, 0.0, 0.5))
    return float(wins.mean()), float((prob_a == 0.5).mean())


class WinRateEvaluator:
    def __init__(self, engine: GenerationEngine, oracle: Oracle, prompts: list[Prompt], max_new_tokens: int):
        if not prompts:
            raise ValueError("evaluation needs at least one held-out prompt")
        self.engine, self.oracle, self.prompts = engine, oracle, prompts
        self.max_new_tokens = max_new_tokens
        self.reference = self._greedy()

    def _greedy(self) -> list[Completion]:
        return self.engine.greedy([p.token_ids for p in self.prompts], self.max_new_tokens)

    def evaluate(self, policy: list[Completion] | None = None) -> tuple[dict[str, float], list[Completion]]:
        """Judge the policy's greedy responses (generated now unless given) against the reference's."""
        policy = self._greedy() if policy is None else policy
        pref = self.oracle.compare([p.instruction for p in self.prompts], [c.text for c in policy],
                                   [c.text for c in self.reference], count=False)
        rate, ties = win_rate(pref.prob_a)
        metrics = {"win_rate": rate, "ties": ties,
                   "response_tokens": float(np.mean([len(c.token_ids) for c in policy]))}
        if pref.scores_a is not None:
            metrics["oracle_score"] = float(np.mean(pref.scores_a))
            metrics["reference_score"] = float(np.mean(pref.scores_b))
        return metrics, policy


    def evaluate_best_of_n(self, score, n: int, seed: int, temperature: float = 1.0,
                           top_p: float = 1.0) -> dict[str, float]:
        """Win rate of the best of n sampled responses by `score` ([B, N] rewards, e.g. the epistemic
        reward model's mean) — how much the reward model alone adds on top of the policy."""
        samples = self.engine.generate([p.token_ids for p in self.prompts], n=n, max_new_tokens=self.max_new_tokens,
                                       temperature=temperature, top_p=top_p, seed=seed)
        best = np.asarray(score(self.prompts, samples)).argmax(axis=1)
        chosen = [row[k] for row, k in zip(samples, best)]
        pref = self.oracle.compare([p.instruction for p in self.prompts], [c.text for c in chosen],
                                   [c.text for c in self.reference], count=False)
        first = [row[0] for row in samples]  # an unranked sample: the baseline best-of-n must beat
        base = self.oracle.compare([p.instruction for p in self.prompts], [c.text for c in first],
                                   [c.text for c in self.reference], count=False)
        return {"bon_win_rate": win_rate(pref.prob_a)[0], "sample_win_rate": win_rate(base.prob_a)[0]}


def plot_win_rate(eval_rows: list[dict], out_png: str | Path, title: str = "") -> Path:
    """Win rate against oracle queries, as a PNG a person can glance at."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    queries = [r["queries"] for r in eval_rows]
    ax.plot(queries, [100 * r["win_rate"] for r in eval_rows], marker="o")
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("oracle queries")
    ax.set_ylabel("win rate vs reference (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(title or "online alignment")
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return Path(out_png)

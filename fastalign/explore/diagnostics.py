"""Honest diagnostics of the epistemic reward model: prequential accuracy, calibration, disagreement.

The reward model's training accuracy is measured on the minibatch it has just fitted, so it stays near 1
while the model may be wrong on every new pair (a seed of E&E + mixed preference learning fell below the
reference policy with `erm/accuracy` at 0.97–1.0). Prequential ("predict, then learn") evaluation scores
each newly oracle-labelled pair with the model *before* it trains on it, so every prediction is on unseen
data (Dawid 1984). Per pair (w = the oracle's winner, l = the loser), from `PairPrediction`:

* correct: 1 if the ensemble-mean reward prefers w, 0 if it prefers l, ½ on a tie;
* p = P(w ≻ l) = mean_e σ(r_e(w) − r_e(l)), the ensemble's Bradley–Terry probability;
* spread: the standard deviation over heads of the margin r_e(w) − r_e(l) (disagreement).

Logged every round (keys under `erm/`): the running accuracy over every pair so far, the accuracy over
the last `window` pairs (the figure the mixed-preference gate reads), the Brier score mean (1 − p)² and
the expected calibration error over that window, this round's accuracy and mean disagreement.
"""
from __future__ import annotations

import math

import numpy as np

from .reward_model import PairPrediction

ECE_BINS = 10


def expected_calibration_error(prob_winner: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of binary predictions given P(winner ≻ loser) per pair (Guo et al. 2017, equal-width bins).

    The prediction is the likelier side, with confidence c = max(p, 1 − p) ∈ [½, 1]; it is right when
    p > ½ (½ credit at p = ½). Bins split [½, 1] into `bins` equal widths (c = 1 in the last); ECE =
    Σ_k (n_k / n) · |accuracy_k − mean confidence_k|. NaN for no pairs.
    """
    p = np.asarray(prob_winner, dtype=np.float64)
    if p.size == 0:
        return math.nan
    conf = np.maximum(p, 1.0 - p)
    right = (p > 0.5) + 0.5 * (p == 0.5)
    which = np.minimum(np.floor((conf - 0.5) * 2 * bins + 1e-9).astype(np.int64), bins - 1)  # edges go up
    total = 0.0
    for k in np.unique(which):
        sel = which == k
        total += sel.sum() / p.size * abs(right[sel].mean() - conf[sel].mean())
    return float(total)


class PrequentialRecord:
    """The reward model's predictions on oracle pairs it had not yet seen: running and recent-window figures.

    `record` takes the prediction of this round's (winner, loser) pairs made before training on them.
    State is plain Python numbers and lists (checkpoints load with weights_only=True), saved in the
    explorer's checkpoint so a resumed run gates alike.
    """

    def __init__(self, window: int) -> None:
        if int(window) != window or window < 1:
            raise ValueError(f"the prequential window must be a positive number of pairs, got {window}")
        self.window = int(window)
        self.pairs = 0  # oracle pairs predicted so far
        self.correct_total = 0.0
        self.recent_correct = np.zeros(0)  # the last `window` pairs, oldest first
        self.recent_prob = np.zeros(0)

    @property
    def recent_accuracy(self) -> float:
        """Accuracy over the last `window` pairs (fewer before that many were seen); NaN before any."""
        return float(self.recent_correct.mean()) if self.recent_correct.size else math.nan

    @property
    def window_full(self) -> bool:
        return self.pairs >= self.window

    def record(self, prediction: PairPrediction | None) -> dict[str, float]:
        """Add this round's predictions (None: no informative oracle pair this round) → metrics."""
        correct = prediction.a_correct() if prediction is not None else np.zeros(0)
        prob = prediction.prob if prediction is not None else np.zeros(0)
        self.pairs += int(correct.size)
        self.correct_total += float(correct.sum())
        self.recent_correct = np.concatenate([self.recent_correct, correct])[-self.window:]
        self.recent_prob = np.concatenate([self.recent_prob, prob])[-self.window:]
        nan = math.nan
        return {
            "preq_pairs": float(self.pairs),
            "preq_accuracy": self.correct_total / self.pairs if self.pairs else nan,
            "preq_accuracy_recent": self.recent_accuracy,
            "preq_round_accuracy": float(correct.mean()) if correct.size else nan,
            "preq_brier": float(np.mean((1.0 - self.recent_prob) ** 2)) if self.recent_prob.size else nan,
            "preq_ece": expected_calibration_error(self.recent_prob),
            "disagreement": float(prediction.spread.mean()) if correct.size else nan,
        }

    def state_dict(self) -> dict:
        return {"window": self.window, "pairs": self.pairs, "correct_total": float(self.correct_total),
                "recent_correct": self.recent_correct.tolist(), "recent_prob": self.recent_prob.tolist()}

    def load_state_dict(self, state: dict) -> None:
        if int(state["window"]) != self.window:
            raise ValueError(f"checkpoint's prequential window is {state['window']} pairs, this run's is "
                             f"{self.window}: resume with --erm_window {state['window']}")
        self.pairs, self.correct_total = int(state["pairs"]), float(state["correct_total"])
        self.recent_correct = np.asarray(state["recent_correct"], dtype=np.float64)
        self.recent_prob = np.asarray(state["recent_prob"], dtype=np.float64)

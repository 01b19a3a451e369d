"""The records that flow between the stages of one online round.

prompts → engine (Completion) → explorer (pair indices) → oracle (Preference) → buffer (PreferencePair)
→ learner. Kept as plain dataclasses so every stage can be used alone from another trainer.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Prompt:
    """One prompt: the raw instruction and the text the model actually sees (chat template applied)."""

    id: str
    instruction: str
    text: str
    token_ids: list[int] = field(default_factory=list)


@dataclass
class Completion:
    """One sampled response with the behaviour policy's per-token log-probs (None when not requested)."""

    token_ids: list[int]
    text: str
    logprobs: list[float] | None = None
    finish_reason: str = "length"

    @property
    def logprob_sum(self) -> float:
        return float(sum(self.logprobs)) if self.logprobs is not None else float("nan")


@dataclass
class Preference:
    """Oracle answers for a batch of pairs (a_i, b_i).

    prob_a: P(a ≻ b) as the oracle sees it (0.5 for a tie); a_wins: the label used for training
    (deterministic or Bradley–Terry sampled); scores_a/b: scalar rewards when the oracle has them.
    """

    prob_a: np.ndarray
    a_wins: np.ndarray
    scores_a: np.ndarray | None = None
    scores_b: np.ndarray | None = None


@dataclass
class PreferencePair:
    """A labelled pair ready for the learner: token ids of prompt, chosen and rejected responses."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    chosen_text: str = ""
    rejected_text: str = ""
    prompt_text: str = ""
    chosen_behaviour_logprob: float = float("nan")
    rejected_behaviour_logprob: float = float("nan")
    ref_chosen_logprob: float | None = None  # filled once by the learner, then reused
    ref_rejected_logprob: float | None = None
    from_oracle: bool = True  # False for model-labelled pairs (mixed preference learning)
    # SELM/XPO: a response ỹ sampled from the reference for the same prompt, and log π_ref(ỹ) from sampling
    extra_ids: list[int] | None = None
    extra_ref_logprob: float = 0.0
    policy_labels: bool = False  # SAIL-PP/DP: unlabelled; the learner draws the label from σ(βh)

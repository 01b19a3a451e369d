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


# Where a response came from (Completion.source) and who labelled a pair (PreferencePair.labelled_by).
POLICY, REFERENCE, DATASET = "policy", "reference", "dataset"
ORACLE, REWARD_MODEL = "oracle", "reward-model"  # labels: also POLICY (its implicit preference), DATASET


@dataclass
class Completion:
    """One response with the per-token log-probs of the model that sampled it (None when not sampled)."""

    token_ids: list[int]
    text: str
    logprobs: list[float] | None = None
    finish_reason: str = "length"
    source: str = POLICY  # POLICY or REFERENCE (sampled by that model), or DATASET

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
    """A labelled pair ready for the learner: token ids of prompt, chosen and rejected responses.

    labelled_by: ORACLE, REWARD_MODEL (SEA mixed preference), POLICY (its own implicit preference) or
    DATASET; chosen_from / rejected_from: each response's Completion.source. extra_ids: one more response
    the algorithm's loss scores (SELM: ỹ from the reference), with its log-prob under the model that
    produced it. Reference log-probs are filled once by the learner, then reused.
    """

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    labelled_by: str = ORACLE
    chosen_from: str = POLICY
    rejected_from: str = POLICY
    extra_ids: list[int] | None = None
    extra_ref_logprob: float = 0.0
    ref_chosen_logprob: float | None = None
    ref_rejected_logprob: float | None = None

    def swap(self) -> None:
        """Exchange chosen and rejected (a label drawn after the pair was built)."""
        self.chosen_ids, self.rejected_ids = self.rejected_ids, self.chosen_ids
        self.chosen_from, self.rejected_from = self.rejected_from, self.chosen_from
        self.ref_chosen_logprob, self.ref_rejected_logprob = self.ref_rejected_logprob, self.ref_chosen_logprob

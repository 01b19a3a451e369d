"""What an online algorithm is, as the loop and the learner see it.

An `Algorithm` answers every question on which online methods differ, so that nothing outside the
registry (`fastalign.algorithms`) compares algorithm names:
- where a round's responses come from (`sample`: policy samples, a reference sample, dataset pairs) and
  whether the two responses of a row are already the pair (`fixed_pair`) or the explorer chooses;
- who labels each row (`label_sources`: the oracle, or the policy's own preference, or the dataset);
- what the learner needs (`frozen_reference`: a frozen π_ref, or the behaviour policy; `updates`:
  optimiser steps per collected batch; `prepare`: work on the pairs before the first update);
- its per-pair loss on summed log-probs (`loss`), built on the run's pair loss (`--loss`).
h = [log π(y_w) − log π(y_l)] − [log π_ref(y_w) − log π_ref(y_l)]; ℓ = log σ(βh); sg = stop-gradient.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol

import numpy as np
import torch

from ..config import ConfigError, RunConfig
from ..losses import LossParams, SequenceLogps, loss_spec, make_pair_loss
from ..types import ORACLE, Completion, PreferencePair, Prompt

if TYPE_CHECKING:
    from ..learner.learner import PolicyLearner


SeedFor = Callable[[str], int]  # this round's seed of a named stream ("policy", "reference", ...)


class Sampler(Protocol):
    """The response sources the loop offers: the engine holds one model's weights at a time and the loop
    swaps them in place as needed. Every Completion comes back with its `source` set."""

    def policy(self, prompts: list[Prompt], n: int, seed: int) -> list[list[Completion]]: ...

    def reference(self, prompts: list[Prompt], n: int, seed: int) -> list[list[Completion]]: ...

    def reference_greedy(self, prompts: list[Prompt]) -> list[Completion]: ...


class Algorithm:
    """Online DPO's answers (OAIF: two policy samples labelled by the oracle, the pair loss as is);
    every other algorithm overrides what it changes."""

    name: ClassVar[str]
    paper: ClassVar[str]
    frozen_reference: ClassVar[bool] = True  # False: π_ref is the behaviour policy of each batch (BPO)
    default_updates: ClassVar[int] = 1  # optimiser steps per collected batch unless --updates_per_round
    fixed_pair: ClassVar[bool] = False  # each row's two responses are the pair (no explorer choice)

    def __init__(self, cfg: RunConfig, *, tokenizer: Any = None, rank: int = 0) -> None:
        self.cfg, self.rank = cfg, rank
        self.params = LossParams(beta=cfg.beta, label_smoothing=cfg.label_smoothing,
                                 simpo_gamma_ratio=cfg.simpo_gamma_ratio, discopop_tau=cfg.discopop_tau)
        self.pair_loss = make_pair_loss(cfg.loss, self.params)
        self.updates = cfg.updates_per_round or self.default_updates

    # ------------------------------------------------------------------ configuration
    @classmethod
    def check(cls, cfg: RunConfig) -> None:
        """Refuse a configuration this algorithm is not defined for (ConfigError, before any work)."""

    @classmethod
    def refuse_exploration(cls, cfg: RunConfig, why: str) -> None:
        if cfg.explore != "passive":
            raise ConfigError(f"--algorithm {cls.name} {why}: use --explore passive (got {cfg.explore!r})")

    # ------------------------------------------------------------------ data
    def sample(self, sampler: Sampler, prompts: list[Prompt], seed_for: SeedFor) -> list[list[Completion]]:
        """The round's responses, a row per prompt (for a fixed pair, exactly two)."""
        return sampler.policy(prompts, self.cfg.samples_per_prompt, seed_for("policy"))

    def extra_responses(self, sampler: Sampler, prompts: list[Prompt], seed_for: SeedFor) -> list[Completion] | None:
        """One more response per prompt that the loss scores beside the pair (PreferencePair.extra_ids)."""
        return None

    def label_sources(self, rows: int, rng: np.random.Generator) -> np.ndarray:
        """Who labels each row: ORACLE (queried and counted), POLICY or DATASET (no query)."""
        return np.full(rows, ORACLE, dtype=object)

    def prepare(self, pairs: list[PreferencePair], learner: "PolicyLearner") -> dict[str, float]:
        """Work on a round's pairs before the first update (reference log-probs are filled already)."""
        return {}

    # ------------------------------------------------------------------ loss
    def loss(self, s: SequenceLogps, pairs: list[PreferencePair],
             extra_logps: torch.Tensor | None) -> tuple[torch.Tensor, SequenceLogps, dict[str, float]]:
        """Per-pair losses [B] (minimised), the pairs as labelled for the metrics, and extra metrics.
        extra_logps: summed policy log-probs of each pair's extra response [B], when it has one."""
        return self.pair_loss(s), s, {}

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "pair_loss": self.pair_loss.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["name"] != self.name:
            raise ValueError(f"algorithm state is for {state['name']!r}, this run is {self.name!r}")
        self.pair_loss.load_state_dict(state["pair_loss"])


def require_pair_loss(cls: type[Algorithm], cfg: RunConfig, allowed: tuple[str, ...], why: str) -> None:
    """Refuse a --loss the algorithm is not defined on (aliases count as their loss)."""
    if loss_spec(cfg.loss) not in [loss_spec(name) for name in allowed]:
        raise ConfigError(f"--algorithm {cls.name} {why}: use --loss {' or '.join(allowed)}, not {cfg.loss!r}")

"""The explorer: which two of a prompt's N responses to ask the oracle about, and learning from the answer.

Passive exploration picks two random distinct responses. SEA's explorers score every response with an
epistemic reward model (an ensemble: one Thompson sample per head) on frozen features and apply a
selection rule; the model then trains on every pair the oracle labelled. The rules themselves live in
`selection.py` (C++ with a numpy reference); this module turns completions into their inputs.
"""
from __future__ import annotations

import numpy as np

import torch

from ..types import Completion, Prompt
from .features import FeatureExtractor, grid_features
from .reward_model import EpistemicRewardModel
from .selection import select_pairs


def identity_ids(completions: list[list[Completion]]) -> np.ndarray:
    """[B, N] ids, equal exactly where two responses of a prompt have the same tokens (never paired)."""
    ids = np.zeros((len(completions), max(len(c) for c in completions)), dtype=np.int64)
    for b, row in enumerate(completions):
        seen: dict[tuple[int, ...], int] = {}
        for n, c in enumerate(row):
            ids[b, n] = seen.setdefault(tuple(c.token_ids), len(seen))
    return ids


class PassiveExplorer:
    """Two uniformly random distinct responses per prompt (online DPO's default)."""

    strategy = "passive"

    def __init__(self, seed: int):
        self.seed = seed
        self.calls = 0

    def select(self, prompts: list[Prompt], completions: list[list[Completion]]) -> np.ndarray:
        """[B, 2] response indices; a row of -1 marks a prompt whose responses are all identical."""
        rewards = np.zeros((len(completions), len(completions[0]), 1), dtype=np.float32)
        return self._select(rewards, completions)

    def _select(self, rewards: np.ndarray, completions: list[list[Completion]]) -> np.ndarray:
        selection = select_pairs(rewards, identity_ids(completions), strategy=self.strategy,
                                 seed=self.seed * 1_000_003 + self.calls)
        self.calls += 1
        return np.asarray(selection.pairs)

    def observe(self, rows: np.ndarray, idx: np.ndarray, a_wins: np.ndarray, informative: np.ndarray) -> dict:
        """Learn from the oracle's labels of the selected pairs (passive exploration has nothing to learn)."""
        return {}

    def state_dict(self) -> dict:
        """`calls` seeds the next selection, so a resumed run picks the same pairs."""
        return {"strategy": self.strategy, "calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        if state["strategy"] != self.strategy:
            raise ValueError(f"explorer state is for {state['strategy']!r}, this explorer is {self.strategy!r}")
        self.calls = int(state["calls"])


class EpistemicExplorer(PassiveExplorer):
    """SEA: reward samples R[b, n, e] from the epistemic reward model, then a selection rule.

    `features` takes the raw instructions and response texts (e.g. MiniLMFeatures); the features of
    this round's responses are kept until the oracle has answered, so none is computed twice.
    """

    def __init__(self, strategy: str, features: FeatureExtractor, reward_model: EpistemicRewardModel, seed: int):
        super().__init__(seed)
        self.strategy, self.features, self.reward_model = strategy, features, reward_model
        self._phi: torch.Tensor | None = None

    def select(self, prompts: list[Prompt], completions: list[list[Completion]]) -> np.ndarray:
        self._phi = grid_features(self.features, [p.instruction for p in prompts],
                                  [[c.text for c in row] for row in completions])
        return self._select(self.reward_model.reward_samples(self._phi), completions)

    def observe(self, rows: np.ndarray, idx: np.ndarray, a_wins: np.ndarray, informative: np.ndarray) -> dict:
        """Add the informative labelled pairs (rows of this round's selection) and train a few steps."""
        keep = np.flatnonzero(informative)
        if keep.size:
            r, i, j, a = rows[keep], idx[keep, 0], idx[keep, 1], a_wins[keep].astype(bool)
            first, second = self._phi[r, i], self._phi[r, j]
            w = torch.as_tensor(a).unsqueeze(1)
            self.reward_model.add_pairs(torch.where(w, first, second), torch.where(w, second, first))
        stats = self.reward_model.update()
        return {f"erm/{k}": v for k, v in stats.items()}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "reward_model": self.reward_model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.reward_model.load_state_dict(state["reward_model"])


def build_explorer(cfg, seed: int) -> PassiveExplorer:
    """The explorer named by cfg.explore; SEA rules get MiniLM features and an E-head reward ensemble."""
    if cfg.explore == "passive":
        return PassiveExplorer(seed)
    from .features import MiniLMFeatures

    features = MiniLMFeatures()
    model = EpistemicRewardModel(feature_dim=features.dim, num_heads=cfg.erm_heads, seed=seed)
    return EpistemicExplorer(cfg.explore, features, model, seed)

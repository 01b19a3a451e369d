"""The explorer: which two of a prompt's N responses to ask the oracle about, and learning from the answer.

Passive exploration picks two random distinct responses. SEA's explorers score every response with an
epistemic reward model (an ensemble: one Thompson sample per head) on frozen features and apply a
selection rule; the model then trains on every pair the oracle labelled. The rules themselves live in
`selection.py` (C++ with a numpy reference); this module turns completions into their inputs.
"""
from __future__ import annotations

import numpy as np

import torch

from ..seeding import stream_seed
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
        self.model_labelled = np.zeros(0, dtype=bool)  # rows of the last selection labelled by the model

    def select(self, prompts: list[Prompt], completions: list[list[Completion]], queries: int = 0) -> np.ndarray:
        """[B, 2] response indices; a row of -1 marks a prompt whose responses are all identical.

        `queries` (oracle queries so far) lets SEA start mixed preference learning after its burn-in.
        """
        rewards = np.zeros((len(completions), len(completions[0]), 1), dtype=np.float32)
        self.model_labelled = np.zeros(len(completions), dtype=bool)
        return self._select(rewards, completions)

    def _select(self, rewards: np.ndarray, completions: list[list[Completion]]) -> np.ndarray:
        selection = select_pairs(rewards, identity_ids(completions), strategy=self.strategy,
                                 seed=stream_seed(self.seed, "selection", self.calls))
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

    `features` maps (prompts, responses) to [M, d]; `by_tokens` says whether it reads token ids (the
    policy's hidden state) or text (MiniLM). The features of this round's responses are kept until the
    oracle has answered, so none is computed twice.

    Mixed preference learning (`mixed_share` > 0, after `mixed_burn_in` oracle queries): for that share
    of the prompts the pair is the one with the largest margin under one sampled head, labelled by the
    model itself (best ≻ worst) and never sent to the oracle — the model is confident there, so an
    oracle query would teach little. Those rows are marked in `model_labelled`; the reward model does
    not train on its own labels.
    """

    def __init__(self, strategy: str, features: FeatureExtractor, reward_model: EpistemicRewardModel, seed: int,
                 *, by_tokens: bool = False, mixed_share: float = 0.0, mixed_burn_in: int = 0):
        super().__init__(seed)
        self.strategy, self.features, self.reward_model = strategy, features, reward_model
        self.by_tokens, self.mixed_share, self.mixed_burn_in = by_tokens, mixed_share, mixed_burn_in
        self._phi: torch.Tensor | None = None
        self._rng = np.random.default_rng(seed)

    def featurise(self, prompts: list[Prompt], completions: list[list[Completion]]) -> torch.Tensor:
        """[B, N, d] features of every response."""
        if self.by_tokens:
            return grid_features(self.features, [p.token_ids for p in prompts],
                                 [[c.token_ids for c in row] for row in completions])
        return grid_features(self.features, [p.instruction for p in prompts],
                             [[c.text for c in row] for row in completions])

    def score(self, prompts: list[Prompt], completions: list[list[Completion]]) -> np.ndarray:
        """[B, N] ensemble-mean rewards (best-of-N evaluation)."""
        return self.reward_model.reward_samples(self.featurise(prompts, completions)).mean(axis=2)

    def select(self, prompts: list[Prompt], completions: list[list[Completion]], queries: int = 0) -> np.ndarray:
        self._phi = self.featurise(prompts, completions)
        rewards = self.reward_model.reward_samples(self._phi)
        idx = self._select(rewards, completions)
        self.model_labelled = self._mixed_rows(len(prompts), queries)
        if self.model_labelled.any():
            rows = np.flatnonzero(self.model_labelled)
            idx[rows] = confident_pairs(rewards[rows], identity_ids(completions)[rows], self._rng)
            self.model_labelled[rows] = idx[rows, 0] >= 0
        return idx

    def _mixed_rows(self, batch: int, queries: int) -> np.ndarray:
        rows = np.zeros(batch, dtype=bool)
        if self.mixed_share > 0 and queries >= self.mixed_burn_in:
            rows[self._rng.permutation(batch)[:int(round(self.mixed_share * batch))]] = True
        return rows

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
        return {**super().state_dict(), "reward_model": self.reward_model.state_dict(),
                "mixed_rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.reward_model.load_state_dict(state["reward_model"])
        self._rng.bit_generator.state = state["mixed_rng"]


def confident_pairs(rewards: np.ndarray, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[B, N, E] → [B, 2] (best, worst) under one uniformly sampled head per prompt; -1 if all identical.

    The worst is taken among responses distinct from the best, so identical responses are never paired.
    """
    B = rewards.shape[0]
    heads = rng.integers(0, rewards.shape[2], size=B)
    r = rewards[np.arange(B), :, heads]  # [B, N]
    best = r.argmax(axis=1)
    distinct = ids != ids[np.arange(B), best][:, None]
    worst = np.where(distinct, r, np.inf).argmin(axis=1)
    ok = distinct.any(axis=1)
    return np.stack([np.where(ok, best, -1), np.where(ok, worst, -1)], axis=1)


def build_explorer(cfg, seed: int, policy: torch.nn.Module | None = None) -> PassiveExplorer:
    """The explorer named by cfg.explore; SEA rules get features (MiniLM, or the frozen initial policy's
    hidden state when cfg.erm_features == "policy": `policy` is that model or its transformer body, e.g.
    `PolicyLearner.reference_decoder()`) and an E-head reward ensemble."""
    if cfg.explore == "passive":
        return PassiveExplorer(seed)
    if cfg.erm_features == "policy":
        if policy is None:
            raise ValueError("erm_features='policy' needs the model whose hidden states are the features")
        from .features import PolicyHiddenFeatures

        features, by_tokens = PolicyHiddenFeatures(policy), True
    else:
        from .features import MiniLMFeatures

        features, by_tokens = MiniLMFeatures(), False
    model = EpistemicRewardModel(feature_dim=features.dim, num_heads=cfg.erm_heads, seed=seed)
    return EpistemicExplorer(cfg.explore, features, model, seed, by_tokens=by_tokens,
                             mixed_share=cfg.mixed_share, mixed_burn_in=cfg.mixed_burn_in)

"""The explorer: which two of a prompt's N responses to ask the oracle about, and learning from the answer.

Passive exploration picks two random distinct responses. SEA's explorers score every response with an
epistemic reward model (an ensemble: one Thompson sample per head) on frozen features and apply a
selection rule; the model then trains on every pair the oracle labelled, after predicting it
(prequential diagnostics, `diagnostics.py`). APL (`apl.py`) ranks by the policy's own implicit reward.
The rules themselves live in `selection.py` (C++ with a numpy reference); this module turns
completions into their inputs. `build_explorer` is the one place that maps `--explore` to a class.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

import torch

from ..seeding import stream_seed
from ..config import HEAD_DRAWS, MIXED_GATED_OUT
from ..types import Completion, Prompt
from .diagnostics import PrequentialRecord
from .features import FeatureExtractor, grid_features
from .reward_model import EpistemicRewardModel, PairPrediction
from .selection import THOMPSON_RULES, select_pairs


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

    def prompts_per_round(self, batch_size: int) -> int:
        """Prompts the loop draws per round for `batch_size` queries: each of them (APL draws a larger pool)."""
        return batch_size

    def select(self, prompts: list[Prompt], completions: list[list[Completion]], queries: int = 0) -> np.ndarray:
        """[B, 2] response indices; a row of -1 marks a prompt that gets no pair (neither asked nor trained on):
        its responses are all identical, or the explorer left it out.

        `queries` (oracle queries so far) lets SEA start mixed preference learning after its burn-in.
        """
        rewards = np.zeros((len(completions), len(completions[0]), 1), dtype=np.float32)
        self.model_labelled = np.zeros(len(completions), dtype=bool)
        return self._select(rewards, identity_ids(completions))

    def _select(self, rewards: np.ndarray, ids: np.ndarray) -> np.ndarray:
        selection = select_pairs(rewards, ids, strategy=self.strategy, seed=self._next_seed())
        return np.asarray(selection.pairs)

    def _next_seed(self) -> int:
        seed = stream_seed(self.seed, "selection", self.calls)
        self.calls += 1
        return seed

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

    Thompson heads (`head_draws`, rules in `selection.THOMPSON_RULES`): "batch" draws one head order per
    round for every prompt, as oat's `EnnEETS`/`EnnBAITS.get_duel_actions` (one `random.shuffle` of the
    heads per call); "prompt" draws one per prompt (the C++ rule's own per-row streams).

    Every oracle-labelled pair is predicted before the model trains on it (`PrequentialRecord`, window
    `window` pairs): that accuracy, not the training accuracy, is what the model has earned.

    Mixed preference learning (`mixed_share` > 0, after `mixed_burn_in` oracle queries): that share of
    the prompts, drawn at random (as oat's `ModelBasedExplorer`), become candidates for a model label:
    the pair with the largest margin under one sampled head, best ≻ worst. The gate lets the model label
    a candidate only if (i) the ensemble's probability of that label, mean_e σ(r_e(best) − r_e(worst)),
    is at least `mixed_min_confidence` and (ii) the prequential accuracy over the last `window` oracle
    pairs is at least `mixed_min_accuracy` (0 turns (ii) off; otherwise it stays closed until `window`
    pairs were predicted). A refused
    candidate gets the rule's ordinary pair and goes to the oracle (`gated_out="oracle"`), or is dropped
    (`"drop"`: neither asked nor trained on, its query not spent). Model-labelled rows are marked in
    `model_labelled`; the reward model never trains on its own labels. docs/exploration.md has the rule.
    """

    def __init__(self, strategy: str, features: FeatureExtractor, reward_model: EpistemicRewardModel, seed: int,
                 *, by_tokens: bool = False, head_draws: str = "batch", window: int = 32,
                 mixed_share: float = 0.0, mixed_burn_in: int = 0, mixed_min_confidence: float = 0.9,
                 mixed_min_accuracy: float = 0.6, gated_out: str = "oracle"):
        super().__init__(seed)
        if head_draws not in HEAD_DRAWS or gated_out not in MIXED_GATED_OUT:
            raise ValueError(f"head_draws must be one of {HEAD_DRAWS} and gated_out one of {MIXED_GATED_OUT}, "
                             f"got {head_draws!r}, {gated_out!r}")
        self.strategy, self.features, self.reward_model = strategy, features, reward_model
        self.by_tokens, self.head_draws = by_tokens, head_draws
        self.mixed_share, self.mixed_burn_in = mixed_share, mixed_burn_in
        self.mixed_min_confidence, self.mixed_min_accuracy = mixed_min_confidence, mixed_min_accuracy
        self.gated_out = gated_out
        self.prequential = PrequentialRecord(window)
        self._phi: torch.Tensor | None = None
        self._rng = np.random.default_rng(seed)
        self._mixed_metrics: dict[str, float] = {}

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
        ids = identity_ids(completions)
        idx = self._select(rewards, ids)
        self.model_labelled = np.zeros(len(prompts), dtype=bool)
        candidates = self._mixed_rows(len(prompts), queries)
        self._mixed_metrics = self._mixed(idx, rewards, ids, candidates) if self.mixed_share > 0 else {}
        return idx

    def _select(self, rewards: np.ndarray, ids: np.ndarray) -> np.ndarray:
        seed = self._next_seed()
        if self.head_draws == "batch" and self.strategy in THOMPSON_RULES:
            # A one-prompt batch reads row 0's stream of `seed`: every prompt then draws the same heads.
            return np.concatenate([select_pairs(rewards[b:b + 1], ids[b:b + 1], strategy=self.strategy,
                                                seed=seed).pairs for b in range(rewards.shape[0])])
        return np.asarray(select_pairs(rewards, ids, strategy=self.strategy, seed=seed).pairs)

    def _mixed_rows(self, batch: int, queries: int) -> np.ndarray:
        rows = np.zeros(batch, dtype=bool)
        if self.mixed_share > 0 and queries >= self.mixed_burn_in:
            rows[self._rng.permutation(batch)[:int(round(self.mixed_share * batch))]] = True
        return rows

    def accuracy_gate_open(self) -> bool:
        """Condition (ii): the prequential accuracy over the last `window` oracle pairs has earned model labels."""
        if self.mixed_min_accuracy == 0:
            return True
        return self.prequential.window_full and self.prequential.recent_accuracy >= self.mixed_min_accuracy

    def _mixed(self, idx: np.ndarray, rewards: np.ndarray, ids: np.ndarray, candidates: np.ndarray) -> dict:
        """Label the candidates the gate lets through (in place on idx / model_labelled); the gate's counts."""
        rows = np.flatnonzero(candidates)
        pairs = confident_pairs(rewards[rows], ids[rows], self._rng)
        valid = pairs[:, 0] >= 0
        confidence = pair_view(rewards[rows], pairs).prob
        gate_open = self.accuracy_gate_open()
        labelled = valid & (confidence >= self.mixed_min_confidence) & gate_open
        idx[rows[labelled]] = pairs[labelled]
        self.model_labelled[rows[labelled]] = True
        refused = rows[valid & ~labelled]
        if self.gated_out == "drop":
            idx[refused] = -1
        return {"mixed/candidates": float(valid.sum()), "mixed/model_labelled": float(labelled.sum()),
                "mixed/gated_out": float(refused.size), "mixed/gate_open": float(gate_open),
                "mixed/confidence": float(confidence[valid].mean()) if valid.any() else float("nan")}

    def observe(self, rows: np.ndarray, idx: np.ndarray, a_wins: np.ndarray, informative: np.ndarray) -> dict:
        """Predict the informative labelled pairs (rows of this round's selection), then add them and train."""
        keep = np.flatnonzero(informative)
        prediction = None
        if keep.size:
            r, i, j, a = rows[keep], idx[keep, 0], idx[keep, 1], a_wins[keep].astype(bool)
            first, second = self._phi[r, i], self._phi[r, j]
            w = torch.as_tensor(a).unsqueeze(1)
            chosen, rejected = torch.where(w, first, second), torch.where(w, second, first)
            prediction = self.reward_model.predict_pairs(chosen, rejected)  # before training: prequential
            self.reward_model.add_pairs(chosen, rejected)
        stats = {**self.prequential.record(prediction), **self.reward_model.update()}
        return {**{f"erm/{k}": v for k, v in stats.items()}, **self._mixed_metrics}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "reward_model": self.reward_model.state_dict(),
                "mixed_rng": self._rng.bit_generator.state, "prequential": self.prequential.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "prequential" not in state:
            raise ValueError("this explorer checkpoint predates the prequential record the mixed-preference "
                             "gate reads; it cannot be resumed exactly: start the run afresh")
        self.reward_model.load_state_dict(state["reward_model"])
        self._rng.bit_generator.state = state["mixed_rng"]
        self.prequential.load_state_dict(state["prequential"])


def pair_view(rewards: np.ndarray, pairs: np.ndarray) -> PairPrediction:
    """[B, N, E] reward samples and [B, 2] pairs (first, second) → the ensemble's view of first ≻ second
    (probability, agreement, margins; `PairPrediction`). Rows without a pair (-1) read as ties."""
    B = rewards.shape[0]
    first, second = np.maximum(pairs[:, 0], 0), np.maximum(pairs[:, 1], 0)
    margins = rewards[np.arange(B), first].astype(np.float64) - rewards[np.arange(B), second].astype(np.float64)
    return PairPrediction.from_margins(np.where((pairs[:, 0] >= 0)[:, None], margins, 0.0).T)


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


def build_explorer(cfg, seed: int, policy: torch.nn.Module | None = None,
                   implicit_rewards: Callable | None = None) -> PassiveExplorer:
    """The explorer named by cfg.explore (the one place that maps the name to a class).

    SEA rules get features (MiniLM, or the frozen initial policy's hidden state when
    cfg.erm_features == "policy": `policy` is that model or its transformer body, e.g.
    `PolicyLearner.reference_decoder()`) and an E-head reward ensemble; APL gets `implicit_rewards`
    (`PolicyLearner.implicit_rewards`: prompts' token ids and their responses' → [B, N]).
    """
    if cfg.explore == "passive":
        return PassiveExplorer(seed)
    if cfg.explore == "apl":
        from .apl import ActivePreferenceExplorer

        if implicit_rewards is None:
            raise ValueError("--explore apl needs the learner's implicit rewards (PolicyLearner.implicit_rewards)")
        return ActivePreferenceExplorer(implicit_rewards, seed, pool_factor=cfg.apl_pool_factor)
    if cfg.erm_features == "policy":
        if policy is None:
            raise ValueError("erm_features='policy' needs the model whose hidden states are the features")
        from .features import PolicyHiddenFeatures

        features, by_tokens = PolicyHiddenFeatures(policy), True
    else:
        from .features import MiniLMFeatures

        features, by_tokens = MiniLMFeatures(), False
    model = EpistemicRewardModel(feature_dim=features.dim, num_heads=cfg.erm_heads, seed=seed)
    return EpistemicExplorer(cfg.explore, features, model, seed, by_tokens=by_tokens, head_draws=cfg.head_draws,
                             window=cfg.erm_window, mixed_share=cfg.mixed_share, mixed_burn_in=cfg.mixed_burn_in,
                             mixed_min_confidence=cfg.mixed_min_confidence,
                             mixed_min_accuracy=cfg.mixed_min_accuracy, gated_out=cfg.mixed_gated_out)

"""The explorer: confident pairs for mixed preference learning, burn-in, its features, and its checkpoint state."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fastalign.config import ConfigError, RunConfig
from fastalign.explore.explorer import EpistemicExplorer, PassiveExplorer, build_explorer, confident_pairs
from fastalign.explore.reward_model import EpistemicRewardModel
from fastalign.types import Completion, Prompt


def test_confident_pairs_take_best_and_worst_of_the_sampled_head():
    # one head, so the sampled head is known: best and worst of each row
    rewards = np.array([[[0.1], [0.9], [-0.5], [0.3]],
                        [[2.0], [1.0], [3.0], [0.0]]], dtype=np.float32)
    ids = np.tile(np.arange(4), (2, 1))
    assert confident_pairs(rewards, ids, np.random.default_rng(0)).tolist() == [[1, 2], [2, 3]]


def test_confident_pairs_never_pair_identical_responses():
    rewards = np.array([[[1.0], [0.9], [-0.5]]], dtype=np.float32)
    # response 2 (the worst) is the same text as the best: the worst distinct one is response 1
    assert confident_pairs(rewards, np.array([[0, 1, 0]]), np.random.default_rng(0)).tolist() == [[0, 1]]
    assert confident_pairs(rewards, np.array([[0, 0, 0]]), np.random.default_rng(0)).tolist() == [[-1, -1]]


def test_confident_pairs_use_one_head_per_prompt():
    # head 0 ranks 0 > 1, head 1 ranks 1 > 0: across many prompts both heads get sampled
    rewards = np.tile(np.array([[[1.0, 0.0], [0.0, 1.0]]], dtype=np.float32), (200, 1, 1))
    pairs = confident_pairs(rewards, np.tile(np.arange(2), (200, 1)), np.random.default_rng(3))
    firsts = set(pairs[:, 0].tolist())
    assert firsts == {0, 1}


class TokenLength:
    """Features from token ids: [len(response), 1] — lets a test know the reward model's inputs."""

    dim = 2

    def __call__(self, prompts, responses):
        return torch.tensor([[float(len(r)), 1.0] for r in responses])


def batch(B: int, N: int) -> tuple[list[Prompt], list[list[Completion]]]:
    prompts = [Prompt(id=str(b), instruction=f"p{b}", text=f"p{b}", token_ids=[1, 2]) for b in range(B)]
    completions = [[Completion(token_ids=[7] * (n + 1), text="x" * (n + 1)) for n in range(N)] for _ in range(B)]
    return prompts, completions


def sea(mixed_share: float, burn_in: int) -> EpistemicExplorer:
    model = EpistemicRewardModel(feature_dim=2, num_heads=3, hidden=8, seed=0)
    return EpistemicExplorer("ee-ts", TokenLength(), model, seed=0, by_tokens=True, mixed_share=mixed_share,
                             mixed_burn_in=burn_in, mixed_min_confidence=0.0, mixed_min_accuracy=0.0)  # ungated: oat


def test_mixed_preference_waits_for_its_burn_in_then_labels_its_share():
    explorer = sea(mixed_share=0.5, burn_in=16)
    prompts, completions = batch(8, 4)
    explorer.select(prompts, completions, queries=8)
    assert not explorer.model_labelled.any()
    idx = explorer.select(prompts, completions, queries=16)
    rows = np.flatnonzero(explorer.model_labelled)
    assert len(rows) == 4
    rewards = explorer.reward_model.reward_samples(explorer.featurise(prompts, completions))
    for r in rows:  # chosen first: the pair's first response beats the second under some head
        assert (rewards[r, idx[r, 0]] >= rewards[r, idx[r, 1]]).any()


def test_passive_explorer_never_labels_pairs_itself():
    explorer = PassiveExplorer(seed=0)
    prompts, completions = batch(4, 2)
    idx = explorer.select(prompts, completions, queries=1000)
    assert not explorer.model_labelled.any() and idx.shape == (4, 2)


def test_policy_features_read_token_ids_of_the_given_model(tiny_model_dir):
    from fastalign.models import load_causal_lm

    model = load_causal_lm(tiny_model_dir, "fp32")
    cfg = RunConfig(explore="bai-ts", erm_features="policy", erm_heads=4)
    explorer = build_explorer(cfg, seed=0, policy=model)
    prompts, completions = batch(2, 3)
    phi = explorer.featurise(prompts, completions)
    assert phi.shape == (2, 3, model.config.hidden_size)
    assert explorer.score(prompts, completions).shape == (2, 3)
    with pytest.raises(ValueError, match="needs the model"):
        build_explorer(cfg, seed=0)


@pytest.mark.parametrize("options, message", [
    ({"mixed_share": 0.5}, "needs the epistemic reward model"),
    ({"eval_best_of_n": 4}, "needs the epistemic reward model"),
    ({"explore": "ee-ts", "mixed_share": 1.0}, "mixed_share must be in"),
    ({"explore": "ee-ts", "eval_best_of_n": 1}, "eval_best_of_n must be 0"),
    ({"erm_features": "clip"}, "unknown erm_features"),
    ({"explore": "thompson"}, "unknown explore 'thompson'"),
])
def test_config_refuses_bad_exploration_options(options, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**options).validate()


def trained_explorer(seed: int) -> EpistemicExplorer:
    model = EpistemicRewardModel(feature_dim=8, num_heads=3, hidden=16, batch_size=4, seed=seed)
    explorer = EpistemicExplorer("ee-ts", features=None, reward_model=model, seed=seed)
    g = torch.Generator().manual_seed(seed)
    model.add_pairs(torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g))
    model.update()
    explorer.calls = 7
    return explorer


def test_epistemic_explorer_state_round_trips_and_continues_identically():
    a, b = trained_explorer(0), trained_explorer(1)
    b.load_state_dict(a.state_dict())
    assert b.calls == 7 and b.reward_model.pairs_seen == 6
    assert a.reward_model.update() == b.reward_model.update()  # same Adam state, replay and sampling stream
    x = torch.randn(5, 8)
    assert torch.equal(a.reward_model.rewards(x), b.reward_model.rewards(x))


def test_state_of_another_strategy_is_refused():
    passive = PassiveExplorer(seed=0)
    with pytest.raises(ValueError, match="explorer state is for 'ee-ts'"):
        passive.load_state_dict(trained_explorer(0).state_dict())

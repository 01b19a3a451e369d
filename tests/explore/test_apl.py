"""APL (Muldrew et al. 2024, "Active Preference Learning for Large Language Models", ICML; authors' code
willmuldrew/active-preference-learning, oat's `oat/algorithms/apl.py`): entropy prompt filter over a
larger pool, max implicit-reward-margin pair, batch_size queries per round. Expected values by hand.
"""
from __future__ import annotations

import numpy as np
import pytest

from fastalign.config import ConfigError, RunConfig
from fastalign.explore.apl import ActivePreferenceExplorer, max_margin_pairs, predictive_entropy, top_entropy_rows
from fastalign.explore.explorer import build_explorer
from fastalign.types import Completion, Prompt


def test_predictive_entropy_is_minus_the_mean_sequence_logprob():
    rows = [[Completion([1, 2], "a", logprobs=[-1.0, -2.0]), Completion([3], "b", logprobs=[-0.5])],
            [Completion([4], "c", logprobs=[-4.0]), Completion([5], "d", logprobs=[-2.0])]]
    assert predictive_entropy(rows).tolist() == [(3.0 + 0.5) / 2, (4.0 + 2.0) / 2]
    with pytest.raises(ValueError, match="log-probs"):
        predictive_entropy([[Completion([1], "a"), Completion([2], "b")]])


def test_top_entropy_rows_keep_the_highest_entropy_pairable_prompts():
    entropy = np.array([1.0, 3.0, 2.0, 3.0, 5.0])
    pairable = np.array([True, True, True, True, False])  # prompt 4 has only identical responses
    assert top_entropy_rows(entropy, pairable, 2).tolist() == [1, 3]  # not oat's lowest-entropy order
    assert top_entropy_rows(entropy, pairable, 3).tolist() == [1, 2, 3]
    assert top_entropy_rows(np.zeros(4), np.ones(4, dtype=bool), 2).tolist() == [0, 1]  # ties: lower index


def test_max_margin_pairs_by_hand():
    r = np.array([[0.0, 2.0, -1.0, 0.5]])
    assert max_margin_pairs(r, np.array([[0, 1, 2, 3]])).tolist() == [[1, 2]]  # |2 − (−1)| = 3
    # responses 1 and 2 identical: the next largest margin is |2 − 0| = 2 (pair 0, 1)
    assert max_margin_pairs(r, np.array([[0, 1, 1, 3]])).tolist() == [[0, 1]]
    assert max_margin_pairs(np.zeros((1, 3)), np.array([[0, 1, 2]])).tolist() == [[0, 1]]  # policy == reference
    assert max_margin_pairs(r, np.zeros((1, 4), dtype=np.int64)).tolist() == [[-1, -1]]


def pool(size: int, N: int) -> tuple[list[Prompt], list[list[Completion]]]:
    prompts = [Prompt(id=str(b), instruction=f"p{b}", text=f"p{b}", token_ids=[1, b]) for b in range(size)]
    # prompt b's responses have log-prob −b each: entropy b, so the last prompts are kept
    completions = [[Completion([b, n], f"r{n}", logprobs=[-float(b)]) for n in range(N)] for b in range(size)]
    return prompts, completions


def test_apl_asks_batch_size_pairs_from_a_pool_of_factor_times_as_many():
    calls = []

    def implicit(prompt_ids, responses):
        calls.append([p[1] for p in prompt_ids])
        return np.array([[0.0, 0.1 * p[1], -0.2, 0.0] for p in prompt_ids])  # response 1 vs 2 most certain

    apl = ActivePreferenceExplorer(implicit, seed=0, pool_factor=4)
    assert apl.prompts_per_round(2) == 8
    prompts, completions = pool(8, 4)
    idx = apl.select(prompts, completions)
    assert calls == [[6, 7]]  # only the two highest-entropy prompts are scored
    assert idx.tolist() == [[-1, -1]] * 6 + [[1, 2], [1, 2]]
    assert (idx[:, 0] >= 0).sum() == 2 and not apl.model_labelled.any()  # 2 oracle queries, none model-labelled
    stats = apl.observe(np.array([6, 7]), idx[6:], np.array([True, True]), np.array([True, True]))
    assert stats["apl/kept"] == 2 and stats["apl/entropy_kept"] == 6.5 and stats["apl/entropy_pool"] == 3.5
    assert stats["apl/margin"] == pytest.approx(np.mean([0.6 + 0.2, 0.7 + 0.2]))


def test_pool_factor_one_is_oats_effective_rule():
    apl = ActivePreferenceExplorer(lambda p, r: np.array([[0.0, 1.0, 3.0]] * len(p)), seed=0, pool_factor=1)
    prompts, completions = pool(3, 3)
    assert apl.select(prompts, completions).tolist() == [[0, 2]] * 3  # every prompt, its max-margin pair


def test_apl_is_built_with_the_learners_implicit_rewards_and_refuses_what_it_cannot_do():
    cfg = RunConfig(explore="apl", samples_per_prompt=4, apl_pool_factor=3).validate()
    apl = build_explorer(cfg, seed=0, implicit_rewards=lambda p, r: np.zeros((len(p), 4)))
    assert isinstance(apl, ActivePreferenceExplorer) and apl.prompts_per_round(8) == 24
    with pytest.raises(ValueError, match="implicit rewards"):
        build_explorer(cfg, seed=0)
    for options, message in [({"mixed_share": 0.5}, "mixed_share needs the epistemic reward model"),
                             ({"eval_best_of_n": 4}, "eval_best_of_n needs the epistemic reward model"),
                             ({"algorithm": "bpo"}, "keeps no frozen reference"),
                             ({"apl_pool_factor": 0}, "apl_pool_factor must be ≥ 1")]:
        with pytest.raises(ConfigError, match=message):
            RunConfig(explore="apl", **options).validate()

"""The mixed-preference gate, Thompson head draws per batch or per prompt, and the explorer's resumable state.

Gate (docs/exploration.md): a candidate row gets the model's label only if (i) the ensemble's probability
of its label, mean_e σ(r_e(best) − r_e(worst)), reaches `mixed_min_confidence` and (ii) the prequential
accuracy over the last `window` oracle pairs reaches `mixed_min_accuracy`; otherwise it is asked as usual
(gated_out="oracle", the default) or dropped (gated_out="drop"). Reward samples are fixed by hand so that
every expected pair is known.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fastalign.explore.explorer import EpistemicExplorer, PassiveExplorer, pair_view
from fastalign.explore.reward_model import EpistemicRewardModel, PairPrediction
from fastalign.explore.selection import RowStreams, select_pairs
from fastalign.types import Completion, Prompt


class FixedRewards(EpistemicRewardModel):
    """An ensemble whose reward samples for the next selection are set by the test."""

    def __init__(self, rewards: np.ndarray):
        super().__init__(feature_dim=2, num_heads=rewards.shape[2], hidden=4, seed=0)
        self.fixed = rewards.astype(np.float32)

    def reward_samples(self, features):
        return self.fixed.copy()


class Constant:
    dim = 2

    def __call__(self, prompts, responses):
        return torch.ones(len(responses), 2)


def batch(B: int, N: int) -> tuple[list[Prompt], list[list[Completion]]]:
    prompts = [Prompt(id=str(b), instruction=f"p{b}", text=f"p{b}", token_ids=[1, 2]) for b in range(B)]
    return prompts, [[Completion(token_ids=[9, n], text=f"r{n}") for n in range(N)] for _ in range(B)]


def explorer(rewards: np.ndarray, **gate) -> EpistemicExplorer:
    options = dict(mixed_share=1.0, mixed_burn_in=0, mixed_min_confidence=0.75, mixed_min_accuracy=0.0, window=4,
                   gated_out="drop")
    options.update(gate)
    return EpistemicExplorer("ee-ts", Constant(), FixedRewards(rewards), seed=0, **options)


# Row 0: all 4 heads rank response 0 over 1 by 2, P = σ(2) = 0.881. Row 1: heads 0-1 prefer 0 by 1, heads 2-3
# prefer 1 by 1: P = (σ(1) + σ(1) + σ(−1) + σ(−1))/4 = ½ whichever order the sampled head gives.
AGREED_AND_SPLIT = np.array([[[2.0, 2.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0]],
                             [[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]])


SIGMA2 = 0.8807970779778823


def test_pair_view_reads_the_heads_behind_a_label():
    view = pair_view(AGREED_AND_SPLIT, np.array([[0, 1], [1, 0]]))
    assert view.prob == pytest.approx([SIGMA2, 0.5]) and view.agreement.tolist() == [1.0, 0.5]
    flipped = pair_view(AGREED_AND_SPLIT, np.array([[1, 0], [-1, -1]]))
    assert flipped.prob == pytest.approx([1 - SIGMA2, 0.5]) and flipped.mean_margin[1] == 0.0  # no pair: a tie


def test_confidence_gate_labels_only_confident_rows_and_drops_the_rest():
    sea = explorer(AGREED_AND_SPLIT)
    prompts, completions = batch(2, 2)
    idx = sea.select(prompts, completions, queries=100)
    assert idx.tolist() == [[0, 1], [-1, -1]]  # row 1 is neither asked nor trained on
    assert sea.model_labelled.tolist() == [True, False]
    stats = sea.observe(np.array([0]), idx[:1], np.array([True]), np.array([False]))
    assert {k: stats[k] for k in ("mixed/candidates", "mixed/model_labelled", "mixed/gated_out",
                                  "mixed/gate_open", "mixed/confidence")} == {
        "mixed/candidates": 2.0, "mixed/model_labelled": 1.0, "mixed/gated_out": 1.0, "mixed/gate_open": 1.0,
        "mixed/confidence": pytest.approx((SIGMA2 + 0.5) / 2)}


def test_refused_rows_go_to_the_oracle_with_the_rules_own_pair_when_asked_to():
    sea = explorer(AGREED_AND_SPLIT, gated_out="oracle")
    prompts, completions = batch(2, 2)
    idx = sea.select(prompts, completions, queries=100)
    rule = select_pairs(AGREED_AND_SPLIT.astype(np.float32), np.tile(np.arange(2), (2, 1)), "ee-ts",
                        seed=0).pairs  # per-batch draws on a one-prompt batch = row 0's stream
    assert idx[0].tolist() == [0, 1] and sorted(idx[1].tolist()) == sorted(rule[1].tolist()) == [0, 1]
    assert sea.model_labelled.tolist() == [True, False]


def test_accuracy_gate_waits_for_a_full_window_and_then_for_the_threshold():
    sea = explorer(AGREED_AND_SPLIT, mixed_min_confidence=0.0, mixed_min_accuracy=0.75, window=4)
    prompts, completions = batch(2, 2)
    assert sea.select(prompts, completions, queries=100).tolist() == [[-1, -1], [-1, -1]]  # no evidence yet
    sea.prequential.record(PairPrediction.from_margins(np.array([[1.0, 1.0, 1.0]])))  # 3 right: window not full
    assert not sea.accuracy_gate_open()
    sea.prequential.record(PairPrediction.from_margins(np.array([[-1.0]])))  # 3 of 4 right = 0.75
    assert sea.accuracy_gate_open()
    sea.select(prompts, completions, queries=100)
    assert sea.model_labelled.all()
    sea.prequential.record(PairPrediction.from_margins(np.array([[-1.0]])))  # last 4: 2 of 4 right
    assert not sea.accuracy_gate_open() and sea.prequential.recent_accuracy == 0.5
    sea.select(prompts, completions, queries=100)
    assert not sea.model_labelled.any() and sea._mixed_metrics["mixed/gate_open"] == 0.0


def test_no_candidates_before_the_burn_in():
    sea = explorer(AGREED_AND_SPLIT, mixed_burn_in=16)
    prompts, completions = batch(2, 2)
    idx = sea.select(prompts, completions, queries=8)
    assert (idx >= 0).all() and not sea.model_labelled.any()
    assert sea._mixed_metrics["mixed/candidates"] == 0.0


# Head-draw tests: response n is the best response of head n, so a row's first pick names its head.
E = N = 5
ONE_BEST_PER_HEAD = np.tile(np.eye(N, E, dtype=np.float32)[None], (16, 1, 1))


@pytest.mark.parametrize("strategy", ["ee-ts", "bai-ts"])
def test_batch_head_draws_give_every_prompt_the_same_thompson_head(strategy):
    sea = EpistemicExplorer(strategy, Constant(), FixedRewards(ONE_BEST_PER_HEAD), seed=3, head_draws="batch")
    prompts, completions = batch(16, N)
    idx = sea.select(prompts, completions)
    seed = PassiveExplorer(3)._next_seed()  # the seed of an explorer's first selection
    head = int(RowStreams(seed, 1).below(E)[0])  # the first draw of the (single) stream, by the spec
    assert (idx[:, 0] == head).all()
    assert len({tuple(row) for row in idx.tolist()}) == 1  # one head order for the whole batch (as oat)


def test_prompt_head_draws_give_each_prompt_its_own_head():
    sea = EpistemicExplorer("ee-ts", Constant(), FixedRewards(ONE_BEST_PER_HEAD), seed=3, head_draws="prompt")
    prompts, completions = batch(16, N)
    idx = sea.select(prompts, completions)
    heads = RowStreams(PassiveExplorer(3)._next_seed(), 16).below(E)  # row b's first draw
    assert idx[:, 0].tolist() == heads.tolist() and len(set(heads.tolist())) > 1


def sea_with_history(seed: int) -> tuple[EpistemicExplorer, tuple]:
    rm = EpistemicRewardModel(feature_dim=2, num_heads=3, hidden=8, batch_size=4, seed=seed)

    class Features:
        dim = 2

        def __call__(self, prompts, responses):
            return torch.tensor([[float(len(r)), float(r.count("e"))] for r in responses])

    sea = EpistemicExplorer("ee-ts", Features(), rm, seed=seed, mixed_share=0.5, mixed_burn_in=0,
                            mixed_min_confidence=0.5, mixed_min_accuracy=0.5, window=4)
    prompts = [Prompt(id=str(b), instruction=f"p{b}", text=f"p{b}", token_ids=[1]) for b in range(4)]
    completions = [[Completion(token_ids=[n, b], text="e" * n + "x" * b) for n in range(1, 5)] for b in range(4)]
    return sea, (prompts, completions)


def play(sea: EpistemicExplorer, data: tuple) -> tuple[list, dict]:
    idx = sea.select(*data, queries=100)
    keep = np.flatnonzero(idx[:, 0] >= 0)
    by_model = sea.model_labelled[keep]
    a_wins = np.array([len(data[1][k][idx[k, 0]].text) % 2 == 0 for k in keep])
    stats = sea.observe(keep, idx[keep], a_wins, ~by_model)
    return idx.tolist(), stats


def plain(value) -> bool:
    """What torch.load(weights_only=True) reads back: Python scalars, strings, containers and tensors."""
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(plain(v) for v in value)
    return type(value) in (int, float, bool, str, type(None)) or isinstance(value, torch.Tensor)


def test_explorer_state_resumes_gate_and_prequential_record_exactly(tmp_path):
    a, data = sea_with_history(0)
    for _ in range(3):
        play(a, data)
    assert plain(a.prequential.state_dict()) and plain(a.state_dict()["mixed_rng"])
    torch.save(a.state_dict()["prequential"], tmp_path / "p.pt")
    assert torch.load(tmp_path / "p.pt", weights_only=True) == a.prequential.state_dict()
    b, _ = sea_with_history(0)  # a resumed run builds the same explorer afresh, then loads the state
    b.load_state_dict(a.state_dict())
    for _ in range(2):
        (idx_a, stats_a), (idx_b, stats_b) = play(a, data), play(b, data)
        assert idx_a == idx_b
        assert stats_a.keys() == stats_b.keys()
        assert all(stats_a[k] == stats_b[k] or (np.isnan(stats_a[k]) and np.isnan(stats_b[k])) for k in stats_a)
    old = a.state_dict()
    del old["prequential"]
    with pytest.raises(ValueError, match="predates the prequential record"):
        b.load_state_dict(old)

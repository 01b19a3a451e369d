"""The epistemic reward model: learns Bradley–Terry preferences, stays uncertain off its data, resumes exactly."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastalign.explore.reward_model import EpistemicRewardModel, ReplayBuffer
from fastalign.explore.selection import select_pairs

D, HALF = 32, 16  # training features live in dims [0, 16); out-of-distribution ones in [16, 32)


class BTWorld:
    """Gaussian features, a fixed random linear true reward, labels sampled Bradley–Terry."""

    def __init__(self, seed: int, scale: float = 3.0) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.w = torch.randn(D, generator=self.gen) / math.sqrt(HALF)
        self.scale = scale

    def features(self, n: int, offset: int = 0) -> torch.Tensor:
        x = torch.zeros(n, D)
        x[:, offset:offset + HALF] = torch.randn(n, HALF, generator=self.gen)
        return x

    def labelled_pairs(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.features(n), self.features(n)
        p_a = torch.sigmoid(self.scale * (a - b) @ self.w)
        a_wins = (torch.rand(n, generator=self.gen) < p_a)[:, None]
        return torch.where(a_wins, a, b), torch.where(a_wins, b, a)

    def true_order(self, n: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = self.features(n, offset), self.features(n, offset)
        a_better = ((a - b) @ self.w > 0)[:, None]
        return torch.where(a_better, a, b), torch.where(a_better, b, a)


def train(rm: EpistemicRewardModel, world: BTWorld, rounds: int, pairs_per_round: int = 32) -> list[dict]:
    stats = []
    for _ in range(rounds):
        rm.add_pairs(*world.labelled_pairs(pairs_per_round))
        stats.append(rm.update())
    return stats


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    world = BTWorld(seed=0)
    rm = EpistemicRewardModel(D, num_heads=10, batch_size=64, seed=0)
    stats = train(rm, world, rounds=30)
    return rm, world, stats


def test_learns_bradley_terry_preference(trained):
    rm, world, stats = trained
    assert rm.accuracy(*world.true_order(2000)) > 0.85
    assert stats[-1]["loss"] < stats[0]["loss"]
    assert rm.pairs_seen == 30 * 32 and rm.steps == 30 * 5
    assert stats[-1]["reg_weight"] == pytest.approx(0.5 * 64 / (30 * 32))


def head_agreement(rm: EpistemicRewardModel, x: torch.Tensor) -> tuple[float, float]:
    """Share of heads agreeing with the ensemble-mean preference, and median relative spread std/|mean|."""
    r = rm.rewards(x)
    half = x.shape[0] // 2
    diff = r[:, :half] - r[:, half:]
    agree = ((diff > 0) == (diff.mean(0) > 0)).float().mean().item()
    spread = (diff.std(0) / diff.mean(0).abs()).median().item()
    return agree, spread


def test_disagreement_is_epistemic(trained):
    """Heads agree where they were trained and stay apart (as at their anchors) off the data."""
    rm, world, _ = trained
    agree_in, spread_in = head_agreement(rm, world.features(400))
    agree_ood, spread_ood = head_agreement(rm, world.features(400, offset=HALF))
    assert agree_in > 0.9
    assert agree_ood < 0.75
    assert spread_ood > 5 * spread_in
    head_gaps = torch.cdist(rm.net.W1.detach().flatten(1), rm.net.W1.detach().flatten(1))
    assert head_gaps[~torch.eye(rm.num_heads, dtype=torch.bool)].min() > 0.5 * head_gaps.max()


def test_anchor_term_pulls_heads_to_their_initialisation():
    # the regulariser is a mean over all ~1.7k parameters (oat's normalisation), so a visible pull in
    # 10 rounds needs a large λ; with λ = 0 nothing but the data moves the heads
    distances = {}
    for lam in (0.0, 1000.0):
        rm = EpistemicRewardModel(8, num_heads=4, hidden=16, anchor_lambda=lam, batch_size=32, seed=3)
        world_gen = torch.Generator().manual_seed(5)
        for _ in range(10):
            rm.add_pairs(torch.randn(32, 8, generator=world_gen) + 1, torch.randn(32, 8, generator=world_gen))
            rm.update()
        distances[lam] = rm.anchor_distance().item()
    assert distances[1000.0] < 0.5 * distances[0.0]


def per_head_reward(rm: EpistemicRewardModel, e: int, x: torch.Tensor) -> torch.Tensor:
    n = rm.net
    h1 = torch.relu(x @ n.W1[e] + n.b1[e])
    h2 = torch.relu(h1 @ n.W2[e] + n.b2[e])
    return h2 @ n.W3[e] + n.b3[e]


def test_objective_matches_its_formula_head_by_head():
    rm = EpistemicRewardModel(6, num_heads=3, hidden=5, anchor_lambda=0.7, seed=1)
    gen = torch.Generator().manual_seed(2)
    rm.add_pairs(torch.randn(40, 6, generator=gen), torch.randn(40, 6, generator=gen))
    with torch.no_grad():
        for p in rm.net.parameters():
            p.add_(0.1)
    w, l = torch.randn(8, 6, generator=gen), torch.randn(8, 6, generator=gen)
    terms = rm.objective(w, l)
    with torch.no_grad():
        pref = torch.stack([-F.logsigmoid(per_head_reward(rm, e, w) - per_head_reward(rm, e, l))
                            for e in range(3)]).mean()
    assert terms["pref"].item() == pytest.approx(pref.item(), rel=1e-5)
    assert terms["reg"].item() == pytest.approx(0.01, rel=1e-4)
    assert terms["reg_weight"].item() == pytest.approx(0.7 * 8 / 40)
    assert terms["loss"].item() == pytest.approx(pref.item() + 0.7 * 8 / 40 * 0.01, rel=1e-5)


def test_reward_samples_shape_and_layout_feed_selection():
    rm = EpistemicRewardModel(D, num_heads=7, seed=0)
    x = torch.randn(3, 5, D)
    R = rm.reward_samples(x)
    assert R.shape == (3, 5, 7) and R.dtype == np.float32 and R.flags.c_contiguous
    flat = rm.rewards(x.reshape(15, D))
    assert flat.shape == (7, 15)
    np.testing.assert_array_equal(R[1, 2], flat[:, 1 * 5 + 2].numpy())
    np.testing.assert_array_equal(R, rm.reward_samples(x.numpy()))
    selection = select_pairs(R, np.arange(15).reshape(3, 5), strategy="ee-ts", seed=0)
    assert selection.valid.all()


def test_rejects_bad_inputs_with_clear_messages():
    rm = EpistemicRewardModel(4, num_heads=2, seed=0)
    with pytest.raises(ValueError, match=r"\[B, N, d\] with d = 4"):
        rm.reward_samples(torch.randn(2, 4))
    with pytest.raises(ValueError, match="d = 4"):
        rm.rewards(torch.randn(3, 5))
    with pytest.raises(ValueError, match="differ in shape"):
        rm.add_pairs(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(TypeError, match="floating point"):
        rm.rewards(torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="positive integers"):
        EpistemicRewardModel(4, num_heads=0)
    with pytest.raises(ValueError, match="lr must be"):
        EpistemicRewardModel(4, lr=0.0)


def test_update_on_empty_buffer_reports_nothing_trained():
    rm = EpistemicRewardModel(4, num_heads=2, seed=0)
    before = rm.net.W1.detach().clone()
    stats = rm.update()
    assert stats["steps"] == 0 and math.isnan(stats["loss"]) and math.isnan(stats["train_accuracy"])
    assert torch.equal(before, rm.net.W1)


def test_small_buffer_trains_on_all_it_has():
    rm = EpistemicRewardModel(4, num_heads=2, batch_size=128, seed=0)
    rm.add_pairs(torch.randn(5, 4), torch.randn(5, 4))
    stats = rm.update()
    assert stats["steps"] == 5 and stats["reg_weight"] == pytest.approx(0.5 * 5 / 5)


def test_replay_buffer_is_fifo_with_capacity():
    buf = ReplayBuffer(capacity=5, feature_dim=1)
    pairs = torch.arange(14, dtype=torch.float32).view(7, 2, 1)
    buf.add(pairs[:3])
    buf.add(pairs[3:7])
    assert len(buf) == 5
    assert sorted(buf.data[:, 0, 0].tolist()) == [4.0, 6.0, 8.0, 10.0, 12.0]  # pairs 2..6, the 5 newest
    buf.add(torch.arange(100, 116, dtype=torch.float32).view(8, 2, 1))
    assert sorted(buf.data[:, 0, 0].tolist()) == [106.0, 108.0, 110.0, 112.0, 114.0]
    rm = EpistemicRewardModel(1, num_heads=2, replay_capacity=5, seed=0)
    rm.add_pairs(torch.randn(7, 1), torch.randn(7, 1))
    assert len(rm.replay) == 5 and rm.pairs_seen == 7


def test_deterministic_for_a_seed():
    def run(seed: int) -> tuple[torch.Tensor, list[dict]]:
        rm = EpistemicRewardModel(D, num_heads=4, batch_size=16, seed=seed)
        stats = train(rm, BTWorld(seed=7), rounds=3, pairs_per_round=24)
        return rm.rewards(torch.ones(2, D)), stats

    a, stats_a = run(0)
    b, stats_b = run(0)
    c, _ = run(1)
    assert torch.equal(a, b) and stats_a == stats_b
    assert not torch.allclose(a, c)


def test_state_dict_round_trip_resumes_bit_for_bit():
    world = BTWorld(seed=11)
    rm = EpistemicRewardModel(D, num_heads=5, batch_size=16, replay_capacity=50, seed=4)
    train(rm, world, rounds=4, pairs_per_round=20)  # buffer wraps around: 80 pairs into 50 slots
    blob = io.BytesIO()
    torch.save(rm.state_dict(), blob)
    blob.seek(0)
    resumed = EpistemicRewardModel(D, num_heads=5, batch_size=16, replay_capacity=50, seed=99)
    resumed.load_state_dict(torch.load(blob, weights_only=True))
    probe = torch.randn(9, D)
    assert torch.equal(rm.rewards(probe), resumed.rewards(probe))
    new_w, new_l = world.labelled_pairs(20)
    for model in (rm, resumed):
        model.add_pairs(new_w, new_l)
    assert rm.update() == resumed.update()
    assert torch.equal(rm.rewards(probe), resumed.rewards(probe))
    assert rm.pairs_seen == resumed.pairs_seen == 100 and rm.steps == resumed.steps


def test_load_state_dict_refuses_a_different_shape():
    state = EpistemicRewardModel(4, num_heads=3, seed=0).state_dict()
    with pytest.raises(ValueError, match="num_heads"):
        EpistemicRewardModel(4, num_heads=2, seed=0).load_state_dict(state)

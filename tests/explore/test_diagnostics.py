"""Prequential diagnostics of the epistemic reward model: hand-computed predictions, calibration and windows.

Reference for the quantities: prequential evaluation (Dawid 1984) — each oracle pair is predicted before
the model trains on it; ECE with equal-width confidence bins (Guo et al. 2017, "On Calibration of Modern
Neural Networks"); Brier score (Brier 1950). Every expected value below is worked out by hand.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastalign.explore.diagnostics import PrequentialRecord, expected_calibration_error
from fastalign.explore.explorer import EpistemicExplorer
from fastalign.explore.reward_model import EpistemicRewardModel, PairPrediction

S1, S2, S3 = 0.7310585786300049, 0.8807970779778823, 0.9525741268224334  # σ(1), σ(2), σ(3)


def test_pair_prediction_from_margins_by_hand():
    # 2 heads × 3 pairs: a clearly preferred, b clearly preferred, and a tie
    pred = PairPrediction.from_margins(np.array([[1.0, -2.0, 0.0], [3.0, -1.0, 0.0]]))
    assert pred.mean_margin.tolist() == [2.0, -1.5, 0.0]
    assert pred.a_correct().tolist() == [1.0, 0.0, 0.5]
    assert pred.prob == pytest.approx([(S1 + S3) / 2, ((1 - S2) + (1 - S1)) / 2, 0.5])
    assert pred.agreement.tolist() == [1.0, 0.0, 0.5]
    assert pred.spread.tolist() == [1.0, 0.5, 0.0]  # population std over the two heads


def test_predict_pairs_reads_every_head_of_the_ensemble():
    rm = EpistemicRewardModel(feature_dim=3, num_heads=4, hidden=8, seed=0)
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    pred = rm.predict_pairs(a, b)
    margins = (rm.rewards(a) - rm.rewards(b)).double().numpy()  # [E, B]
    assert pred.mean_margin == pytest.approx(margins.mean(0))
    assert pred.prob == pytest.approx((1 / (1 + np.exp(-margins))).mean(0))
    assert pred.agreement == pytest.approx((margins > 0).mean(0))


def test_expected_calibration_error_by_hand():
    # confidences 0.92, 0.81, 0.67, 0.5 fall in four different bins of width 0.05; right: 1, 1, 0, ½
    assert expected_calibration_error(np.array([0.92, 0.81, 0.33, 0.5])) == pytest.approx(
        (0.08 + 0.19 + 0.67 + 0.0) / 4)
    # one bin [0.9, 0.95): confidences 0.91 and 0.93, one right and one wrong → |0.5 − 0.92|
    assert expected_calibration_error(np.array([0.91, 0.07])) == pytest.approx(0.42)
    assert expected_calibration_error(np.array([0.91, 0.93])) == pytest.approx(0.08)
    assert math.isnan(expected_calibration_error(np.zeros(0)))


def test_prequential_record_keeps_running_and_recent_figures():
    record = PrequentialRecord(window=3)
    first = record.record(PairPrediction.from_margins(np.array([[1.0, -1.0]])))  # right, wrong
    assert first["preq_accuracy"] == 0.5 and first["preq_round_accuracy"] == 0.5 and not record.window_full
    second = record.record(PairPrediction.from_margins(np.array([[2.0, 0.0]])))  # right, tie
    assert record.pairs == 4 and record.window_full
    assert second["preq_accuracy"] == pytest.approx(2.5 / 4)
    assert second["preq_accuracy_recent"] == pytest.approx((0 + 1 + 0.5) / 3)  # the last three pairs
    assert second["preq_round_accuracy"] == pytest.approx(0.75)
    assert second["preq_brier"] == pytest.approx(((1 - (1 - S1)) ** 2 + (1 - S2) ** 2 + 0.25) / 3)
    assert second["disagreement"] == 0.0  # one head
    quiet = record.record(None)  # a round without informative oracle pairs
    assert quiet["preq_pairs"] == 4 and math.isnan(quiet["preq_round_accuracy"])
    assert quiet["preq_accuracy_recent"] == second["preq_accuracy_recent"]
    copy = PrequentialRecord(window=3)
    copy.load_state_dict(record.state_dict())
    assert copy.recent_accuracy == record.recent_accuracy and copy.pairs == 4
    with pytest.raises(ValueError, match="--erm_window 3"):
        PrequentialRecord(window=5).load_state_dict(record.state_dict())


class Identity:
    dim = 3

    def __call__(self, prompts, responses):
        return torch.tensor([list(r) for r in responses], dtype=torch.float32)


def test_observe_predicts_each_new_pair_before_training_on_it():
    rm = EpistemicRewardModel(feature_dim=3, num_heads=4, hidden=8, seed=0)
    explorer = EpistemicExplorer("ee-ts", Identity(), rm, seed=0, by_tokens=True)
    g = torch.Generator().manual_seed(0)
    explorer._phi = torch.randn(6, 2, 3, generator=g)  # what select() keeps: [B, N, d]
    a_wins = np.array([True, False, True, True, False, True])
    chosen = torch.where(torch.as_tensor(a_wins)[:, None], explorer._phi[:, 0], explorer._phi[:, 1])
    rejected = torch.where(torch.as_tensor(a_wins)[:, None], explorer._phi[:, 1], explorer._phi[:, 0])
    margin = (rm.rewards(chosen) - rm.rewards(rejected)).mean(0)  # the untrained model's view
    want = float(((margin > 0) + 0.5 * (margin == 0)).float().mean())
    out = explorer.observe(np.arange(6), np.tile([0, 1], (6, 1)), a_wins, np.ones(6, dtype=bool))
    assert out["erm/preq_round_accuracy"] == pytest.approx(want)
    assert out["erm/preq_pairs"] == 6 and out["erm/steps"] == 5  # then it trained
    assert "erm/train_accuracy" in out and "erm/accuracy" not in out  # the minibatch figure, renamed
    assert rm.pairs_seen == 6

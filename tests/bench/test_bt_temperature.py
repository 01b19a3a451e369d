"""bench/bt_temperature.py: same-prompt gaps, the Bradley–Terry agreement, and the temperature for a target."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bt_temperature", REPO / "bench" / "bt_temperature.py")
bt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bt)


def test_gaps_are_every_unordered_same_prompt_pair_with_unequal_scores():
    rewards = np.array([[0.0, 0.5, 0.5], [1.0, 3.0, 0.0]])
    assert sorted(bt.same_prompt_gaps(rewards).tolist()) == [0.5, 0.5, 1.0, 2.0, 3.0]  # the tie is dropped


def test_agreement_is_the_mean_draw_probability_and_the_temperature_inverts_it():
    gaps = np.array([0.1, 0.2, 0.4])
    want = np.mean([1 / (1 + math.exp(-g / 0.2)) for g in gaps])  # σ(gap / T) written out
    assert bt.agreement(gaps, 0.2) == pytest.approx(want)
    assert bt.agreement(gaps, 1e-4) == pytest.approx(1.0) and bt.agreement(gaps, 1e4) == pytest.approx(0.5, abs=1e-4)
    t = bt.temperature_for(gaps, 0.75)
    assert bt.agreement(gaps, t) == pytest.approx(0.75, abs=1e-9)
    single = bt.temperature_for(np.array([0.3]), 0.75)  # one gap: σ(0.3 / T) = ¾ ⇒ T = 0.3 / ln 3
    assert single == pytest.approx(0.3 / math.log(3), rel=1e-9)
    with pytest.raises(ValueError, match="agreement in"):
        bt.temperature_for(gaps, 0.4)


def test_bad_arguments_are_refused_before_any_sampling(tmp_path):
    with pytest.raises(SystemExit, match="unknown oracle"):
        bt.main(["--oracles", "vader,lexicon", "--runs_dir", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="agreement in"):
        bt.main(["--target", "1.2", "--runs_dir", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "none").exists()

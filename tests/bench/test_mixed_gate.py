"""bench/mixed_gate.py: its tables on hand-made candidate records, and one tiny replay through the explorer."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("mixed_gate", REPO / "bench" / "mixed_gate.py")
mg = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mg)


def test_tables_count_passes_and_label_accuracy_per_threshold():
    # (queries, agreement, recent accuracy, right, margin/std, P(label))
    records = np.array([[16, 1.0, np.nan, 1, 9.0, 0.95],
                        [16, 1.0, np.nan, 0, 2.0, 0.70],
                        [48, 0.5, 0.70, 1, 0.5, 0.55],
                        [48, 0.9, 0.50, 0, 7.0, 0.92]])
    out = mg.tables(records)
    assert out["candidates"] == 4 and out["label_accuracy_ungated"] == 0.5
    assert out["by_probability"]["0.9"] == {"pass": 0.5, "label_accuracy": 0.5}  # rows 0 and 3
    assert out["by_agreement"]["0.9"] == {"pass": 0.75, "label_accuracy": pytest.approx(1 / 3)}
    assert out["by_accuracy"]["0.6"] == {"pass": 0.25, "label_accuracy": 1.0}  # NaN (window not full) fails
    assert out["by_z"]["6.0"] == {"pass": 0.5, "label_accuracy": 0.5}
    assert out["grid"]["0.9,0.6"] == {"pass": 0.0, "label_accuracy": None}
    assert out["grid"]["0.5,0.0"]["pass"] == 1.0


def test_a_replay_scores_every_candidate_against_the_oracle():
    rows = [{"prompt": f"p{k}", "answers": [f"a{k}{n}" for n in range(3)]} for k in range(8)]
    rewards = np.arange(24, dtype=float).reshape(8, 3)  # later answers are better
    table = {(r["prompt"], a): torch.tensor([float(n), 1.0]) for r in rows for n, a in enumerate(r["answers"])}
    args = mg.parse_args(["--batch_size", "2", "--burn_in", "2", "--window", "2", "--heads", "3"])
    out = mg.replay(rows, rewards, mg.Lookup(table, 2), n=3, seed=0, args=args)
    assert len(out["curve"]) == 4 and [c["queries"] for c in out["curve"]] == [2, 4, 6, 8]
    assert len(out["records"]) == 6  # two candidates per round after the first (burn-in 2)
    assert {r[3] for r in out["records"]} <= {0.0, 1.0}

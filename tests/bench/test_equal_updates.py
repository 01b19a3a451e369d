"""bench/equal_updates.py: passive's win rate where it had made the method's pair-updates, by hand."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("equal_updates", REPO / "bench" / "equal_updates.py")
eu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(eu)

BATCH = 8


def run(folder: Path, seed: int, pairs: list[int], evals: list[float], budget: int, dtype: str = "bf16") -> Path:
    """A finished run: one round per 8 queries training `pairs[k]` pairs in one step, evaluated every 16."""
    out = folder / f"seed{seed}"
    out.mkdir(parents=True)
    config = {"seed": seed, "max_queries": budget, "eval_every": 2, "batch_size": BATCH, "dtype": dtype,
              "engine_dtype": dtype, "model": "m", "oracle": "vader", "preference": "deterministic",
              "bt_temperature": 1.0, "loss": "dpo", "beta": 0.1, "learning_rate": 5e-5, "max_new_tokens": 32,
              "num_eval_prompts": 64, "prompts": "default"}
    (out / "config.json").write_text(json.dumps(config))
    rows = [{"kind": "train", "queries": BATCH * (k + 1), "pairs": p, "learner_steps": k + 1}
            for k, p in enumerate(pairs)]
    rows += [{"kind": "eval", "queries": 16 * k, "win_rate": w} for k, w in enumerate(evals)]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "summary.json").write_text(json.dumps({"queries": BATCH * len(pairs), "pairs_trained": sum(pairs)}))
    return out


def test_control_at_equal_updates_and_ratio_by_hand(tmp_path, capsys):
    method, control = tmp_path / "method", tmp_path / "control"
    # the method makes 8 + 8 + 10 + 10 = 36 pair-updates in 32 queries (model labels in rounds 3 and 4)
    run(method, 0, [8, 8, 10, 10], [0.5, 0.6, 0.7], 32)
    run(method, 1, [8, 8, 10, 10], [0.5, 0.55, 0.65], 32)
    # passive makes 7 a round: 35 after 40 queries, 36 after 40 + 8/7
    run(control, 0, [7] * 6, [0.5, 0.55, 0.6, 0.7], 48)
    run(control, 1, [7] * 6, [0.5, 0.6, 0.62, 0.66], 48)
    run(method, 2, [8, 8, 10, 10], [0.5, 0.9, 0.9], 32)  # no control run of seed 2: left out, and said
    assert eu.main(["--method_runs", str(method), "--control_runs", str(control), "--out", str(tmp_path / "eu")]) == 0
    out = json.loads((tmp_path / "eu.json").read_text())
    q = 40 + 8 / 7
    at_equal = [0.6 + 0.1 * (q - 32) / 16, 0.62 + 0.04 * (q - 32) / 16]
    assert [r["control_queries_at_equal_updates"] for r in out["seeds"]] == pytest.approx([q, q])
    assert [r["method_pair_updates"] for r in out["seeds"]] == pytest.approx([36, 36])
    assert [r["control_at_equal_updates"] for r in out["seeds"]] == pytest.approx(at_equal)
    assert [r["control_at_budget"] for r in out["seeds"]] == pytest.approx([0.6, 0.62])
    diffs = np.array([0.7, 0.65]) - at_equal
    half = 12.706 * diffs.std(ddof=1) / np.sqrt(2)  # Student t, 1 degree of freedom
    s = out["summary"]
    assert s["vs_equal_updates"]["mean"] == pytest.approx(diffs.mean())
    assert s["vs_equal_updates"]["ci95"] == pytest.approx([diffs.mean() - half, diffs.mean() + half], rel=1e-4)
    assert s["vs_budget"]["mean"] == pytest.approx(0.065) and s["vs_budget"]["positive"] == 2
    # target = mean of at_equal = 0.65; the method's mean curve 0.5, 0.575, 0.675 reaches it at 28 of 32 queries
    assert s["ratio_at_equal_updates"]["ratio"] == pytest.approx(28 / 32)
    assert out["setup"]["method_seeds_left_out"] == [2]
    printed = capsys.readouterr().out
    assert "left out: [2]" in printed and "passive at equal updates" in printed


def test_a_control_that_stops_too_early_is_refused(tmp_path):
    run(tmp_path / "method", 0, [8, 8, 10, 10], [0.5, 0.6, 0.7], 32)
    run(tmp_path / "method", 1, [8, 8, 10, 10], [0.5, 0.6, 0.7], 32)
    run(tmp_path / "control", 0, [7] * 4, [0.5, 0.55, 0.6], 32)
    run(tmp_path / "control", 1, [7] * 4, [0.5, 0.55, 0.6], 32)
    with pytest.raises(SystemExit, match="fewer than the method's 36.*longer budget"):
        eu.main(["--method_runs", str(tmp_path / "method"), "--control_runs", str(tmp_path / "control"),
                 "--out", str(tmp_path / "eu")])
    assert not (tmp_path / "eu.json").exists()


def test_a_control_in_another_dtype_is_refused(tmp_path):
    for seed in (0, 1):
        run(tmp_path / "method", seed, [8, 8, 10, 10], [0.5, 0.6, 0.7], 32)
        run(tmp_path / "control", seed, [7] * 6, [0.5, 0.55, 0.6, 0.7], 48, dtype="fp32")
    with pytest.raises(SystemExit, match=r"differ in dtype \(bf16 vs fp32\), engine_dtype"):
        eu.main(["--method_runs", str(tmp_path / "method"), "--control_runs", str(tmp_path / "control"),
                 "--out", str(tmp_path / "eu")])


def test_a_seed_in_two_control_folders_is_refused(tmp_path):
    run(tmp_path / "a", 0, [7] * 6, [0.5, 0.55, 0.6, 0.7], 48)
    run(tmp_path / "b", 0, [7] * 6, [0.5, 0.55, 0.6, 0.7], 48)
    with pytest.raises(SystemExit, match="seed 0 is in both"):
        eu.runs(f"{tmp_path / 'a'},{tmp_path / 'b'}")

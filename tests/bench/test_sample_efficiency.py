"""bench/sample_efficiency.py: its statistics on known curves, and one small sweep end to end."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("sample_efficiency", REPO / "bench" / "sample_efficiency.py")
se = importlib.util.module_from_spec(spec)
spec.loader.exec_module(se)


def test_queries_to_reach_interpolates_between_evaluations():
    grid = np.array([0.0, 16, 32, 48])
    mean = np.array([0.5, 0.6, 0.7, 0.65])
    assert se.queries_to_reach(grid, mean, 0.65) == pytest.approx(24.0)
    assert se.queries_to_reach(grid, mean, 0.5) == 0.0
    assert se.queries_to_reach(grid, mean, 0.71) is None


def test_band_is_a_student_t_interval():
    values = np.array([[0.5, 0.6], [0.5, 0.8], [0.5, 0.7]])
    mean, half = se.band(values)
    assert mean.tolist() == pytest.approx([0.5, 0.7])
    assert half[0] == 0.0 and half[1] == pytest.approx(4.303 * 0.1 / np.sqrt(3))
    assert se.band(values[:1])[1].tolist() == [0.0, 0.0]


def test_summary_puts_runs_on_a_common_grid_and_finds_the_headline():
    args = se.parse_args(["--queries", "32", "--batch_size", "8", "--eval_every", "2", "--thresholds", "0.6"])
    curves = {"passive": [(np.array([0.0, 16, 32]), np.array([0.5, 0.55, 0.6]))],
              "ee-ts-mixed": [(np.array([0.0, 8, 16, 24, 32]), np.array([0.5, 0.6, 0.7, 0.7, 0.8]))]}
    result = se.summarise(args, ["passive", "ee-ts-mixed"], curves)
    assert result["grid"] == [0.0, 16.0, 32.0]
    assert result["headline"]["target"] == pytest.approx(0.6)
    assert result["headline"]["queries"]["ee-ts-mixed"] == pytest.approx(8.0)
    assert result["queries_to_reach"]["passive"]["0.6"] == pytest.approx(32.0)


def test_bad_method_and_bad_option_are_refused_before_any_run(tmp_path):
    with pytest.raises(SystemExit):
        se.parse_args(["--methods", "passive,magic"])
    args = se.parse_args(["--set", "loss=magic", "--runs_dir", str(tmp_path)])
    with pytest.raises(Exception, match="unknown loss"):
        se.run_config(args, "passive", 0)


@pytest.mark.timeout(600)
def test_a_small_sweep_runs_end_to_end_and_is_reused(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
    argv = ["--methods", "passive,offline", "--seeds", "1", "--queries", "8", "--batch_size", "4",
            "--eval_every", "1", "--runs_dir", str(tmp_path / "runs"), "--out", str(tmp_path / "se"),
            "--set", f"model={tiny_model_dir}", "--set", "oracle=callable",
            "--set", "oracle_path=loop_rewards:letter_e_share", "--set", "max_new_tokens=8",
            "--set", "num_eval_prompts=8", "--set", "learning_rate=3e-3", "--set", "engine=hf"]
    assert se.main(argv) == 0
    result = json.loads((tmp_path / "se.json").read_text())
    assert set(result["methods"]) == {"passive", "offline"} and result["grid"] == [0.0, 4.0, 8.0]
    assert result["methods"]["passive"]["mean"][0] == 0.5  # policy == reference before any update
    assert (tmp_path / "se.png").stat().st_size > 1000
    assert "queries to passive's final" in capsys.readouterr().out
    assert result["methods"]["passive"]["training"] == {"rounds": 2.0, "pairs_trained": pytest.approx(
        json.loads((tmp_path / "runs" / "passive" / "seed0" / "summary.json").read_text())["pairs_trained"])}
    log = (tmp_path / "runs" / "passive" / "seed0" / "metrics.jsonl").stat().st_mtime
    assert se.main(argv) == 0  # finished runs are reused, not rerun
    assert (tmp_path / "runs" / "passive" / "seed0" / "metrics.jsonl").stat().st_mtime == log

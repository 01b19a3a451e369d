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


def test_t_quantile_past_the_table_follows_the_t_distribution():
    # published 97.5% quantiles (any t table): df 9, 14, 40, 120; the normal's 1.960 in the limit
    assert se.t_975(9) == 2.262 and se.t_975(14) == 2.145
    assert se.t_975(40) == pytest.approx(2.021, abs=1e-3) and se.t_975(120) == pytest.approx(1.980, abs=1e-3)
    assert se.t_975(10 ** 6) == pytest.approx(1.960, abs=1e-3)
    assert se.band(np.array([[0.0], [1.0]] * 10))[1][0] == pytest.approx(2.093 * np.sqrt(20 / 19 * 0.25) / np.sqrt(20))


def test_summary_puts_runs_on_a_common_grid_and_finds_the_headline():
    args = se.parse_args(["--queries", "32", "--batch_size", "8", "--eval_every", "2", "--thresholds", "0.6"])
    curves = {"passive": {0: (np.array([0.0, 16, 32]), np.array([0.5, 0.55, 0.6]))},
              "ee-ts-mixed": {0: (np.array([0.0, 8, 16, 24, 32]), np.array([0.5, 0.6, 0.7, 0.7, 0.8]))}}
    result = se.summarise(args, ["passive", "ee-ts-mixed"], curves)
    assert result["grid"] == [0.0, 16.0, 32.0]
    assert result["headline"]["target"] == pytest.approx(0.6)
    assert result["headline"]["queries"]["ee-ts-mixed"] == pytest.approx(8.0)
    assert result["queries_to_reach"]["passive"]["0.6"] == pytest.approx(32.0)


GRID = np.array([0.0, 16, 32])
CONTROL = {0: np.array([0.5, 0.55, 0.6]), 1: np.array([0.5, 0.65, 0.7])}
METHOD = {0: np.array([0.5, 0.6, 0.6]), 1: np.array([0.5, 0.8, 0.8])}


def test_reach_ratio_by_hand():
    # control mean 0.5, 0.6, 0.65: its final 0.65 is reached at 32; the method's mean 0.5, 0.7, 0.7 gets
    # there at 0 + (0.65 − 0.5)·16/(0.7 − 0.5) = 12 queries → 12/32
    c, m = np.stack(list(CONTROL.values())), np.stack(list(METHOD.values()))
    assert se.reach_ratio(GRID, m, c) == pytest.approx(12 / 32)
    assert se.reach_ratio(GRID, np.full((2, 3), 0.5), c) == float("inf")  # never gets there
    assert np.isnan(se.reach_ratio(GRID, m, np.full((2, 3), 0.5)))  # the control never moved: no ratio


def test_paired_bootstrap_interval_by_hand():
    # Two seeds: the resamples are (0,0) → ratio 16/32 (method seed 0 reaches 0.6 at 16), (1,1) → 10.67/32
    # (seed 1 reaches 0.7 at 16·0.2/0.3), and (0,1)/(1,0) → the full sample's 12/32. The 95% interval's
    # ends are the two one-seed ratios (each about a quarter of the draws).
    out = se.bootstrap_ratio(GRID, METHOD, CONTROL, resamples=4000, seed=1)
    assert out["ratio"] == pytest.approx(0.375) and out["seeds"] == [0, 1]
    assert out["ci95"] == pytest.approx([(16 * 0.2 / 0.3) / 32, 0.5])
    assert out["share_at_most_half"] == 1.0 and out["share_not_reached"] == 0.0
    flat = se.bootstrap_ratio(GRID, {0: np.full(3, 0.5), 1: np.full(3, 0.5)}, CONTROL, resamples=100)
    assert flat["ci95"] == [float("inf")] * 2 and flat["share_not_reached"] == 1.0
    unpaired = se.bootstrap_ratio(GRID, {**METHOD, 7: np.ones(3)}, CONTROL, resamples=100)
    assert unpaired["seeds"] == [0, 1]  # only the seeds both methods ran


def test_summary_reports_the_worst_seed_and_a_headline_per_control():
    args = se.parse_args(["--queries", "32", "--batch_size", "8", "--eval_every", "2", "--thresholds", "0.6"])
    curves = {"passive": {s: (GRID, v) for s, v in CONTROL.items()},
              "passive-equal-updates": {s: (GRID, v + 0.05 * (GRID > 0)) for s, v in CONTROL.items()},
              "ee-ts": {0: (GRID, np.array([0.5, 0.7, 0.6])), 1: (GRID, np.array([0.5, 0.45, 0.4]))}}
    result = se.summarise(args, list(curves), curves)
    ee = result["methods"]["ee-ts"]
    assert (ee["worst_final"], ee["worst_seed"], ee["seeds_below_reference"]) == (0.4, 1, [1])
    assert set(result["headlines"]) == {"passive", "passive-equal-updates"}
    assert result["headline"] is result["headlines"]["passive"]
    assert result["headlines"]["passive-equal-updates"]["target"] == pytest.approx(0.7)
    assert result["headlines"]["passive"]["queries_per_seed"]["ee-ts"] == {"0": pytest.approx(16 * 0.15 / 0.2),
                                                                          "1": None}
    assert "ee-ts" in result["headlines"]["passive"]["ratio"] and "passive" not in result["headlines"]["passive"]["ratio"]
    text = se.table(result, {m: 2 for m in curves})
    assert "ratio to passive [95% CI]" in text and "40.0 (seed 1)" in text


def test_equal_updates_picks_the_control_that_trains_most_nearly_as_much():
    args = se.parse_args(["--queries", "32", "--batch_size", "8", "--eval_every", "2"])
    curves = {"passive": {s: (GRID, v) for s, v in CONTROL.items()},
              "passive-equal-updates": {s: (GRID, v + 0.05 * (GRID > 0)) for s, v in CONTROL.items()},
              "gated": {s: (GRID, v) for s, v in METHOD.items()}, "ungated": {s: (GRID, v) for s, v in METHOD.items()}}
    result = se.summarise(args, list(curves), curves)
    per_query = {"passive": 0.9, "passive-equal-updates": 1.9, "gated": 1.0, "ungated": 1.6}
    for m, q in per_query.items():
        result["methods"][m]["training"] = {"rounds": 4.0, "updates": 4.0, "pairs_trained": 30.0,
                                            "pair_updates_per_query": q}
    matched = se.equal_updates(result)
    assert set(matched) == {"gated", "ungated"}  # the controls are not matched against each other
    # |log(1.0/0.9)| = 0.105 < |log(1.0/1.9)| = 0.642; |log(1.6/0.9)| = 0.575 > |log(1.6/1.9)| = 0.172
    assert (matched["gated"]["control"], matched["ungated"]["control"]) == ("passive", "passive-equal-updates")
    assert matched["gated"]["training_ratio"] == pytest.approx(1.0 / 0.9)
    assert matched["ungated"]["ratio"] == result["headlines"]["passive-equal-updates"]["ratio"]["ungated"]
    result["equal_updates"] = matched
    assert "passive-equal-updates (0.84×)" in se.table(result, {m: 2 for m in curves})


def finished_run(tmp_path, saved: dict) -> None:
    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / "config.json").write_text(json.dumps(saved))


def test_runs_saved_before_an_option_existed_are_reused_only_where_it_changes_nothing(tmp_path):
    args = se.parse_args(["--runs_dir", str(tmp_path)])
    for method, reused in (("passive", True), ("ee-ts", False), ("ee-ts-mixed", False)):
        cfg = se.run_config(args, method, 0)
        saved = {k: v for k, v in cfg.to_dict().items() if k not in se.LEGACY}  # as an older checkout wrote it
        finished_run(Path(cfg.output_dir).mkdir(parents=True) or Path(cfg.output_dir), saved)
        assert se.finished(cfg) is reused, method  # per-prompt draws and no gate then; batch draws and a gate now
    old_style = se.run_config(se.parse_args(["--runs_dir", str(tmp_path), "--set", "head_draws=prompt"]), "ee-ts", 0)
    assert se.finished(old_style)


def test_equal_updates_control_is_refused_while_the_learner_ignores_updates_per_round(tmp_path):
    args = se.parse_args(["--runs_dir", str(tmp_path), "--methods", "passive-equal-updates", "--equal_updates", "2"])
    cfg = se.run_config(args, "passive-equal-updates", 0)
    assert cfg.updates_per_round == 2
    out = Path(cfg.output_dir)
    out.mkdir(parents=True)
    (out / "summary.json").write_text(json.dumps({"rounds": 20, "pairs_trained": 150, "queries": 160}))
    rows = [{"kind": "train", "queries": 8 * (r + 1), "learner_steps": r + 1} for r in range(20)]
    (out / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(SystemExit, match="does not apply updates_per_round"):
        se.training_done(cfg)
    rows = [{**r, "learner_steps": 2 * (k + 1)} for k, r in enumerate(rows)]
    (out / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert se.training_done(cfg) == {"rounds": 20.0, "updates": 40.0, "pairs_trained": 150.0,
                                     "pair_updates_per_query": pytest.approx(150 * 2 / 160)}


def test_reward_model_record_splits_prequential_accuracy_at_half_the_budget(tmp_path):
    args = se.parse_args(["--runs_dir", str(tmp_path), "--methods", "ee-ts-mixed", "--queries", "32"])
    cfg = se.run_config(args, "ee-ts-mixed", 0)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True)
    # cumulative prequential pairs / accuracy as the loop logs them; the third round also trained 4 model labels
    logged = [(8, 8, 0.5, 0, 0.0), (16, 16, 0.75, 0, 0.0), (20, 20, 0.7, 4, 1.0), (28, 28, 0.5, 0, 0.0)]
    rows = [{"kind": "eval", "queries": 0, "win_rate": 0.5}]
    rows += [{"kind": "train", "queries": q, "erm/preq_pairs": n, "erm/preq_accuracy": a, "model_labelled": m,
              "mixed/gate_open": g} for q, n, a, m, g in logged]
    (out / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    record = se.reward_model_done(cfg)
    # 12 of the first 16 pairs right (by query 16 = half of 32), 14 of 28 in all, so 2 of the last 12
    assert record == {"preq_pairs": 28.0, "preq_accuracy": pytest.approx(0.5),
                      "preq_accuracy_first_half": pytest.approx(12 / 16),
                      "preq_accuracy_second_half": pytest.approx(2 / 12), "model_labelled": 4.0,
                      "gate_open_rounds": 1.0}
    over = se.reward_model_over_seeds([cfg])
    assert over["per_seed"] == {"0": record} and over["range"]["model_labelled"] == [4.0, 4.0]
    assert se.reward_model_cell(over) == "0.50–0.50 / 4–4"
    passive = se.run_config(args, "passive", 0)  # no reward model: no record
    Path(passive.output_dir).mkdir(parents=True)
    (Path(passive.output_dir) / "metrics.jsonl").write_text(json.dumps({"kind": "train", "queries": 8}) + "\n")
    assert se.reward_model_done(passive) is None and se.reward_model_over_seeds([passive]) is None
    assert se.reward_model_cell(None) == "—"


def test_answer_style_counts_openings_preambles_and_repeated_phrases():
    texts = ["I’m so thrilled to help! Welcome.",            # effusive (curly apostrophe)
             "  \"Welcome to a wonderful place!",           # effusive after quotes
             "Here's a possible message: hello there.",     # preamble
             "Here is the plan. I am a teacher. I am a teacher.",  # preamble and a repeated 4-gram
             "Hereford cattle graze. I'm glad to be here.",  # neither: not an opening, not "here is"
             "The kettle is sleek, the kettle is sleek"]     # "the kettle is sleek," ≠ "sleek": no repeat
    style = se.answer_style(texts)
    assert style == {"effusive_opening": pytest.approx(2 / 6), "preamble": pytest.approx(2 / 6),
                     "repeated_4gram": pytest.approx(1 / 6)}
    assert se.answer_style(["the kettle is sleek the kettle is sleek"])["repeated_4gram"] == 1.0
    assert se.style_cell(style) == "33.3 / 33.3 / 16.7"


def test_variants_add_methods_with_their_own_options():
    args = se.parse_args(["--variant", "ee-ts-n8=ee-ts:samples_per_prompt=8,head_draws=prompt",
                          "--methods", "passive,ee-ts-n8"])
    cfg = se.run_config(args, "ee-ts-n8", 0)
    assert (cfg.explore, cfg.samples_per_prompt, cfg.head_draws) == ("ee-ts", 8, "prompt")
    with pytest.raises(SystemExit):
        se.parse_args(["--variant", "x=magic:samples_per_prompt=8"])


def test_a_variant_may_repeat_a_method_only_with_its_options():
    """`bai-ts-mixed` was a variant before it was a method: the old command still runs the same runs."""
    args = se.parse_args(["--variant", "bai-ts-mixed=ee-ts-mixed:explore=bai-ts", "--methods", "passive,bai-ts-mixed"])
    assert args.method_options["bai-ts-mixed"] == se.METHODS["bai-ts-mixed"]
    cfg = se.run_config(args, "bai-ts-mixed", 0)
    assert (cfg.explore, cfg.samples_per_prompt, cfg.mixed_share, cfg.mixed_burn_in) == ("bai-ts", 4, 0.5, 16)
    with pytest.raises(SystemExit):
        se.parse_args(["--variant", "bai-ts-mixed=ee-ts-mixed:explore=ee-ts"])


def test_bad_method_and_bad_option_are_refused_before_any_run(tmp_path):
    with pytest.raises(SystemExit):
        se.parse_args(["--methods", "passive,magic"])
    args = se.parse_args(["--set", "loss=magic", "--runs_dir", str(tmp_path)])
    with pytest.raises(Exception, match="unknown loss"):
        se.run_config(args, "passive", 0)



def test_seeds_are_a_count_or_ranges_that_extend_a_sweep():
    assert se.parse_args([]).seeds == [0, 1, 2, 3, 4]
    assert se.parse_args(["--seeds", "3"]).seeds == [0, 1, 2]
    assert se.parse_args(["--seeds", "5-9"]).seeds == [5, 6, 7, 8, 9]
    assert se.parse_args(["--seeds", "7,0,2-3,2"]).seeds == [0, 2, 3, 7]
    for bad in ("0", "9-5", "a", "1-", "-3"):
        with pytest.raises(SystemExit):
            se.parse_args(["--seeds", bad])


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
    pairs = json.loads((tmp_path / "runs" / "passive" / "seed0" / "summary.json").read_text())["pairs_trained"]
    assert result["methods"]["passive"]["training"] == {"rounds": 2.0, "updates": 2.0, "pairs_trained": pairs,
                                                       "pair_updates_per_query": pytest.approx(pairs / 8)}
    setup = result["setup"]
    assert setup["seeds"] == {"passive": [0], "offline": [0]} and setup["oracle"] == "callable"
    assert setup["dtype"] in (["fp32"], ["bf16"]) and "sample_efficiency" in setup["command"] and setup["cpu"]
    assert result["methods"]["passive"]["worst_seed"] == 0 and "ratio" in result["headline"]
    rows = [json.loads(line) for line in (tmp_path / "runs" / "passive" / "seed0" / "eval_responses.jsonl").open()]
    style = result["methods"]["passive"]["style"]
    assert style["per_seed"]["0"] == se.answer_style([r["policy"] for r in rows]) == style["mean"]
    assert result["reference_style"] == se.answer_style([r["reference"] for r in rows]) and len(rows) == 8
    log = (tmp_path / "runs" / "passive" / "seed0" / "metrics.jsonl").stat().st_mtime
    wall = setup["run_wall_s"]
    assert set(wall) == {str(tmp_path / "runs" / m / "seed0") for m in ("passive", "offline")}
    assert se.main(argv) == 0  # finished runs are reused, not rerun
    assert (tmp_path / "runs" / "passive" / "seed0" / "metrics.jsonl").stat().st_mtime == log
    # a summary of reused runs keeps the wall times the sweep measured when it ran them
    assert json.loads((tmp_path / "se.json").read_text())["setup"]["run_wall_s"] == wall
    assert result["methods"]["passive"]["reward_model"] is None  # passive has no reward model
    # ... and the date they were summarised on (a run made today dates it today)
    (tmp_path / "se.json").write_text(json.dumps({**result, "setup": {**setup, "date": "2026-01-02"}}))
    assert se.main(argv) == 0
    assert json.loads((tmp_path / "se.json").read_text())["setup"]["date"] == "2026-01-02"
    # a seed list summarises the listed seeds that finished (seed 3 never ran)
    assert se.main([*argv, "--seeds", "0,3", "--summarise_only"]) == 0
    assert json.loads((tmp_path / "se.json").read_text())["setup"]["seeds"] == {"passive": [0], "offline": [0]}

"""A method against passive given as many policy updates: is a mixed-preference gain more than more training?

Mixed preference learning trains on model-labelled pairs besides the oracle's, so within one query budget
it makes more pair-updates than passive online DPO (BAI-TS with mixed labels: 1.09 per query against
passive's 0.94 on VADER). bench/sample_efficiency.py's `passive-equal-updates` control repeats every
round's update a whole number of times, too coarse for a 1.16× difference. This script reads, per seed,
how many pair-updates the method made in its budget (Σ over rounds of pairs × learner steps), and where
passive's run of the same seed, continued to a longer budget, had made as many: passive's win rate there
is the control at equal updates. That control trains on fresh oracle labels only and has asked more
queries than the method, so it errs in passive's favour: a gain over it is not explained by more training,
while no gain over it does not show that the method's gain is more training. Runs are deterministic, so a
seed's longer passive run is its shorter one continued.

Per seed: the method's final win rate, passive's at the method's budget and at equal updates (queries
there), and paired differences with 95% Student-t intervals. Pooled: the equal-updates ratio, the queries
the method's mean curve needs to reach the equal-updates control's mean win rate over the method's budget
(where a passive run that made the method's updates within that budget would end), with the paired
bootstrap of bench/sample_efficiency.py over seeds (∞ = not reached within the budget). What it does not
show: a control that spends exactly the method's queries (that needs fractional updates per round).
Written: OUT.json.

    python bench/equal_updates.py --method_runs runs/sample_efficiency_sea_vader_bf16/bai-ts-mixed \\
        --control_runs runs/sample_efficiency_q320_vader/passive,runs/sample_efficiency_q224_vader/passive \\
        --out bench/results/equal_updates_bai_vader_bf16
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("sample_efficiency", REPO / "bench" / "sample_efficiency.py")
se = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(se)  # puts the checkout on sys.path

from fastalign.atomic import write_json_atomic  # noqa: E402
from fastalign.machine import cpu_model  # noqa: E402
from fastalign.metrics import read_metrics  # noqa: E402

# what the method's and the control's runs of a seed must share (their config.json) to be one comparison
SHARED = ("model", "oracle", "preference", "bt_temperature", "loss", "beta", "learning_rate", "batch_size",
          "max_new_tokens", "num_eval_prompts", "eval_every", "dtype", "engine_dtype", "prompts")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method_runs", required=True,
                    help="comma-separated folders of the method's finished runs (seedN/ inside each)")
    ap.add_argument("--control_runs", required=True,
                    help="comma-separated folders of passive's finished runs of the same seeds to a longer budget")
    ap.add_argument("--out", type=Path, required=True, help="output path without suffix (OUT.json is written)")
    return ap.parse_args(argv)


def runs(folders: str) -> dict[int, Path]:
    """seed → finished run folder; a seed in two folders is refused (one run per seed)."""
    out: dict[int, Path] = {}
    for folder in (Path(f) for f in folders.split(",") if f):
        if not folder.is_dir():
            raise SystemExit(f"{folder} is not a folder of runs: pass the method's folder, e.g. runs/…/bai-ts-mixed")
        for run in sorted(folder.glob("seed*")):
            if not (run / "summary.json").is_file():
                continue  # unfinished
            seed = int(run.name.removeprefix("seed"))
            if seed in out:
                raise SystemExit(f"seed {seed} is in both {out[seed]} and {run}: pass one run per seed")
            out[seed] = run
    return out


def check_same_setting(method: Path, control: Path) -> None:
    a, b = (json.loads((run / "config.json").read_text()) for run in (method, control))
    differ = [k for k in SHARED if a.get(k) != b.get(k)]
    if differ:
        raise SystemExit(f"{method} and {control} differ in {', '.join(f'{k} ({a.get(k)} vs {b.get(k)})' for k in differ)}: "
                         "the control must be the same task, learner and dtype")
    if a["seed"] != b["seed"]:
        raise SystemExit(f"{method} is seed {a['seed']} and {control} seed {b['seed']}")


def pair_updates(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """Queries and cumulative pair-updates (pairs × learner steps of each round) after each round, from 0."""
    rows = read_metrics(run / "metrics.jsonl", kind="train")
    queries, total, steps_before, done = [0.0], [0.0], 0.0, 0.0
    for r in rows:
        steps = float(r.get("learner_steps", steps_before + 1))  # runs before it was logged: one per round
        done += float(r["pairs"]) * (steps - steps_before)
        steps_before = steps
        queries.append(float(r["queries"]))
        total.append(done)
    return np.array(queries), np.array(total)


def at_equal_updates(method: Path, control: Path, m_eval: tuple[np.ndarray, np.ndarray]) -> dict:
    """The method's final and pair-updates at its budget, and the control's win rate where it had made as
    many. Read at the budget, between the rounds either side, as the sweeps read their curves: runs made
    before the budget was a hard cap end up to one round past it. `m_eval`: the method's evaluations."""
    config = json.loads((method / "config.json").read_text())
    budget = float(config["max_queries"])
    mq, mu = pair_updates(method)
    cq, cu = pair_updates(control)
    updates = float(np.interp(budget, mq, mu))
    if cu[-1] < updates:
        raise SystemExit(f"{control} made {cu[-1]:.0f} pair-updates in {cq[-1]:.0f} queries, fewer than the method's "
                         f"{updates:.0f} ({method}): run passive to a longer budget (--queries)")
    q_equal = se.queries_to_reach(cq, cu, updates)  # the first query count with as many updates
    c_eval = se.curve(control)
    return {"seed": int(config["seed"]), "method_queries": budget, "method_pair_updates": updates,
            "method_final": float(np.interp(budget, *m_eval)), "control_at_budget": float(np.interp(budget, *c_eval)),
            "control_queries_at_equal_updates": q_equal, "control_at_equal_updates": float(np.interp(q_equal, *c_eval))}


def difference(values: np.ndarray) -> dict:
    mean, half = se.band(values[:, None])
    return {"mean": float(mean[0]), "ci95": [float(mean[0] - half[0]), float(mean[0] + half[0])],
            "positive": int((values > 0).sum())}


def equal_updates_ratio(method_curves: np.ndarray, grid: np.ndarray, targets: np.ndarray) -> float:
    """Queries the method's mean curve needs to reach the mean equal-updates win rate, over its budget."""
    q_method = se.queries_to_reach(grid, method_curves.mean(axis=0), float(targets.mean()))
    return float("inf") if q_method is None else q_method / float(grid[-1])


def pooled_ratio(rows: list[dict], evals: dict[int, tuple[np.ndarray, np.ndarray]], step: float) -> dict:
    """The equal-updates ratio on all seeds and its paired bootstrap 95% interval (as sample_efficiency.py's),
    on a grid `step` queries apart (the runs' evaluation spacing), reading curves linearly between evaluations."""
    budget = min(r["method_queries"] for r in rows)
    grid = np.append(np.arange(0, budget, step), budget)
    m = np.stack([np.interp(grid, *evals[r["seed"]]) for r in rows])
    t = np.array([r["control_at_equal_updates"] for r in rows])
    draws = np.random.default_rng(se.BOOTSTRAP_SEED).integers(0, len(rows), size=(se.BOOTSTRAP_RESAMPLES, len(rows)))
    ratios = np.array([equal_updates_ratio(m[d], grid, t[d]) for d in draws])
    return {"ratio": equal_updates_ratio(m, grid, t), "ci95": se.percentile_interval(ratios),
            "resamples": se.BOOTSTRAP_RESAMPLES,
            "share_not_reached": float(np.isinf(ratios).mean()), "share_at_most_half": float((ratios <= 0.5).mean())}


def table(result: dict) -> str:
    lines = ["| seed | method final % | passive at its budget % | passive at equal updates % (queries) | "
             "pair-updates |", "|---|---|---|---|---|"]
    for r in result["seeds"]:
        lines.append(f"| {r['seed']} | {100 * r['method_final']:.1f} | {100 * r['control_at_budget']:.1f} | "
                     f"{100 * r['control_at_equal_updates']:.1f} ({r['control_queries_at_equal_updates']:.0f}) | "
                     f"{r['method_pair_updates']:.0f} |")
    pct = lambda d: f"{100 * d['mean']:+.1f} [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}]"  # noqa: E731
    s, ratio = result["summary"], result["summary"]["ratio_at_equal_updates"]
    hi = "∞" if np.isinf(ratio["ci95"][1]) else f"{ratio['ci95'][1]:.2f}"
    lines += ["", f"{len(result['seeds'])} seeds: method − passive at its budget {pct(s['vs_budget'])} points "
              f"({s['vs_budget']['positive']} ahead); − passive at equal updates {pct(s['vs_equal_updates'])} "
              f"({s['vs_equal_updates']['positive']} ahead), passive there after {s['control_queries_mean']:.0f} "
              f"queries on average; ratio at equal updates {ratio['ratio']:.2f} [{ratio['ci95'][0]:.2f}, {hi}]"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    method, control = runs(args.method_runs), runs(args.control_runs)
    seeds = sorted(set(method) & set(control))
    if len(seeds) < 2:
        raise SystemExit(f"need ≥ 2 seeds with both a method run and a control run; method has {sorted(method)}, "
                         f"control {sorted(control)}")
    left_out = sorted(set(method) - set(control))
    if left_out:
        print(f"method seeds without a control run, left out: {left_out}")
    for s in seeds:
        check_same_setting(method[s], control[s])
    evals = {s: se.curve(method[s]) for s in seeds}
    rows = [at_equal_updates(method[s], control[s], evals[s]) for s in seeds]
    config = json.loads((method[seeds[0]] / "config.json").read_text())
    final = np.array([r["method_final"] for r in rows])
    summary = {"vs_budget": difference(final - np.array([r["control_at_budget"] for r in rows])),
               "vs_equal_updates": difference(final - np.array([r["control_at_equal_updates"] for r in rows])),
               "control_queries_mean": float(np.mean([r["control_queries_at_equal_updates"] for r in rows])),
               "ratio_at_equal_updates": pooled_ratio(rows, evals, config["eval_every"] * config["batch_size"])}
    argv = sys.argv[1:] if argv is None else list(argv)
    result = {"seeds": rows, "summary": summary,
              "setup": {"command": " ".join(shlex.quote(x) for x in ["python", "bench/equal_updates.py", *argv]),
                        "cpu": cpu_model(), "method_runs": args.method_runs, "control_runs": args.control_runs,
                        "method_seeds_left_out": left_out,
                        **{k: config.get(k) for k in SHARED}, "date": time.strftime("%Y-%m-%d")}}
    print(table(result))
    print(f"wrote {write_json_atomic(args.out.with_suffix('.json'), result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Sample efficiency: oracle win rate against oracle queries, per method, over several seeds.

Each (method, seed) is one ordinary `fastalign train` run (a subprocess, so runs cannot leak state into
each other) with the same model, prompts, oracle, learner settings and query budget; only the method's
own options differ (see METHODS). The curves are the runs' evaluations — win rate of the policy's greedy
responses against the reference's on the held-out prompts, judged by the oracle — interpolated onto a
common grid of query counts, then averaged over seeds with a 95% Student-t band.

Printed and written (JSON + PNG): the curves, the queries each method needs to reach fixed win rates,
and the headline — the queries each method needs to reach passive online DPO's final win rate, as a
ratio to passive's own with a paired-by-seed bootstrap 95% interval (seeds resampled with replacement,
the same draw for both methods). The same against `passive-equal-updates`, a passive control that
makes `--equal_updates` policy updates per round (as many pair-updates per query as mixed preference
learning's extra pairs give it; needs the learner's `updates_per_round`). Which control a method is
compared with at equal updates is measured: the one whose pair-updates per query are nearest its own
(a gate that stays shut leaves plain passive the match). Per method also the worst seed's final and the
seeds that end below the reference policy (< 50%), how the final policy answers (`answer_style`: shares
of effusive openings, "Here's …" preambles and repeated phrases — a win rate bought with an oracle's
quirks shows there) and, where it has a reward model, how well that model predicted the oracle and how
many pairs it labelled itself (`reward_model_done`). The JSON records the CPU model, dtype, seeds, oracle
and the exact command. Finished runs are reused when their config matches (a long
sweep can be stopped and restarted); pass `--fresh` to rerun them.

    python bench/sample_efficiency.py                       # embedded task, default budget
    python bench/sample_efficiency.py --queries 160 --seeds 5 --methods passive,ee-ts
    python bench/sample_efficiency.py --queries 160 --seeds 5-9 --methods passive,ee-ts  # five more seeds
    python bench/sample_efficiency.py --set loss=ipo --set beta=0.5   # any RunConfig option
    python bench/sample_efficiency.py --variant ee-ts-mixed-n8=ee-ts-mixed:samples_per_prompt=8
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fastalign.algorithms import algorithm_class  # noqa: E402
from fastalign.atomic import write_json_atomic  # noqa: E402
from fastalign.config import RunConfig  # noqa: E402
from fastalign.explore.selection import THOMPSON_RULES  # noqa: E402
from fastalign.machine import cpu_model  # noqa: E402
from fastalign.metrics import read_metrics  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "sample_efficiency"
DEFAULT_RUNS = REPO / "runs" / "sample_efficiency"

# method → RunConfig overrides; "{sea_n}" is replaced by --sea_samples
MIXED = {"mixed_share": 0.5, "mixed_burn_in": 16}  # SEA's mixed preference learning, one setting for every rule
METHODS: dict[str, dict] = {
    "passive": {},  # online DPO: two random on-policy responses per prompt
    "ee-ts": {"explore": "ee-ts", "samples_per_prompt": "{sea_n}"},
    "bai-ts": {"explore": "bai-ts", "samples_per_prompt": "{sea_n}"},
    "best-worst": {"explore": "best-worst", "samples_per_prompt": "{sea_n}"},
    "ee-ts-mixed": {"explore": "ee-ts", "samples_per_prompt": "{sea_n}", **MIXED},
    # the SEA configuration to use (docs/benchmarks.md, "BAI-TS at twenty seeds")
    "bai-ts-mixed": {"explore": "bai-ts", "samples_per_prompt": "{sea_n}", **MIXED},
    # oat's mixed preference learning: no gate (every candidate the model labels is trained on)
    "ee-ts-mixed-ungated": {"explore": "ee-ts", "samples_per_prompt": "{sea_n}", **MIXED,
                            "mixed_min_confidence": 0.0, "mixed_min_accuracy": 0.0},
    "apl": {"explore": "apl", "samples_per_prompt": "{sea_n}"},  # Muldrew et al. 2024, a baseline of the SEA paper
    # passive online DPO with more policy updates per round: the equal-updates control of mixed preference
    "passive-equal-updates": {"updates_per_round": "{equal_updates}"},
    "offline": {"algorithm": "offline-dpo"},  # DPO on pairs sampled from the frozen reference
    # the other online algorithms (docs/algorithms.md); SAIL-PP asks about the unrouted share only, SAIL-DP
    # asks nothing (no curve against queries)
    "selm": {"algorithm": "selm"},
    "xpo": {"algorithm": "xpo"},
    "bpo": {"algorithm": "bpo"},
    "sail-pr": {"algorithm": "sail-pr"},
    "sail-pp": {"algorithm": "sail-pp"},
}
DEFAULT_METHODS = "passive,bai-ts-mixed,ee-ts-mixed,ee-ts,bai-ts,best-worst,offline"  # `--methods all` adds the algorithms
CONTROLS = ("passive", "passive-equal-updates")  # the methods every other one is compared with (a headline each)
# A run saved before an option existed ran as this value of it (not necessarily today's default); a finished
# run is reused only if today's config asks for that value.
LEGACY = {"head_draws": "prompt", "mixed_min_confidence": 0.0, "mixed_min_accuracy": 0.0}
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 20_240_615
# options that schedule or operate a run without shaping its curve (dtype "auto" is saved resolved)
NOT_SHAPING = {"dtype", "engine_dtype", "threads", "output_dir", "progress", "tensorboard", "save_final",
               "checkpoint_every", "keep_checkpoints", "resume", "max_nonfinite_steps", "oracle_retries",
               "oracle_timeout", "oracle_backoff"}
# How a policy wins, next to how much: the drifts the sweeps' runs showed (docs/benchmarks.md). On the
# final evaluation's greedy answers: an effusive opening (VADER's exploit), a "Here's …" preamble (the
# rubric's low seeds), a word 4-gram said twice (lower-cased, whitespace-separated words).
EFFUSIVE_OPENING = re.compile(r"^\W*(i'm (so )?(thrilled|glad|delighted|excited)|welcome)", re.IGNORECASE)
PREAMBLE = re.compile(r"^\W*here(’s|'s| is)\b", re.IGNORECASE)
REPEAT_NGRAM = 4
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)  # Student t's 97.5% quantile at 1..30 degrees of freedom


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated, from {', '.join(METHODS)}; or all")
    ap.add_argument("--seeds", type=seed_list, default="5", metavar="S | A-B,C",
                    help="seeds of every method, paired by seed: a count S (seeds 0..S-1) or ranges and "
                         "single seeds (5-9, or 0,2,5-9) to extend a sweep")
    ap.add_argument("--queries", type=int, default=64, help="oracle-query budget of every run")
    ap.add_argument("--batch_size", type=int, default=8, help="prompts (= queries) per round")
    ap.add_argument("--eval_every", type=int, default=2, help="rounds between evaluations")
    ap.add_argument("--sea_samples", type=int, default=4, help="responses per prompt for the SEA methods")
    ap.add_argument("--equal_updates", type=int, default=2,
                    help="policy updates per round of passive-equal-updates (match the mixed method's pairs per query)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=BASE:KEY=VALUE,...",
                    help="an extra method: a listed one with its own options "
                         "(e.g. ee-ts-n8=ee-ts:samples_per_prompt=8)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="any RunConfig option for every run (e.g. model=DIR, oracle=callable)")
    ap.add_argument("--thresholds", default="0.55,0.6,0.65,0.7", help="win rates for the queries-to-reach table")
    ap.add_argument("--runs_dir", type=Path, default=DEFAULT_RUNS)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="writes OUT.json and OUT.png")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs at once (on 2 cores: --jobs 2 --set threads=1 keeps both busy without contention)")
    ap.add_argument("--fresh", action="store_true", help="rerun runs that already finished")
    ap.add_argument("--summarise_only", action="store_true",
                    help="run nothing: summarise the runs that have finished (seeds may differ per method)")
    args = ap.parse_args(argv)
    args.method_options = {**METHODS, **variants(args.variant, ap)}
    if args.methods == "all":
        args.methods = ",".join(args.method_options)
    unknown = sorted(set(args.methods.split(",")) - set(args.method_options))
    if unknown:
        ap.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(args.method_options)}")
    if args.queries < args.batch_size or args.equal_updates < 1:
        ap.error("need --queries ≥ --batch_size and --equal_updates ≥ 1")
    return args


def seed_list(text: str) -> list[int]:
    """'5' → seeds 0..4; '5-9' or '0,2,5-9' → those seeds (sorted, each once)."""
    if text.strip().isdigit():
        if int(text) < 1:
            raise argparse.ArgumentTypeError("a seed count must be ≥ 1")
        return list(range(int(text)))
    seeds = set()
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()) or (sep and int(hi) < int(lo)):
            raise argparse.ArgumentTypeError(f"{part!r} is not a seed or a range A-B with A ≤ B (e.g. 5-9)")
        seeds.update(range(int(lo), int(hi if sep else lo) + 1))
    return sorted(seeds)


def variants(specs: list[str], ap: argparse.ArgumentParser) -> dict[str, dict]:
    """--variant NAME=BASE:KEY=VALUE,... → {NAME: BASE's options updated with the given ones}.

    NAME may repeat a method only with that method's own options, so a command written before the
    variant became a method still runs (and reuses the same runs)."""
    out: dict[str, dict] = {}
    for spec in specs:
        name, _, rest = spec.partition("=")
        base, _, options = rest.partition(":")
        if not name or base not in METHODS:
            ap.error(f"--variant {spec!r}: expected NEW_NAME=BASE:KEY=VALUE,... with BASE one of {', '.join(METHODS)}")
        out[name] = {**METHODS[base], **overrides([o for o in options.split(",") if o])}
        if name in METHODS and out[name] != METHODS[name]:
            ap.error(f"--variant {spec!r}: {name!r} is a method with other options ({METHODS[name]}); "
                     "give the variant a new name")
    return out


def overrides(pairs: list[str]) -> dict:
    out = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def run_config(args: argparse.Namespace, method: str, seed: int) -> RunConfig:
    """The full config of one run; validated here so a bad --set fails before any run starts."""
    fill = {"{sea_n}": args.sea_samples, "{equal_updates}": args.equal_updates}
    method_opts = {k: fill.get(v, v) if isinstance(v, str) else v for k, v in args.method_options[method].items()}
    data = {
        "output_dir": str(args.runs_dir / method / f"seed{seed}"), "seed": seed,
        "batch_size": args.batch_size, "micro_batch_size": args.batch_size, "max_queries": args.queries,
        "rounds": 10 * args.queries // args.batch_size,  # the query budget stops the run; rounds only bound it
        "eval_every": args.eval_every, "save_final": False, "tensorboard": False, "progress": False,
        **overrides(args.set), **method_opts,
    }
    return RunConfig.from_dict(data, source="bench/sample_efficiency.py").validate()


def finished(cfg: RunConfig) -> bool:
    out = Path(cfg.output_dir)
    if not (out / "summary.json").is_file() or not (out / "config.json").is_file():
        return False
    saved = json.loads((out / "config.json").read_text())
    then = {**RunConfig().to_dict(), **LEGACY}  # an option newer than the run must be at the value it then ran as
    skip = NOT_SHAPING | inert(cfg)
    return all(saved.get(k, then[k]) == v for k, v in cfg.to_dict().items() if k not in skip)


def inert(cfg: RunConfig) -> set[str]:
    """Options that cannot change this run's curve, so a finished run that predates them is still reused."""
    out = set()
    if cfg.explore not in THOMPSON_RULES:
        out.add("head_draws")
    if cfg.mixed_share == 0:
        out |= {"mixed_min_confidence", "mixed_min_accuracy", "mixed_gated_out"}
    if cfg.mixed_min_confidence == 0 and cfg.mixed_min_accuracy == 0:
        out.add("mixed_gated_out")  # nothing is refused
    if cfg.mixed_share == 0 or cfg.mixed_min_accuracy == 0:
        out.add("erm_window")  # then it only sets the window of a logged diagnostic
    if cfg.explore != "apl":
        out.add("apl_pool_factor")
    return out


def run_one(cfg: RunConfig) -> float:
    """Run `fastalign train` on cfg in a subprocess; its output goes to output_dir/bench.log."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").unlink(missing_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # a rerun starts afresh
    config_in = out / "bench_config.json"
    cfg.save(config_in)
    start = time.time()
    with (out / "bench.log").open("w") as log:
        proc = subprocess.run([sys.executable, "-m", "fastalign.train", "--config", str(config_in)],
                              cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}): see {out / 'bench.log'}")
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the curve is in metrics.jsonl; a policy is 1.6 GB
    return time.time() - start


def run_all(todo: list[RunConfig], jobs: int) -> dict[str, float]:
    """Run the configs, `jobs` at a time, in order; wall seconds per run."""
    from concurrent.futures import ThreadPoolExecutor

    def one(k_cfg: tuple[int, RunConfig]) -> tuple[str, float]:
        k, cfg = k_cfg
        print(f"[{k}/{len(todo)}] {cfg.output_dir}", flush=True)
        return cfg.output_dir, run_one(cfg)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return dict(pool.map(one, enumerate(todo, 1)))


def training_done(cfg: RunConfig) -> dict[str, float]:
    """Rounds, policy updates and pairs trained on. Mixed preference learning adds model-labelled pairs and
    rounds within the same query budget, and `updates_per_round` more updates per round, so methods differ
    in training as well as in queries: pair_updates_per_query (each update takes the round's pairs) is the
    figure the equal-updates control matches."""
    out = Path(cfg.output_dir)
    summary = json.loads((out / "summary.json").read_text())
    rounds, pairs = float(summary["rounds"]), float(summary["pairs_trained"])
    train = read_metrics(out / "metrics.jsonl", kind="train")
    # runs before the loop logged learner_steps made one update per round
    steps = float(train[-1].get("learner_steps", rounds)) if train else 0.0
    updates = cfg.updates_per_round or algorithm_class(cfg.algorithm).default_updates  # BPO: 4
    if updates > 1 and steps < rounds * updates - cfg.max_nonfinite_steps:
        raise SystemExit(f"{out}: {updates} updates per round but the learner made {steps:.0f} updates "
                         f"in {rounds:.0f} rounds: this checkout's learner does not apply updates_per_round, so "
                         "passive-equal-updates would be plain passive; rerun it (--fresh) with a learner that does")
    per_round = steps / rounds if rounds else 0.0
    return {"rounds": rounds, "updates": steps, "pairs_trained": pairs,
            "pair_updates_per_query": pairs * per_round / max(float(summary["queries"]), 1.0)}


def reward_model_done(cfg: RunConfig) -> dict[str, float | None] | None:
    """How well the run's reward model predicted the oracle, and how often it labelled pairs itself: its
    prequential accuracy (each new oracle pair predicted before the model trains on it) over the run and
    over each half of the query budget, the model-labelled pairs trained on and the rounds the gate was
    open. None for a run without a reward model (passive)."""
    rows = [r for r in read_metrics(Path(cfg.output_dir) / "metrics.jsonl", kind="train") if "erm/preq_pairs" in r]
    if not rows:
        return None

    def pairs_correct(row: dict | None) -> tuple[float, float]:
        n = float(row["erm/preq_pairs"]) if row else 0.0
        return n, (float(row["erm/preq_accuracy"]) * n if n else 0.0)

    half = (cfg.max_queries or rows[-1]["queries"]) / 2
    n1, c1 = pairs_correct(next((r for r in reversed(rows) if r["queries"] <= half), None))
    n, c = pairs_correct(rows[-1])
    share = lambda correct, pairs: correct / pairs if pairs else None  # noqa: E731
    return {"preq_pairs": n, "preq_accuracy": share(c, n), "preq_accuracy_first_half": share(c1, n1),
            "preq_accuracy_second_half": share(c - c1, n - n1),
            "model_labelled": float(sum(r.get("model_labelled", 0) for r in rows)),
            "gate_open_rounds": float(sum(r.get("mixed/gate_open", 0) for r in rows))}


def reward_model_over_seeds(runs: list[RunConfig]) -> dict | None:
    """reward_model_done per seed, and each figure's range over the seeds; None if no run has a reward model."""
    per_seed = {str(c.seed): rec for c in runs if (rec := reward_model_done(c)) is not None}
    if not per_seed:
        return None
    keys = next(iter(per_seed.values()))
    ranges = {}
    for k in keys:
        values = [v[k] for v in per_seed.values() if v[k] is not None]
        ranges[k] = [min(values), max(values)] if values else None
    return {"per_seed": per_seed, "range": ranges}


def answer_style(texts: list[str]) -> dict[str, float]:
    """Shares of the answers that open effusively, open with a "Here's …" preamble, or repeat a word 4-gram."""
    def repeats(text: str) -> bool:
        w = text.lower().split()
        grams = [tuple(w[i:i + REPEAT_NGRAM]) for i in range(len(w) - REPEAT_NGRAM + 1)]
        return len(grams) != len(set(grams))

    n = max(len(texts), 1)
    return {"effusive_opening": sum(bool(EFFUSIVE_OPENING.match(t.replace("’", "'"))) for t in texts) / n,
            "preamble": sum(bool(PREAMBLE.match(t)) for t in texts) / n,
            "repeated_4gram": sum(map(repeats, texts)) / n}


def final_answers(cfg: RunConfig) -> list[dict] | None:
    """The last evaluation's rows (prompt, reference, policy) of a finished run; None if it wrote none."""
    path = Path(cfg.output_dir) / "eval_responses.jsonl"
    if not path.is_file():
        return None
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def style_over_seeds(runs: list[RunConfig]) -> dict | None:
    """answer_style of each run's final policy, and the mean over the runs (equal-sized evaluations, so the
    pooled share); None if a run has no answers saved."""
    per_seed = {}
    for c in runs:
        rows = final_answers(c)
        if rows is None:
            return None
        per_seed[str(c.seed)] = answer_style([r["policy"] for r in rows])
    keys = next(iter(per_seed.values()))
    return {"mean": {k: float(np.mean([v[k] for v in per_seed.values()])) for k in keys}, "per_seed": per_seed}


def earlier_setup(path: Path, done: dict[str, list[RunConfig]]) -> dict:
    """What an earlier summary at `path` recorded that a summary of the same finished runs keeps: the wall
    seconds of runs that are still finished (measured when they ran, not now) and its date."""
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text()).get("setup", {})
        runs = {c.output_dir for cfgs in done.values() for c in cfgs}
        return {"run_wall_s": {k: v for k, v in old.get("run_wall_s", {}).items() if k in runs},
                "date": old.get("date")}
    except (json.JSONDecodeError, AttributeError):
        return {}


def curve(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """Queries and win rates of the evaluations of the run in folder `run`."""
    rows = read_metrics(run / "metrics.jsonl", kind="eval")
    return np.array([r["queries"] for r in rows], float), np.array([r["win_rate"] for r in rows], float)


def on_grid(queries: np.ndarray, rates: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Win rate at the grid's query counts (linear between evaluations; a run evaluates at its budget)."""
    return np.interp(grid, queries, rates)


def band(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[seeds, points] → mean and 95% Student-t half-width (0 for one seed)."""
    mean = values.mean(axis=0)
    n = values.shape[0]
    if n < 2:
        return mean, np.zeros_like(mean)
    return mean, t_975(n - 1) * values.std(axis=0, ddof=1) / np.sqrt(n)


def t_975(df: int) -> float:
    """Student t's 97.5% quantile: the table to 30 degrees of freedom, then its Cornish–Fisher expansion
    (within 0.001 there; numpy has no t distribution and scipy is not a dependency)."""
    if df <= len(T_975):
        return T_975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def queries_to_reach(grid: np.ndarray, mean: np.ndarray, target: float) -> float | None:
    """First query count where the mean curve reaches target (linear between grid points)."""
    for k in range(len(grid)):
        if mean[k] >= target - 1e-12:
            if k == 0:
                return float(grid[0])
            x0, x1, y0, y1 = grid[k - 1], grid[k], mean[k - 1], mean[k]
            return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0))
    return None


def summarise(args: argparse.Namespace, methods: list[str], curves: dict[str, dict[int, tuple]]) -> dict:
    """curves: method → seed → (queries, win rates) of its evaluations. Means, bands, queries to reach the
    thresholds, per-seed finals, and a headline against each control present (CONTROLS)."""
    grid = np.arange(0, args.queries + 1, args.eval_every * args.batch_size, dtype=float)
    if grid[-1] != args.queries:
        grid = np.append(grid, float(args.queries))
    result = {"grid": grid.tolist(), "methods": {}}
    per_seed = {m: {seed: on_grid(q, r, grid) for seed, (q, r) in sorted(curves[m].items())} for m in methods}
    for m in methods:
        values = np.stack(list(per_seed[m].values()))
        mean, half = band(values)
        finals = dict(zip(per_seed[m], values[:, -1].tolist()))
        worst = min(finals, key=finals.get)
        result["methods"][m] = {"mean": mean.tolist(), "ci95": half.tolist(), "per_seed": values.tolist(),
                                "seeds": list(per_seed[m]), "final": float(mean[-1]),
                                "worst_final": finals[worst], "worst_seed": worst,
                                "seeds_below_reference": [seed for seed, f in finals.items() if f < 0.5]}
    thresholds = [float(t) for t in args.thresholds.split(",")]
    result["queries_to_reach"] = {m: {str(t): queries_to_reach(grid, np.array(v["mean"]), t) for t in thresholds}
                                  for m, v in result["methods"].items()}
    result["headlines"] = {c: headline(grid, per_seed, c, methods) for c in CONTROLS if c in per_seed}
    if "passive" in result["headlines"]:
        result["headline"] = result["headlines"]["passive"]
    return result


def headline(grid: np.ndarray, per_seed: dict[str, dict[int, np.ndarray]], control: str, methods: list[str]) -> dict:
    """Queries each method needs to reach the control's final win rate (mean curves), per seed, and the
    ratio to the control's own with a paired-by-seed bootstrap interval."""
    target = float(np.mean(list(per_seed[control].values()), axis=0)[-1])
    out = {"target": target, "queries": {}, "queries_per_seed": {}, "ratio": {}}
    for m in methods:
        mean = np.mean(list(per_seed[m].values()), axis=0)
        out["queries"][m] = queries_to_reach(grid, mean, target)
        out["queries_per_seed"][m] = {str(seed): queries_to_reach(grid, v, target) for seed, v in per_seed[m].items()}
        if m != control:
            out["ratio"][m] = bootstrap_ratio(grid, per_seed[m], per_seed[control])
    return out


def equal_updates(result: dict) -> dict:
    """Per method, the control that trains most nearly as much per query (pair-updates per query, nearest
    in ratio) and that control's headline ratio: the comparison at equal policy updates. Mixed preference
    adds pairs only where its gate opens, so which control matches is measured, not assumed."""
    per_query = {c: result["methods"][c]["training"]["pair_updates_per_query"]
                 for c in result.get("headlines", {}) if "training" in result["methods"].get(c, {})}
    out = {}
    for m, v in result["methods"].items():
        if m in CONTROLS or "training" not in v or not per_query:
            continue
        own = v["training"]["pair_updates_per_query"]
        ratios = {c: own / q if q > 0 else np.inf for c, q in per_query.items()}
        control = min(ratios, key=lambda c: abs(np.log(ratios[c])) if 0 < ratios[c] < np.inf else np.inf)
        out[m] = {"control": control, "training_ratio": ratios[control],
                  "ratio": result["headlines"][control]["ratio"].get(m)}
    return out


def reach_ratio(grid: np.ndarray, method: np.ndarray, control: np.ndarray) -> float:
    """[seeds, grid] curves → queries the method's mean curve needs to reach the control's mean final, over
    the queries the control's own mean curve needs; inf if the method never gets there, NaN if the control
    is there from the start (no ratio)."""
    target = control.mean(axis=0)[-1]
    q_control = queries_to_reach(grid, control.mean(axis=0), target)
    if not q_control:
        return float("nan")
    q_method = queries_to_reach(grid, method.mean(axis=0), target)
    return float("inf") if q_method is None else q_method / q_control


def bootstrap_ratio(grid: np.ndarray, method: dict[int, np.ndarray], control: dict[int, np.ndarray],
                    resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict:
    """The reach ratio on the seeds both have, and its 95% percentile interval over `resamples` draws of
    those seeds with replacement, the same seeds for both (paired). Endpoints are order statistics, so a
    draw where the method never reaches the target counts as an infinite ratio; NaN draws are left out."""
    seeds = sorted(set(method) & set(control))
    m = np.stack([method[s] for s in seeds])
    c = np.stack([control[s] for s in seeds])
    draws = np.random.default_rng(seed).integers(0, len(seeds), size=(resamples, len(seeds)))
    ratios = np.array([reach_ratio(grid, m[d], c[d]) for d in draws])
    return {"ratio": reach_ratio(grid, m, c), "ci95": percentile_interval(ratios), "seeds": seeds,
            "resamples": resamples,
            "share_not_reached": float(np.isinf(ratios).mean()), "share_undefined": float(np.isnan(ratios).mean()),
            "share_at_most_half": float((ratios <= 0.5).mean())}


def percentile_interval(draws: np.ndarray) -> list[float | None]:
    """The 95% percentile interval of bootstrap draws as order statistics (an infinite draw counts as the
    largest; NaN draws are left out); [None, None] if every draw is NaN."""
    finite = np.sort(draws[~np.isnan(draws)])
    if not finite.size:
        return [None, None]
    return [float(finite[int(np.floor(0.025 * (finite.size - 1)))]),
            float(finite[int(np.ceil(0.975 * (finite.size - 1)))])]


def plot(result: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=130)
    grid = np.array(result["grid"])
    for m, v in result["methods"].items():
        mean, half = 100 * np.array(v["mean"]), 100 * np.array(v["ci95"])
        ax.plot(grid, mean, marker="o", ms=3, label=m)
        ax.fill_between(grid, np.clip(mean - half, 0, 100), np.clip(mean + half, 0, 100), alpha=0.15)  # a rate
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("oracle queries")
    ax.set_ylabel("win rate vs reference (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def table(result: dict, seeds: dict[str, int]) -> str:
    grid = result["grid"]
    thresholds = list(next(iter(result["queries_to_reach"].values())))
    head = ["method", "seeds", "final win % (±95%)", "worst seed", "seeds < 50%"]
    head += [f"queries to {float(t):.0%}" for t in thresholds]
    headlines = result.get("headlines", {})
    for c, h in headlines.items():
        head += [f"queries to {c}'s final ({100 * h['target']:.1f}%)", f"ratio to {c} [95% CI]"]
    with_training = all("training" in v for v in result["methods"].values())
    if with_training:
        head += ["rounds / updates", "pairs trained", "pair-updates per query"]
    with_style = all(v.get("style") for v in result["methods"].values())
    if with_style:
        head += ["answers: effusive / preamble / repeat %"]
    with_rm = any(v.get("reward_model") for v in result["methods"].values())
    if with_rm:
        head += ["reward model: prequential accuracy / model-labelled pairs per run (seed range)"]
    matched = result.get("equal_updates", {})
    if matched:
        head += ["equal-updates control (training ×)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fmt = lambda q: "—" if q is None else f"{q:.0f}"  # noqa: E731
    for m, v in result["methods"].items():
        cells = [m, str(seeds[m]), f"{100 * v['final']:.1f} ± {100 * v['ci95'][-1]:.1f}",
                 f"{100 * v['worst_final']:.1f} (seed {v['worst_seed']})", str(len(v["seeds_below_reference"]))]
        cells += [fmt(result["queries_to_reach"][m][t]) for t in thresholds]
        for c, h in headlines.items():
            cells.append(fmt(h["queries"][m]))
            cells.append(ratio_cell(h["ratio"].get(m)))
        if with_training:
            t = v["training"]
            cells += [f"{t['rounds']:.0f} / {t['updates']:.0f}", f"{t['pairs_trained']:.0f}",
                      f"{t['pair_updates_per_query']:.2f}"]
        if with_style:
            cells.append(style_cell(v["style"]["mean"]))
        if with_rm:
            cells.append(reward_model_cell(v.get("reward_model")))
        if matched:
            e = matched.get(m)
            cells.append("—" if e is None else
                         f"{e['control']} ({e['training_ratio']:.2f}×): {ratio_cell(e['ratio'])}")
        lines.append("| " + " | ".join(cells) + " |")
    if with_style and result.get("reference_style"):
        lines.append(f"(reference policy's answers: {style_cell(result['reference_style'])} %)")
    lines.append(f"(budget {grid[-1]:.0f} queries; '—' = not reached within it; ratio = queries to the control's "
                 "final / the control's own, paired bootstrap over seeds, ∞ = not reached)")
    return "\n".join(lines)


def style_cell(style: dict[str, float]) -> str:
    return " / ".join(f"{100 * style[k]:.1f}" for k in ("effusive_opening", "preamble", "repeated_4gram"))


def reward_model_cell(rm: dict | None) -> str:
    if rm is None:
        return "—"
    acc, labels = rm["range"]["preq_accuracy"], rm["range"]["model_labelled"]
    acc_text = "—" if acc is None else f"{acc[0]:.2f}–{acc[1]:.2f}"
    return f"{acc_text} / {labels[0]:.0f}–{labels[1]:.0f}"


def ratio_cell(r: dict | None) -> str:
    if r is None:
        return "—"
    show = lambda x: "—" if x is None or x != x else ("∞" if x == float("inf") else f"{x:.2f}")  # noqa: E731
    return f"{show(r['ratio'])} [{show(r['ci95'][0])}, {show(r['ci95'][1])}]"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    methods = args.methods.split(",")
    configs = {m: [run_config(args, m, seed) for seed in args.seeds] for m in methods}
    # seed-major: every method gets its first seed before any gets its second
    todo = [] if args.summarise_only else [
        configs[m][k] for k in range(len(args.seeds)) for m in methods if args.fresh or not finished(configs[m][k])]
    wall = run_all(todo, args.jobs)
    done = {m: [c for c in configs[m] if finished(c)] for m in methods}
    earlier = earlier_setup(args.out.with_suffix(".json"), done)
    # a summary of runs that all ran before keeps the date they were summarised; new runs date it today
    date = (None if wall else earlier.get("date")) or time.strftime("%Y-%m-%d")
    wall = {**earlier.get("run_wall_s", {}), **wall}
    methods = [m for m in methods if done[m]]
    if not methods:
        raise SystemExit("no finished runs to summarise")
    result = summarise(args, methods, {m: {c.seed: curve(Path(c.output_dir)) for c in done[m]} for m in methods})
    for m in methods:  # means over the finished seeds
        runs = [training_done(c) for c in done[m]]
        result["methods"][m]["training"] = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
        result["methods"][m]["style"] = style_over_seeds(done[m])
        result["methods"][m]["reward_model"] = reward_model_over_seeds(done[m])
    reference = final_answers(done[methods[0]][0])  # the same reference answers in every run of a sweep
    result["reference_style"] = answer_style([r["reference"] for r in reference]) if reference else None
    result["equal_updates"] = equal_updates(result)
    first = configs[methods[0]][0]
    saved = [json.loads((Path(c.output_dir) / "config.json").read_text()) for m in methods for c in done[m]]
    argv = sys.argv[1:] if argv is None else list(argv)  # the sweep's own options, also when called as a function
    result["setup"] = {"command": " ".join(shlex.quote(x) for x in [sys.executable, __file__, *argv]),
                       "argv": argv, "seeds": {m: [c.seed for c in done[m]] for m in methods},
                       "queries": args.queries, "batch_size": args.batch_size, "sea_samples": args.sea_samples,
                       "equal_updates": args.equal_updates, "model": first.model, "oracle": first.oracle,
                       "preference": first.preference, "loss": first.loss,
                       "dtype": sorted({c["dtype"] for c in saved}),
                       "engine_dtype": sorted({c["engine_dtype"] for c in saved}),
                       "eval_prompts": first.num_eval_prompts, "max_new_tokens": first.max_new_tokens,
                       "method_overrides": {m: args.method_options[m] for m in methods}, "run_wall_s": wall,
                       "cpu": cpu_model(), "cores": os.cpu_count(), "bootstrap": {
                           "resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED},
                       "date": date}
    write_json_atomic(args.out.with_suffix(".json"), result)
    seeds = sorted({len(done[m]) for m in methods})
    seeds_text = f"{seeds[0]} seeds" if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]} seeds"
    labels = "" if first.preference == "deterministic" else f" · BT labels (T {first.bt_temperature:g})"
    plot(result, args.out.with_suffix(".png"), f"{first.loss} · {first.oracle} oracle{labels} · {seeds_text}")
    print(table(result, {m: len(done[m]) for m in methods}))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

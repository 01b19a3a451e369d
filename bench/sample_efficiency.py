"""Sample efficiency: oracle win rate against oracle queries, per method, over several seeds.

Each (method, seed) is one ordinary `fastalign train` run (a subprocess, so runs cannot leak state into
each other) with the same model, prompts, oracle, learner settings and query budget; only the method's
own options differ (see METHODS). The curves are the runs' evaluations — win rate of the policy's greedy
responses against the reference's on the held-out prompts, judged by the oracle — interpolated onto a
common grid of query counts, then averaged over seeds with a 95% Student-t band.

Printed and written (JSON + PNG): the curves, the queries each method needs to reach fixed win rates,
and the headline — the queries each method needs to reach passive online DPO's final win rate.
Finished runs are reused when their config matches (a long sweep can be stopped and restarted); pass
`--fresh` to rerun them.

    python bench/sample_efficiency.py                       # embedded task, default budget
    python bench/sample_efficiency.py --queries 160 --seeds 5 --methods passive,ee-ts
    python bench/sample_efficiency.py --set loss=ipo --set beta=0.5   # any RunConfig option
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fastalign.config import RunConfig  # noqa: E402
from fastalign.metrics import read_metrics  # noqa: E402

DEFAULT_OUT = REPO / "bench" / "results" / "sample_efficiency"
DEFAULT_RUNS = REPO / "runs" / "sample_efficiency"

# method → RunConfig overrides; "{sea_n}" is replaced by --sea_samples
METHODS: dict[str, dict] = {
    "passive": {},  # online DPO: two random on-policy responses per prompt
    "ee-ts": {"explore": "ee-ts", "samples_per_prompt": "{sea_n}"},
    "bai-ts": {"explore": "bai-ts", "samples_per_prompt": "{sea_n}"},
    "best-worst": {"explore": "best-worst", "samples_per_prompt": "{sea_n}"},
    "ee-ts-mixed": {"explore": "ee-ts", "samples_per_prompt": "{sea_n}", "mixed_share": 0.5, "mixed_burn_in": 16},
    "offline": {"algorithm": "offline-dpo"},  # DPO on pairs sampled from the frozen reference
    # the other online algorithms (docs/algorithms.md); SAIL-PP asks about the unrouted share only, SAIL-DP
    # asks nothing (no curve against queries)
    "selm": {"algorithm": "selm"},
    "xpo": {"algorithm": "xpo"},
    "bpo": {"algorithm": "bpo"},
    "sail-pr": {"algorithm": "sail-pr"},
    "sail-pp": {"algorithm": "sail-pp"},
}
DEFAULT_METHODS = "passive,ee-ts-mixed,ee-ts,bai-ts,best-worst,offline"  # `--methods all` adds the algorithms
# options that schedule or operate a run without shaping its curve (dtype "auto" is saved resolved)
NOT_SHAPING = {"dtype", "engine_dtype", "threads", "output_dir", "progress", "tensorboard", "save_final",
               "checkpoint_every", "keep_checkpoints", "resume", "max_nonfinite_steps", "oracle_retries",
               "oracle_timeout", "oracle_backoff"}
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated, from {', '.join(METHODS)}; or all")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--queries", type=int, default=64, help="oracle-query budget of every run")
    ap.add_argument("--batch_size", type=int, default=8, help="prompts (= queries) per round")
    ap.add_argument("--eval_every", type=int, default=2, help="rounds between evaluations")
    ap.add_argument("--sea_samples", type=int, default=4, help="responses per prompt for the SEA methods")
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
    if args.methods == "all":
        args.methods = ",".join(METHODS)
    unknown = sorted(set(args.methods.split(",")) - set(METHODS))
    if unknown:
        ap.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if args.seeds < 1 or args.queries < args.batch_size:
        ap.error("need --seeds ≥ 1 and --queries ≥ --batch_size")
    return args


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
    method_opts = {k: (args.sea_samples if v == "{sea_n}" else v) for k, v in METHODS[method].items()}
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
    defaults = RunConfig().to_dict()  # an option newer than the run must be at the default it then had
    return all(saved.get(k, defaults[k]) == v for k, v in cfg.to_dict().items() if k not in NOT_SHAPING)


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
    """Rounds (= policy updates) and pairs trained on: mixed preference learning adds model-labelled
    pairs and rounds within the same query budget, so methods differ in training as well as queries."""
    summary = json.loads((Path(cfg.output_dir) / "summary.json").read_text())
    return {"rounds": float(summary["rounds"]), "pairs_trained": float(summary["pairs_trained"])}


def curve(cfg: RunConfig) -> tuple[np.ndarray, np.ndarray]:
    rows = read_metrics(Path(cfg.output_dir) / "metrics.jsonl", kind="eval")
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
    return mean, T_975.get(n - 1, 1.96) * values.std(axis=0, ddof=1) / np.sqrt(n)


def queries_to_reach(grid: np.ndarray, mean: np.ndarray, target: float) -> float | None:
    """First query count where the mean curve reaches target (linear between grid points)."""
    for k in range(len(grid)):
        if mean[k] >= target - 1e-12:
            if k == 0:
                return float(grid[0])
            x0, x1, y0, y1 = grid[k - 1], grid[k], mean[k - 1], mean[k]
            return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0))
    return None


def summarise(args: argparse.Namespace, methods: list[str], curves: dict) -> dict:
    grid = np.arange(0, args.queries + 1, args.eval_every * args.batch_size, dtype=float)
    if grid[-1] != args.queries:
        grid = np.append(grid, float(args.queries))
    result = {"grid": grid.tolist(), "methods": {}}
    for m in methods:
        values = np.stack([on_grid(q, r, grid) for q, r in curves[m]])
        mean, half = band(values)
        result["methods"][m] = {"mean": mean.tolist(), "ci95": half.tolist(), "per_seed": values.tolist(),
                                "final": float(mean[-1])}
    thresholds = [float(t) for t in args.thresholds.split(",")]
    result["queries_to_reach"] = {m: {str(t): queries_to_reach(grid, np.array(v["mean"]), t) for t in thresholds}
                                  for m, v in result["methods"].items()}
    if "passive" in result["methods"]:
        target = result["methods"]["passive"]["final"]
        result["headline"] = {"target": target, "queries": {
            m: queries_to_reach(grid, np.array(v["mean"]), target) for m, v in result["methods"].items()}}
    return result


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
    head = ["method", "seeds", "final win % (±95%)"] + [f"queries to {float(t):.0%}" for t in thresholds]
    if "headline" in result:
        head.append(f"queries to passive's final ({100 * result['headline']['target']:.1f}%)")
    with_training = all("training" in v for v in result["methods"].values())
    if with_training:
        head += ["rounds (= updates)", "pairs trained"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fmt = lambda q: "—" if q is None else f"{q:.0f}"  # noqa: E731
    for m, v in result["methods"].items():
        cells = [m, str(seeds[m]), f"{100 * v['final']:.1f} ± {100 * v['ci95'][-1]:.1f}"]
        cells += [fmt(result["queries_to_reach"][m][t]) for t in thresholds]
        if "headline" in result:
            cells.append(fmt(result["headline"]["queries"][m]))
        if with_training:
            cells += [f"{v['training']['rounds']:.0f}", f"{v['training']['pairs_trained']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"(budget {grid[-1]:.0f} queries; '—' = not reached within it)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    methods = args.methods.split(",")
    configs = {m: [run_config(args, m, seed) for seed in range(args.seeds)] for m in methods}
    # seed-major: every method gets its first seed before any gets its second
    todo = [] if args.summarise_only else [
        configs[m][s] for s in range(args.seeds) for m in methods if args.fresh or not finished(configs[m][s])]
    wall = run_all(todo, args.jobs)
    done = {m: [c for c in configs[m] if finished(c)] for m in methods}
    methods = [m for m in methods if done[m]]
    if not methods:
        raise SystemExit("no finished runs to summarise")
    result = summarise(args, methods, {m: [curve(c) for c in done[m]] for m in methods})
    for m in methods:  # means over the finished seeds
        runs = [training_done(c) for c in done[m]]
        result["methods"][m]["training"] = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
    first = configs[methods[0]][0]
    result["setup"] = {"argv": sys.argv[1:], "seeds": {m: len(done[m]) for m in methods}, "queries": args.queries,
                       "batch_size": args.batch_size, "sea_samples": args.sea_samples,
                       "model": first.model, "oracle": first.oracle, "loss": first.loss,
                       "eval_prompts": first.num_eval_prompts, "max_new_tokens": first.max_new_tokens,
                       "method_overrides": {m: METHODS[m] for m in methods}, "run_wall_s": wall,
                       "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "date": time.strftime("%Y-%m-%d")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    seeds = sorted({len(done[m]) for m in methods})
    seeds_text = f"{seeds[0]} seeds" if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]} seeds"
    plot(result, args.out.with_suffix(".png"), f"{first.loss} · {first.oracle} oracle · {seeds_text}")
    print(table(result, {m: len(done[m]) for m in methods}))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Pool sweeps of the same comparison: one method against its control over every paired seed they ran.

A seed's bf16 and fp32 runs are not repeats: they sample from slightly different distributions from the
first token on, and their trajectories part; a seed's runs in one dtype are (fp32 runs of one seed gave
the same win rate at every evaluation on an AVX2 and an AVX-512 EPYC; docs/benchmarks.md). So sweeps of
the same methods and settings in other dtypes or over other seeds are independent paired replicates of
one comparison, and pooling them is how a claim gets more seeds than one sweep holds. This script reads
the sweeps' JSONs (bench/sample_efficiency.py), refuses sweeps that differ in anything but machine, dtype
and seeds, and a seed that two sweeps ran in the same dtypes (one replicate, not two), and reports per
sweep and pooled:

- the paired difference of the final win rate (method − control, per replicate), its mean with a 95%
  Student-t interval and how many replicates are positive;
- the headline ratio (queries the method's mean curve needs to reach the control's mean final, over the
  control's own) with the paired bootstrap over replicates that bench/sample_efficiency.py uses.

The pooled bootstrap resamples replicates regardless of their sweep, so a sweep with more seeds weighs
more; what it does not show: how the comparison varies with anything the sweeps share (model, oracle,
budget, answer length). Written: OUT.json and OUT.png (the pooled mean curves with t bands).

    python bench/pool_sweeps.py bench/results/sample_efficiency_sea_vader.json \\
        bench/results/sample_efficiency_sea_vader_bf16.json --out bench/results/sample_efficiency_sea_vader_pooled
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

# what two sweeps must share to be replicates of one comparison (setup fields of their JSONs)
SHARED = ("model", "oracle", "preference", "loss", "queries", "batch_size", "sea_samples", "eval_prompts",
          "max_new_tokens")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweeps", nargs="+", type=Path, help="sweep JSONs written by bench/sample_efficiency.py")
    ap.add_argument("--method", default="ee-ts-mixed", help="the method compared")
    ap.add_argument("--control", default="passive", help="the method it is compared with")
    ap.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.png")
    return ap.parse_args(argv)


def load(path: Path, methods: tuple[str, ...]) -> dict:
    if not path.is_file():
        raise SystemExit(f"{path}: no such sweep JSON; pass the .json that bench/sample_efficiency.py wrote")
    sweep = json.loads(path.read_text())
    missing = [m for m in methods if m not in sweep.get("methods", {})]
    if missing:
        raise SystemExit(f"{path}: has no runs of {', '.join(missing)} (it has {', '.join(sweep.get('methods', {}))})")
    return sweep


def check_replicates(paths: list[Path], sweeps: list[dict], methods: tuple[str, ...]) -> None:
    """Refuse sweeps that are not the same comparison: a pooled figure over different settings means nothing."""
    first, name = sweeps[0], paths[0]
    for path, sweep in zip(paths[1:], sweeps[1:]):
        differ = [k for k in SHARED if sweep["setup"].get(k) != first["setup"].get(k)]
        if shaping_options(sweep) != shaping_options(first):
            differ.append("--set options")
        differ += [f"options of {m}" for m in methods
                   if sweep["setup"]["method_overrides"].get(m) != first["setup"]["method_overrides"].get(m)]
        if sweep["grid"] != first["grid"]:
            differ.append("evaluation grid")
        if differ:
            raise SystemExit(f"{path} and {name} differ in {', '.join(differ)}: they are not replicates of one "
                             "comparison; pool only sweeps that differ in machine, dtype and seeds")


def check_distinct(paths: list[Path], sweeps: list[dict], reps: list[tuple]) -> None:
    """Refuse a seed that two sweeps ran in the same dtypes: its runs reproduce, so they are one replicate."""
    ran: dict[tuple, Path] = {}
    for i, seed, _, _ in reps:
        setup = sweeps[i]["setup"]
        key = (seed, tuple(setup["dtype"]), tuple(setup.get("engine_dtype", ())))
        if key in ran:
            raise SystemExit(f"{ran[key]} and {paths[i]} both ran seed {seed} in {'/'.join(setup['dtype'])}: a "
                             "seed's runs in one dtype reproduce, so they are one replicate; pool other seeds "
                             "or other dtypes")
        ran[key] = paths[i]


def shaping_options(sweep: dict) -> dict:
    """The sweep's --set options that change what a run learns (not threads, dtype, logging, ...)."""
    opts = se.overrides(se.parse_args(sweep["setup"]["argv"]).set)
    return {k: v for k, v in opts.items() if k not in se.NOT_SHAPING}


def curves(sweep: dict, method: str) -> dict[int, np.ndarray]:
    v = sweep["methods"][method]
    return {int(seed): np.array(c, float) for seed, c in zip(v["seeds"], v["per_seed"])}


def replicates(sweeps: list[dict], method: str, control: str) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """(sweep index, seed, method curve, control curve) for every seed a sweep ran of both."""
    out = []
    for i, sweep in enumerate(sweeps):
        m, c = curves(sweep, method), curves(sweep, control)
        out += [(i, seed, m[seed], c[seed]) for seed in sorted(set(m) & set(c))]
    return out


def compare(grid: np.ndarray, reps: list[tuple[int, int, np.ndarray, np.ndarray]]) -> dict:
    """Paired final differences (t interval, positives) and the bootstrap reach ratio over these replicates."""
    diffs = np.array([m[-1] - c[-1] for _, _, m, c in reps])
    mean, half = se.band(diffs[:, None])
    ratio = se.bootstrap_ratio(grid, {k: r[2] for k, r in enumerate(reps)}, {k: r[3] for k, r in enumerate(reps)})
    ratio["seeds"] = [f"{i}:{seed}" for i, seed, _, _ in reps]  # sweep index : seed
    return {"replicates": len(reps), "final_difference": float(mean[0]),
            "final_difference_ci95": [float(mean[0] - half[0]), float(mean[0] + half[0])],
            "differences": diffs.tolist(), "positive": int((diffs > 0).sum()),
            "method_final": float(np.mean([r[2][-1] for r in reps])),
            "control_final": float(np.mean([r[3][-1] for r in reps])), "ratio": ratio}


def sweep_summary(grid: np.ndarray, path: Path, sweep: dict, own: list[tuple], method: str) -> dict:
    """One sweep's machine, seeds, command and comparison over its own replicates, and the method's
    reward-model record per seed where the sweep has one (sweeps summarised before it was recorded do not)."""
    return {"path": str(path), "cpu": sweep["setup"]["cpu"], "dtype": sweep["setup"]["dtype"],
            "seeds": [seed for _, seed, _, _ in own], "command": sweep["setup"]["command"],
            "comparison": compare(grid, own), "reward_model": sweep["methods"][method].get("reward_model")}


def pooled_curves(reps: list[tuple[int, int, np.ndarray, np.ndarray]], method: str, control: str) -> dict:
    out = {}
    for name, k in ((control, 3), (method, 2)):
        mean, half = se.band(np.stack([r[k] for r in reps]))
        out[name] = {"mean": mean.tolist(), "ci95": half.tolist()}
    return out


def table(result: dict) -> str:
    head = ["sweep", "CPU · dtype", "seeds", f"{result['control']} final %", f"{result['method']} final %",
            "difference, points [95% t]", "positive", "ratio to control [bootstrap 95%]"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = [(s["path"], f"{s['cpu']} · {'/'.join(s['dtype'])}", s["seeds"], s["comparison"]) for s in result["sweeps"]]
    rows.append(("pooled", "—", "all", result["pooled"]))
    for name, machine, seeds, c in rows:
        lo, hi = c["final_difference_ci95"]
        lines.append(f"| {name} | {machine} | {seeds if isinstance(seeds, str) else len(seeds)} | "
                     f"{100 * c['control_final']:.1f} | {100 * c['method_final']:.1f} | "
                     f"{100 * c['final_difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] | "
                     f"{c['positive']}/{c['replicates']} | {se.ratio_cell(c['ratio'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    methods = (args.method, args.control)
    sweeps = [load(p, methods) for p in args.sweeps]
    check_replicates(args.sweeps, sweeps, methods)
    grid = np.array(sweeps[0]["grid"], float)
    reps = replicates(sweeps, args.method, args.control)
    check_distinct(args.sweeps, sweeps, reps)
    if len(reps) < 2:
        raise SystemExit(f"{len(reps)} paired seed(s) of {args.method} and {args.control}: pooling needs two or more")
    result = {"method": args.method, "control": args.control, "grid": grid.tolist(),
              "sweeps": [sweep_summary(grid, p, s, [r for r in reps if r[0] == i], args.method)
                         for i, (p, s) in enumerate(zip(args.sweeps, sweeps))]}
    result["pooled"] = compare(grid, reps)
    result["methods"] = pooled_curves(reps, args.method, args.control)
    setup = sweeps[0]["setup"]
    argv = sys.argv[1:] if argv is None else list(argv)
    result["setup"] = {"command": " ".join(shlex.quote(x) for x in [sys.executable, __file__, *argv]),
                       **{k: setup.get(k) for k in SHARED},
                       "bootstrap": {"resamples": se.BOOTSTRAP_RESAMPLES, "seed": se.BOOTSTRAP_SEED},
                       "date": time.strftime("%Y-%m-%d")}
    write_json_atomic(args.out.with_suffix(".json"), result)
    se.plot(result, args.out.with_suffix(".png"),
            f"{setup['loss']} · {setup['oracle']} oracle · {len(reps)} paired seeds over {len(sweeps)} sweeps")
    print(table(result))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

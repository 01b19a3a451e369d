"""Which `--bt_temperature` makes each oracle's Bradley–Terry labels as noisy as intended.

`--preference bt` labels a pair with a draw, P(a ≻ b) = σ((r_a − r_b)/T). Whether that draw mostly
follows the oracle's ranking or is nearly a coin flip depends on T against the spread of the oracle's
scores, and the spread differs by oracle, so one T does not fit both. This bench scores the pairs a run
starts from (the reference policy's own answers: bench/mixed_gate.py's cached samples, P prompts × N
answers at sampling temperature 1) with each oracle and reports, for a grid of T, the mean agreement of
the drawn label with the oracle's ranking, E[σ(|r_a − r_b| / T)] over all same-prompt pairs with unequal
scores, and the T that gives `--target` (bisection: the agreement falls as T grows).

What it does not show: the agreement on a trained policy's answers, whose scores spread differently, so
the agreement at a fixed T drifts during a run.
Written: OUT.json.

    python bench/bt_temperature.py --target 0.75
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from fastalign.atomic import write_json_atomic  # noqa: E402
from fastalign.machine import cpu_model  # noqa: E402

GRID = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def same_prompt_gaps(rewards: np.ndarray) -> np.ndarray:
    """|r_a − r_b| over every unordered pair of answers to one prompt (rows), unequal scores only."""
    a, b = np.triu_indices(rewards.shape[1], k=1)
    gaps = np.abs(rewards[:, a] - rewards[:, b]).ravel()
    return gaps[gaps > 0]


def agreement(gaps: np.ndarray, temperature: float) -> float:
    """Mean probability that the Bradley–Terry draw picks the higher-scored answer."""
    return float(np.mean(1.0 / (1.0 + np.exp(-gaps / temperature))))


def check_target(target: float) -> None:
    if not 0.5 < target < 1.0:
        raise ValueError(f"--target must be an agreement in (0.5, 1), got {target}")


def temperature_for(gaps: np.ndarray, target: float, iters: int = 60) -> float:
    """T with agreement(gaps, T) = target, by bisection in log T (agreement falls from 1 to ½ as T grows)."""
    check_target(target)
    lo, hi = 1e-6, 1e6
    for _ in range(iters):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if agreement(gaps, mid) > target else (lo, mid)
    return (lo * hi) ** 0.5


def summarise(gaps: np.ndarray, target: float) -> dict:
    return {"pairs": int(gaps.size), "median_gap": float(np.median(gaps)),
            "quartiles": [float(q) for q in np.quantile(gaps, [0.25, 0.75])],
            "agreement": {str(t): agreement(gaps, t) for t in GRID},
            "temperature": temperature_for(gaps, target)}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", type=float, default=0.75, help="mean agreement of the drawn label with the ranking")
    ap.add_argument("--prompts", type=int, default=160)
    ap.add_argument("--samples", type=int, default=8, help="answers per prompt (all same-prompt pairs are used)")
    ap.add_argument("--oracles", default="vader,rubric")
    ap.add_argument("--max_new_tokens", type=int, default=32)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--runs_dir", type=Path, default=REPO / "runs" / "mixed_gate", help="the samples' cache")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bt_temperature")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check_target(args.target)  # before the minutes of sampling
    except ValueError as err:
        raise SystemExit(str(err)) from None
    from mixed_gate import rows_dtype, sample

    from fastalign.oracle import RubricOracle, VaderOracle

    builders = {"vader": VaderOracle, "rubric": RubricOracle}
    names = args.oracles.split(",")
    unknown = [n for n in names if n not in builders]
    if unknown:
        raise SystemExit(f"unknown oracle(s) {', '.join(unknown)}: choose from {', '.join(builders)}")
    rows = sample(args)
    prompts = [r["prompt"] for r in rows for _ in range(args.samples)]
    answers = [a for r in rows for a in r["answers"][:args.samples]]
    argv = sys.argv[1:] if argv is None else list(argv)
    result = {"setup": {"command": " ".join(shlex.quote(x) for x in [sys.executable, __file__, *argv]),
                        "cpu": cpu_model(), "dtype": {"sampling": rows_dtype(args)}, "prompts": len(rows),
                        "samples": args.samples, "target": args.target, "max_new_tokens": args.max_new_tokens,
                        "policy": "smollm2-135m-instruct (reference, T = 1)", "date": time.strftime("%Y-%m-%d")},
              "oracles": {}}
    for name in names:
        scores = np.asarray(builders[name]().score(prompts, answers), dtype=np.float64)
        summary = summarise(same_prompt_gaps(scores.reshape(len(rows), args.samples)), args.target)
        result["oracles"][name] = summary
        print(f"{name}: {summary['pairs']} pairs, median gap {summary['median_gap']:.3f}; agreement by T: "
              + ", ".join(f"{t}: {a:.2f}" for t, a in summary["agreement"].items())
              + f"; T for {args.target:.2f}: {summary['temperature']:.4f}")
    print(f"wrote {write_json_atomic(args.out.with_suffix('.json'), result, indent=1)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Pair-selection throughput: C++ extension vs the numpy reference, calls/sec per strategy.

Times the public `fastalign.explore.selection.select_pairs` with backend="cpp" and "numpy" on the
same inputs (default B=128 prompts, N=20 responses, E=20 heads, with some identical responses),
after checking that both backends return identical results. Each figure is the median over
`--repeats` timed batches of calls; a batch runs for at least `--min-time` seconds. Calls/sec and
the speedup use the calling thread's CPU time (robust to other jobs on shared cores); wall-clock
figures are reported next to them.

    python bench/selection.py [--batch 128 --responses 20 --heads 20 --repeats 7 --out PATH]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np

from fastalign.atomic import write_json_atomic
from fastalign.explore.selection import STRATEGIES, select_pairs
from fastalign.machine import cpu_model

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "selection.json"


def make_inputs(batch: int, responses: int, heads: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian reward samples and ids where about one response in ten duplicates another."""
    g = np.random.default_rng(seed)
    rewards = g.standard_normal((batch, responses, heads)).astype(np.float32)
    ids = np.tile(np.arange(responses, dtype=np.int64), (batch, 1))
    dup = g.random((batch, responses)) < 0.1
    ids[dup] = g.integers(0, responses, size=int(dup.sum()))
    return rewards, ids


def seconds_per_call(
    fns: dict[str, Callable[[], object]], repeats: int, min_time: float
) -> dict[str, dict[str, float]]:
    """Per function: median over repeats of the mean wall and thread-CPU time per call.

    The functions take turns within each repeat, so load from other jobs on this machine's shared
    cores hits all of them alike; the calling thread's CPU time is the steadier measure of what a
    call costs (all work runs on this thread), wall time is kept alongside. Each batch of calls
    lasts at least min_time.
    """
    calls = {}
    for name, fn in fns.items():
        fn()  # warm-up
        n = 1
        while True:
            start = time.perf_counter()
            for _ in range(n):
                fn()
            if time.perf_counter() - start >= min_time:
                break
            n *= 2
        calls[name] = n
    samples: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.thread_time()
            for _ in range(calls[name]):
                fn()
            samples[name]["cpu"].append((time.thread_time() - start_cpu) / calls[name])
            samples[name]["wall"].append((time.perf_counter() - start) / calls[name])
    return {name: {k: statistics.median(v) for k, v in s.items()} for name, s in samples.items()}


def check_parity(rewards: np.ndarray, ids: np.ndarray, strategy: str, seed: int) -> None:
    cpp = select_pairs(rewards, ids, strategy, seed, backend="cpp")
    ref = select_pairs(rewards, ids, strategy, seed, backend="numpy")
    for field in ("pairs", "heads", "scores"):
        if not np.array_equal(getattr(cpp, field), getattr(ref, field), equal_nan=True):
            raise SystemExit(f"C++ and numpy disagree on {field} for {strategy}: the extension is stale or broken")


def run(args: argparse.Namespace) -> dict:
    rewards, ids = make_inputs(args.batch, args.responses, args.heads, args.seed)
    rows = []
    for strategy in STRATEGIES:
        check_parity(rewards, ids, strategy, args.seed)
        timing = seconds_per_call(
            {
                backend: lambda b=backend: select_pairs(rewards, ids, strategy, args.seed, backend=b)
                for backend in ("cpp", "numpy")
            },
            args.repeats,
            args.min_time,
        )
        cpp, ref = timing["cpp"], timing["numpy"]
        rows.append(
            {
                "strategy": strategy,
                "cpp_calls_per_s": 1.0 / cpp["cpu"],
                "numpy_calls_per_s": 1.0 / ref["cpu"],
                "speedup": ref["cpu"] / cpp["cpu"],
                "cpp_us_per_call_cpu": cpp["cpu"] * 1e6,
                "numpy_us_per_call_cpu": ref["cpu"] * 1e6,
                "cpp_us_per_call_wall": cpp["wall"] * 1e6,
                "numpy_us_per_call_wall": ref["wall"] * 1e6,
                "speedup_wall": ref["wall"] / cpp["wall"],
            }
        )
    return {
        "benchmark": "pair selection calls/sec, C++ vs numpy reference (public select_pairs API)",
        "shape": {"B": args.batch, "N": args.responses, "E": args.heads},
        "repeats": args.repeats,
        "min_time_s": args.min_time,
        "statistic": "median over repeats; calls/s and speedup from the calling thread's CPU time",
        "load_average_1min": os.getloadavg()[0],
        "parity": "identical pairs, heads and scores for every strategy",
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "results": rows,
    }


def print_table(report: dict) -> None:
    shape = report["shape"]
    print(
        f"pair selection, B={shape['B']} N={shape['N']} E={shape['E']}, median of {report['repeats']}, "
        f"thread CPU time (wall in brackets; 1-min load {report['load_average_1min']:.1f})"
    )
    print(f"{'strategy':<12} {'C++ calls/s':>12} {'numpy calls/s':>14} {'C++ µs':>16} {'numpy µs':>18} {'speedup':>14}")
    for r in report["results"]:
        print(
            f"{r['strategy']:<12} {r['cpp_calls_per_s']:>12.0f} {r['numpy_calls_per_s']:>14.1f} "
            f"{r['cpp_us_per_call_cpu']:>7.1f} ({r['cpp_us_per_call_wall']:>6.1f}) "
            f"{r['numpy_us_per_call_cpu']:>8.1f} ({r['numpy_us_per_call_wall']:>7.1f}) "
            f"{r['speedup']:>5.1f}x ({r['speedup_wall']:.1f}x)"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--responses", type=int, default=20)
    parser.add_argument("--heads", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per timed batch of calls")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = run(args)
    print_table(report)
    print(f"wrote {write_json_atomic(args.out, report)}")


if __name__ == "__main__":
    main()

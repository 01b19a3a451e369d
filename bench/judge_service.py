"""Judge throughput: the OAIF judge served over HTTP (any OpenAI-compatible server) vs the in-process judge.

Both judges answer the same pairs: held-out prompts of the packaged set, two responses each sampled
once from the served model (temperature 1, `--max-new-tokens`, a fixed seed). Each pair is two requests
(both orders). Reports requests/s and queries (pairs)/s per client concurrency for the served judge,
the same for the in-process judge on this machine (`JudgeOracle`, batches of 8, `--local_threads`), and how
far their probabilities agree. Start the server first (docs/oracles.md); for figures independent of
the order of passes, serve with prefix caching off (`--no-enable-prefix-caching`).

    python bench/judge_service.py --judge_url http://127.0.0.1:8000/v1 --judge_model smollm2
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from fastalign.atomic import write_json_atomic
from fastalign.config import DEFAULT_MODEL, RunConfig
from fastalign.data import load_prompts
from fastalign.machine import cpu_model
from fastalign.models import resolve_model_dir
from fastalign.oracle import HttpJudgeOracle, JudgeOracle
from fastalign.oracle.service import JsonService

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "judge_service.json"


def sample_pairs(args: argparse.Namespace) -> tuple[list[str], list[str], list[str]]:
    """Held-out prompts and two sampled responses each, from the served model."""
    service = JsonService(args.judge_url, option="judge_url", api_key_env=args.api_key_env)
    prompts = list(load_prompts("default", split="heldout"))[:args.pairs]
    a, b = [], []
    for i, prompt in enumerate(prompts):
        reply = service.post("chat/completions", {
            "model": args.judge_model, "messages": [{"role": "user", "content": prompt}], "n": 2,
            "temperature": 1.0, "max_tokens": args.max_new_tokens, "seed": args.seed + i})
        first, second = (c["message"]["content"] for c in reply["choices"][:2])
        a.append(first)
        b.append(second)
    return prompts, a, b


def timed(oracle, prompts, a, b) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    prob = oracle.compare(prompts, a, b, count=False).prob_a
    return prob, time.perf_counter() - start


def run(args: argparse.Namespace) -> dict:
    prompts, a, b = sample_pairs(args)
    requests = 2 * len(prompts)
    rows, served = [], {}
    for concurrency in args.concurrency:
        judge = HttpJudgeOracle(args.judge_url, args.judge_model, concurrency=concurrency,
                                api_key_env=args.api_key_env)
        served[concurrency], seconds = timed(judge, prompts, a, b)
        judge.close()
        rows.append({"judge": f"served over HTTP, {concurrency} concurrent", "seconds": seconds,
                     "requests_per_s": judge.requests / seconds, "queries_per_s": len(prompts) / seconds,
                     "requests": judge.requests, "fallback_answers": judge.fallback_answers})
    local_judge = JudgeOracle(resolve_model_dir(args.local_model), batch_size=8)
    for threads in args.local_threads:
        torch.set_num_threads(threads)
        local, seconds = timed(local_judge, prompts, a, b)
        rows.append({"judge": f"in-process, {threads} thread(s)", "seconds": seconds,
                     "requests_per_s": requests / seconds, "queries_per_s": len(prompts) / seconds,
                     "requests": requests, "fallback_answers": 0})
    first = served[args.concurrency[0]]
    return {
        "benchmark": "OAIF judge: served over HTTP vs in-process, same pairs (both orders per pair)",
        "pairs": len(prompts), "max_new_tokens": args.max_new_tokens, "judge_model": args.judge_model,
        "local_model": args.local_model, "local_dtype": "fp32",
        "agreement": {"max_abs_prob_diff": float(np.abs(first - local).max()),
                      "same_label_share": float(np.mean((first > 0.5) == (local > 0.5))),
                      "served_ties": int(np.sum(first == 0.5)), "local_ties": int(np.sum(local == 0.5))},
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "load_average_1min": os.getloadavg()[0]},
        "results": rows,
    }


def print_table(report: dict) -> None:
    print(f"{report['pairs']} pairs ({2 * report['pairs']} requests), {report['machine']['cpu']}, "
          f"{report['machine']['cores']} cores")
    print(f"{'judge':<34} {'seconds':>8} {'requests/s':>11} {'queries/s':>10}")
    for r in report["results"]:
        print(f"{r['judge']:<34} {r['seconds']:>8.1f} {r['requests_per_s']:>11.2f} {r['queries_per_s']:>10.2f}")
    print("agreement (first served row vs in-process):", report["agreement"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judge_url", required=True, help="the server's base URL, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--judge_model", required=True, help="the name the server serves the judge under")
    parser.add_argument("--api_key_env", default=RunConfig.oracle_api_key_env)
    parser.add_argument("--local_model", default=DEFAULT_MODEL, help="the same judge for the in-process run")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--local_threads", type=int, nargs="+", default=[os.cpu_count() or 1],
                        help="torch threads of the in-process judge (one pass each)")
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

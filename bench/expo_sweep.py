"""ExPO alpha sweep: extrapolate a finished run's model, θ_sft + α(θ_final − θ_sft), over several α and
report the oracle's win rate of each against the SFT (reference) model on the run's held-out prompts.

Everything stays in memory: one engine starts with the SFT weights (its greedy responses are the
reference), then each α's weights are swapped into it in place and evaluated with the run's own oracle
(the same `fastalign.eval.WinRateEvaluator` as training; ties ½; evaluation queries are not counted).
α = 1 is the run's final model; α = 0 is the SFT model itself (50%, all ties: a sanity check).

    python bench/expo_sweep.py --run runs/default [--alphas 0,1,1.25,1.5,2 --engine auto --out PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "expo_sweep.json"


def parse_alphas(text: str) -> list[float]:
    try:
        alphas = [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise SystemExit(f"--alphas must be comma-separated numbers, got {text!r}") from None
    if not alphas:
        raise SystemExit("--alphas is empty")
    return alphas


def sweep(run_dir: Path, alphas: list[float], engine_kind: str | None = None, aligned: Path | None = None,
          num_eval_prompts: int | None = None) -> dict:
    """Win rate vs the SFT model for each α, with the run's config (oracle, prompts, lengths)."""
    from fastalign.config import RunConfig
    from fastalign.data import format_prompts
    from fastalign.engine import engine_for_run
    from fastalign.eval import WinRateEvaluator
    from fastalign.extrapolate import extrapolate_weights
    from fastalign.models import load_causal_lm, load_tokenizer, resolve_model_dir
    from fastalign.oracle import build_oracle
    from fastalign.threads import set_torch_threads
    from fastalign.train import split_prompts

    config = run_dir / "config.json"
    if not config.is_file():
        raise SystemExit(f"{run_dir} has no config.json: give the output_dir of a finished fastalign run")
    cfg = RunConfig.from_dict(json.loads(config.read_text()))
    if engine_kind:
        cfg.engine = engine_kind
    if num_eval_prompts:
        cfg.num_eval_prompts = num_eval_prompts
    aligned = aligned or run_dir / "final"
    if not (aligned / "config.json").is_file():
        raise SystemExit(f"no aligned model at {aligned}: the run saves it as final/ (save_final true)")
    sft_dir = resolve_model_dir(cfg.model)
    _, held = split_prompts(cfg)
    tokenizer = load_tokenizer(sft_dir)
    prompts = format_prompts(tokenizer, held, cfg.max_prompt_tokens)
    oracle = build_oracle(cfg)
    sft, tuned = load_causal_lm(sft_dir), load_causal_lm(aligned)
    set_torch_threads(cfg.threads)
    engine = engine_for_run(cfg, sft_dir, seed=cfg.seed)
    rows = []
    try:
        set_torch_threads(cfg.threads)
        evaluator = WinRateEvaluator(engine, oracle, prompts, cfg.max_new_tokens)
        for alpha in alphas:
            t = time.perf_counter()
            engine.update_weights(extrapolate_weights(sft.named_parameters(), tuned.named_parameters(), alpha))
            metrics, _ = evaluator.evaluate()
            rows.append({"alpha": alpha, **metrics, "seconds": round(time.perf_counter() - t, 2)})
            print(format_row(rows[-1]), flush=True)
    finally:
        engine.close()
    return {"run": str(run_dir), "sft": str(sft_dir), "aligned": str(aligned), "oracle": cfg.oracle,
            "eval_prompts": len(prompts), "max_new_tokens": cfg.max_new_tokens, "rows": rows}


def format_row(row: dict) -> str:
    score = f"{row['oracle_score']:.3f}" if "oracle_score" in row else "-"
    return (f"| {row['alpha']:g} | {100 * row['win_rate']:.1f}% | {100 * row['ties']:.0f}% | {score} | "
            f"{row['response_tokens']:.1f} |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, type=Path, help="output_dir of a finished run (config.json, final/)")
    parser.add_argument("--aligned", type=Path, default=None, help="aligned model dir (default: RUN/final)")
    parser.add_argument("--alphas", default="0,1,1.25,1.5,2")
    parser.add_argument("--engine", default=None, help="override the run's engine (auto, vllm, hf)")
    parser.add_argument("--num_eval_prompts", type=int, default=None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from fastalign.atomic import write_json_atomic

    args = parse_args(argv)
    print("| alpha | win rate vs SFT | ties | oracle score | response tokens |\n|---|---|---|---|---|", flush=True)
    result = sweep(args.run, parse_alphas(args.alphas), args.engine, args.aligned, args.num_eval_prompts)
    print(f"wrote {write_json_atomic(args.out, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

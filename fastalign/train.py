"""`python -m fastalign.train` / `fastalign train`: build every part of the loop from one RunConfig and run it.

Everything that can be wrong with the input (config, prompts, oracle) is checked before the models
load, so a bad run stops in seconds with a message rather than after minutes of start-up. Under
torchrun the process group is created before the engine (vLLM must see the world group first).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from .config import DATASET_RESPONSES, DEFAULT_PROMPTS, ConfigError, RunConfig, parse_args  # noqa: E402
from .checkpoint import CHECKPOINTS, CheckpointError, check_compatible, checkpoint_dirs, find_checkpoint  # noqa: E402
from .data import PromptDataError, PromptList, PromptStream, format_prompts, load_prompts  # noqa: E402


def split_prompts(cfg: RunConfig) -> tuple[list[str], list[str]]:
    """Training and held-out instructions: the default set's fixed split, a given eval set, or a
    seeded hold-out of the user's own prompts."""
    split = "train" if cfg.prompts == DEFAULT_PROMPTS else None
    train = load_prompts(cfg.prompts, split=split, field=cfg.prompt_field, on_bad_row=cfg.on_bad_prompt)
    if cfg.eval_prompts is not None:
        split = "heldout" if cfg.eval_prompts == DEFAULT_PROMPTS else None
        held = load_prompts(cfg.eval_prompts, split=split, field=cfg.prompt_field, on_bad_row=cfg.on_bad_prompt)
    elif cfg.prompts == DEFAULT_PROMPTS:
        held = load_prompts(DEFAULT_PROMPTS, split="heldout")
    else:
        if len(train) < 2 * cfg.num_eval_prompts:
            raise ConfigError(f"{cfg.prompts!r} has {len(train)} prompts: too few to hold out num_eval_prompts="
                              f"{cfg.num_eval_prompts} for evaluation; pass --eval_prompts or lower --num_eval_prompts")
        import random

        order = list(range(len(train)))
        random.Random(cfg.seed).shuffle(order)
        held_idx = set(order[:cfg.num_eval_prompts])
        held = PromptList([train[i] for i in sorted(held_idx)], [train.ids[i] for i in sorted(held_idx)],
                          train.skipped)
        train = PromptList([x for i, x in enumerate(train) if i not in held_idx],
                           [x for i, x in enumerate(train.ids) if i not in held_idx], train.skipped)
    if len(held) > cfg.num_eval_prompts:
        held = PromptList(held[:cfg.num_eval_prompts], held.ids[:cfg.num_eval_prompts], held.skipped)
    return train, held


def resume_point(cfg: RunConfig) -> Path | None:
    """The checkpoint to continue from (checked against this config before any model loads), or None.

    A fresh run refuses an output_dir that already holds checkpoints: it would mix two runs' states."""
    if cfg.resume is None:
        if checkpoint_dirs(Path(cfg.output_dir) / CHECKPOINTS):
            raise ConfigError(f"{cfg.output_dir} already holds checkpoints of a run: continue it with "
                              "--resume auto, or give a new --output_dir")
        return None
    found = find_checkpoint(cfg.resume, cfg.output_dir)
    if found is None:
        print(f"fastalign: no checkpoint in {cfg.output_dir}/{CHECKPOINTS} yet: starting from round 0", flush=True)
        return None
    for bad, why in found.rejected:
        print(f"fastalign: checkpoint {bad} is unusable ({why}): falling back to {found.path}", flush=True)
    check_compatible(found.path, cfg)
    return found.path


def run(cfg: RunConfig) -> dict:
    """Run one online-alignment job; returns its summary (also written to output_dir/summary.json)."""
    cfg.validate()
    checkpoint = resume_point(cfg)
    train_text, eval_text = split_prompts(cfg)
    from .oracle import build_oracle

    try:
        oracle = build_oracle(cfg)
    except (ImportError, AttributeError, TypeError, ValueError, OSError) as exc:
        raise ConfigError(str(exc)) from exc

    from .engine import engine_for_run
    from .eval import WinRateEvaluator
    from .explore.explorer import build_explorer
    from .learner.distributed import init_distributed, is_main_process, shutdown_distributed
    from .learner.learner import PolicyLearner
    from .loop import OnlineLoop
    from .checkpoint import restore_metrics
    from .metrics import MetricsLogger
    from .oracle.durable import DurableOracle
    from .models import load_tokenizer, resolve_dtype, resolve_model_dir
    from .threads import set_torch_threads

    started = time.time()
    cfg.dtype, cfg.engine_dtype = resolve_dtype(cfg.dtype), resolve_dtype(cfg.engine_dtype)
    rank, world = init_distributed()
    set_torch_threads(cfg.threads)
    out = Path(cfg.output_dir)
    if checkpoint is not None:
        check_compatible(checkpoint, cfg, world_size=world)
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.json")
        if checkpoint is not None:
            restore_metrics(checkpoint, out / "metrics.jsonl")
        elif cfg.resume is not None:  # killed before its first checkpoint: its rows are redone from round 0
            (out / "metrics.jsonl").unlink(missing_ok=True)
    oracle = DurableOracle(oracle, out / f"oracle_log-rank{rank}.jsonl", retries=cfg.oracle_retries,
                           timeout=cfg.oracle_timeout, backoff=cfg.oracle_backoff)
    model_dir = resolve_model_dir(cfg.model)
    tokenizer = load_tokenizer(model_dir)
    train_prompts = format_prompts(tokenizer, train_text, cfg.max_prompt_tokens, on_long=cfg.on_long_prompt)
    eval_prompts = format_prompts(tokenizer, eval_text, cfg.max_prompt_tokens, on_long=cfg.on_long_prompt)
    for name, prompts in (("training", train_prompts), ("held-out", eval_prompts)):
        if not prompts:
            raise PromptDataError(f"every {name} prompt is over max_prompt_tokens={cfg.max_prompt_tokens} and "
                                  "--on_long_prompt drop dropped them all: raise max_prompt_tokens or truncate")
    dataset_responses = None
    if cfg.algorithm in DATASET_RESPONSES:
        from .responses import load_dataset_responses

        dataset_responses = load_dataset_responses(cfg.prompts, tokenizer, cfg.prompt_field, cfg.response_field)
    learner = PolicyLearner(cfg, model_dir, pad_id=tokenizer.pad_token_id, world_size=world)
    engine = engine_for_run(cfg, model_dir, seed=cfg.seed + rank)
    set_torch_threads(cfg.threads)
    evaluator = WinRateEvaluator(engine, oracle, eval_prompts, cfg.max_new_tokens)
    loop = OnlineLoop(cfg, stream=PromptStream(train_prompts, seed=cfg.seed + rank), engine=engine,
                      explorer=build_explorer(cfg, seed=cfg.seed * 7919 + rank, policy=learner.reference,
                                              implicit_rewards=learner.implicit_rewards), oracle=oracle, learner=learner,
                      evaluator=evaluator, metrics=MetricsLogger(out, cfg.tensorboard, enabled=is_main_process(),
                                                            rebuild_tensorboard=cfg.resume is not None),
                      rank=rank, world_size=world, tokenizer=tokenizer, dataset_responses=dataset_responses)
    loop.state.start_time = started
    loop.run_info = {"prompts_skipped": len(train_text.skipped),
                     "prompts_truncated": train_prompts.truncated + eval_prompts.truncated,
                     "prompts_dropped": train_prompts.dropped + eval_prompts.dropped}
    loop.enable_checkpoints()
    try:
        if checkpoint is not None:
            loop.resume(checkpoint)
        summary = loop.run()
    finally:
        loop.metrics.close()
        oracle.close()
        engine.close()
        shutdown_distributed()
    return summary


def main(argv: list[str] | None = None) -> int:
    from .faults import GenerationError, RunInterrupted
    from .learner.learner import NonFiniteLossError
    from .oracle.durable import OracleFailure

    try:
        cfg = parse_args(argv)
        summary = run(cfg)
    except (ConfigError, PromptDataError, FileNotFoundError, CheckpointError) as exc:
        print(f"fastalign: error: {exc}", file=sys.stderr)
        return 2
    except RunInterrupted as exc:
        print(f"fastalign: {exc}", file=sys.stderr)
        return exc.exit_code
    except (OracleFailure, GenerationError, NonFiniteLossError) as exc:
        print(f"fastalign: error: {exc}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0":  # the process group may be gone after the engine closed
        print(_format_summary(summary))
    return 0


def _format_summary(summary: dict) -> str:
    lines = ["", "fastalign run finished: " + summary["stopped"]]
    for key in ("queries", "oracle_paid_queries", "oracle_paid_eval_queries", "rounds", "pairs_trained", "tied_pairs", "win_rate", "ties", "oracle_score",
                "reference_score", "wall_time_s", "final_model"):
        if key in summary:
            value = summary[key]
            lines.append(f"  {key:16s} {value:.3f}" if isinstance(value, float) else f"  {key:16s} {value}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

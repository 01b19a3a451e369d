"""`python -m fastalign.train` / `fastalign train`: build every part of the loop from one RunConfig and run it.

Everything that can be wrong with the input (config, prompts, oracle) is checked before the models
load, so a bad run stops in seconds with a message rather than after minutes of start-up. Under
torchrun the process group is created before the engine (vLLM must see the world group first).
"""
from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A run's log holds fastalign's own lines and errors: the libraries' advice to their own developers (vLLM's
# per-call thread notices, torch's NUMA binding note, deprecations inside vLLM) is left out. Set these
# variables yourself to see it.
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
warnings.filterwarnings("ignore", category=FutureWarning, module=r"vllm(\.|$)")

from .config import DEFAULT_PROMPTS, ConfigError, RunConfig, parse_args  # noqa: E402
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

    `--resume no` refuses an output_dir that already holds checkpoints: it would mix two runs' states."""
    if cfg.resume == "no":
        if checkpoint_dirs(Path(cfg.output_dir) / CHECKPOINTS):
            raise ConfigError(f"{cfg.output_dir} already holds checkpoints of a run: continue it with "
                              "--resume auto, or give a new --output_dir")
        return None
    found = find_checkpoint(cfg.resume, cfg.output_dir)
    if found is None:  # --resume auto and nothing to continue: a fresh run
        return None
    for bad, why in found.rejected:
        print(f"fastalign: checkpoint {bad} is unusable ({why}): falling back to {found.path}", flush=True)
    check_compatible(found.path, cfg)
    return found.path


def finished_summary(cfg: RunConfig, checkpoint: Path) -> dict | None:
    """The summary of the run in output_dir when its latest checkpoint already meets this config's stop
    condition (a second `make train`): nothing is left to do, and nothing is loaded to find that out."""
    meta = json.loads((checkpoint / "run.json").read_text())
    done = meta["round"] >= cfg.rounds or (cfg.max_queries is not None and meta["queries"] >= cfg.max_queries)
    summary_path = Path(cfg.output_dir) / "summary.json"
    if not done or not summary_path.is_file():
        return None
    summary = json.loads(summary_path.read_text())
    return summary if summary.get("rounds") == meta["round"] else None


def run(cfg: RunConfig) -> dict:
    """Run one online-alignment job; returns its summary (also written to output_dir/summary.json).

    With `--resume auto` (the default) an unfinished run in output_dir continues where it stopped, and a
    finished one is reported (summary["already_finished"]) without loading anything."""
    cfg.validate()
    checkpoint = resume_point(cfg)
    if checkpoint is not None and (done := finished_summary(cfg, checkpoint)) is not None:
        return {**done, "already_finished": True}
    train_text, eval_text = split_prompts(cfg)
    from .oracle import build_oracle

    try:
        oracle = build_oracle(cfg, rank=int(os.environ.get("RANK", "0")))  # torchrun sets RANK before we start
    except (ImportError, AttributeError, TypeError, ValueError, OSError) as exc:
        raise ConfigError(str(exc)) from exc
    if cfg.dry_run:
        return {"dry_run": True, "training_prompts": len(train_text), "held_out_prompts": len(eval_text),
                "prompts_skipped": len(train_text.skipped), "oracle": oracle.name,
                "resume_from": str(checkpoint) if checkpoint is not None else None}

    from .algorithms import build_algorithm
    from .engine import engine_for_run, engine_kind
    from .eval import WinRateEvaluator
    from .explore.explorer import build_explorer
    from .learner.distributed import init_distributed, is_main_process, shutdown_distributed
    from .learner.learner import PolicyLearner
    from .loop import OnlineLoop
    from .checkpoint import restore_metrics
    from .metrics import MetricsLogger
    from .oracle.durable import DurableOracle
    from .models import dtype_reason, load_tokenizer, resolve_dtype, resolve_model_dir
    from .seeding import stream_seed
    from .threads import set_torch_threads

    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # one bar per model load is noise in a run's log
    started = time.time()
    reasons = {"dtype": dtype_reason(cfg.dtype), "engine_dtype": dtype_reason(cfg.engine_dtype)}
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
        else:  # a fresh start, or a run killed before its first checkpoint: rows are redone from round 0
            (out / "metrics.jsonl").unlink(missing_ok=True)
    oracle = DurableOracle(oracle, out / f"oracle_log-rank{rank}.jsonl", retries=cfg.oracle_retries,
                           timeout=cfg.oracle_timeout, backoff=cfg.oracle_backoff)
    model_dir = resolve_model_dir(cfg.model)
    if is_main_process() and cfg.progress:
        print(start_report(cfg, model_dir, reasons, engine_kind(cfg.engine), world, checkpoint), flush=True)
    tokenizer = load_tokenizer(model_dir)
    train_prompts = format_prompts(tokenizer, train_text, cfg.max_prompt_tokens, on_long=cfg.on_long_prompt)
    eval_prompts = format_prompts(tokenizer, eval_text, cfg.max_prompt_tokens, on_long=cfg.on_long_prompt)
    for name, prompts in (("training", train_prompts), ("held-out", eval_prompts)):
        if not prompts:
            raise PromptDataError(f"every {name} prompt is over max_prompt_tokens={cfg.max_prompt_tokens} and "
                                  "--on_long_prompt drop dropped them all: raise max_prompt_tokens or truncate")
    algorithm = build_algorithm(cfg, tokenizer=tokenizer, rank=rank)
    learner = PolicyLearner(cfg, model_dir, pad_id=tokenizer.pad_token_id, algorithm=algorithm, world_size=world)
    engine = engine_for_run(cfg, model_dir, seed=stream_seed(cfg.seed, "engine", rank, bits=32))
    set_torch_threads(cfg.threads)
    evaluator = WinRateEvaluator(engine, oracle, eval_prompts, cfg.max_new_tokens)
    loop = OnlineLoop(cfg, stream=PromptStream(train_prompts, seed=stream_seed(cfg.seed, "prompts", rank)),
                      engine=engine, explorer=build_explorer(cfg, seed=stream_seed(cfg.seed, "explorer", rank),
                                                             policy=learner.reference_decoder(),
                                                             implicit_rewards=learner.implicit_rewards),
                      oracle=oracle, learner=learner, evaluator=evaluator, algorithm=algorithm,
                      metrics=MetricsLogger(out, cfg.tensorboard, enabled=is_main_process(),
                                            rebuild_tensorboard=checkpoint is not None),
                      rank=rank, world_size=world, tokenizer=tokenizer)
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
        print(end_report(cfg, summary))
    return 0


def start_report(cfg: RunConfig, model_dir: Path, reasons: dict[str, str], engine: str, world: int,
                 checkpoint: Path | None) -> str:
    """What this run is, in a few lines: model, dtypes and why, engine, oracle, algorithm, output."""
    ranks = f", {world} ranks" if world > 1 else ""
    where = f"continuing from {checkpoint}" if checkpoint is not None else "a fresh run"
    model = cfg.model if str(model_dir) == cfg.model else f"{cfg.model} ({model_dir})"
    learner = (f"LoRA rank {cfg.lora_r} ({cfg.lora_target_modules}, alpha {cfg.lora_alpha:g})" if cfg.lora_r
               else "full fine-tuning")
    return "\n".join([
        f"fastalign: {cfg.algorithm} with the {cfg.loss} loss (beta {cfg.beta}), {cfg.rounds} rounds of "
        f"{cfg.batch_size} prompts{ranks}",
        f"  learner  {learner}, learning rate {cfg.resolved_learning_rate():g}",
        f"  model    {model}",
        f"  dtype    learner {cfg.dtype} ({reasons['dtype']}); {engine} engine in {cfg.engine_dtype}"
        + ("" if reasons["engine_dtype"] == reasons["dtype"] else f" ({reasons['engine_dtype']})"),
        f"  oracle   {cfg.oracle}{f' ({cfg.oracle_path})' if cfg.oracle_path else ''}; explore {cfg.explore}",
        f"  output   {cfg.output_dir} ({where})"])


OUTPUTS = (("final/", "the aligned policy, a Hugging Face model directory"),
           ("final_merged/", "the base model with the LoRA adapter merged in (--save_merged)"),
           ("win_rate.png", "win rate against oracle queries"),
           ("metrics.jsonl", "every round and evaluation (also tensorboard/)"),
           ("eval_responses.jsonl", "held-out prompts with the reference's and the policy's responses"),
           ("summary.json", "the figures above; config.json: the run's options"),
           ("checkpoints/", "resume state (--resume auto continues the run)"))


def end_report(cfg: RunConfig, summary: dict) -> str:
    """The run's result and where everything is."""
    out = Path(cfg.output_dir)
    if summary.get("dry_run"):
        where = f"continue from {summary['resume_from']}" if summary["resume_from"] else "start a fresh run"
        return (f"fastalign: dry run: the options are valid; {cfg.algorithm} with the {cfg.loss} loss would "
                f"{where} in {out}, on {summary['training_prompts']} training and {summary['held_out_prompts']} "
                f"held-out prompts ({summary['prompts_skipped']} rows skipped), oracle {summary['oracle']}")
    if summary.get("already_finished"):
        head = [f"fastalign: {out} already holds a finished run ({summary['rounds']} rounds, {summary['queries']} "
                f"oracle queries, win rate {100 * summary.get('win_rate', float('nan')):.1f}%): nothing to do.",
                f"  To train it further, raise --rounds (it continues from its last checkpoint); to start afresh, "
                f"give another --output_dir (or remove {out})."]
    else:
        head = ["", f"fastalign run finished: {summary['stopped']}",
                f"  win rate   {100 * summary.get('win_rate', float('nan')):.1f}% against the initial policy on the "
                f"held-out prompts (ties count half)",
                f"  queries    {summary['queries']} oracle queries over all ranks"
                + (f", {summary['oracle_paid_queries']} of them paid (the rest were answered from the oracle log)"
                   if summary.get("oracle_paid_queries", summary["queries"]) != summary["queries"] else ""),
                f"  trained    {summary['pairs_trained']} pairs in {summary['rounds']} rounds "
                f"({summary['tied_pairs']} tied pairs skipped)",
                f"  wall time  {summary['wall_time_s']:.0f} s"]
    outputs = dict(OUTPUTS)
    if cfg.lora_r:
        outputs["final/"] = "the aligned policy's LoRA adapter, a peft adapter directory (with the tokenizer)"
    files = [f"  {name:21s} {what}" for name, what in outputs.items() if (out / name.rstrip("/")).exists()]
    return "\n".join(head + [f"outputs in {out}/:"] + files)


if __name__ == "__main__":
    sys.exit(main())

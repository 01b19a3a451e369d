"""LoRA in the generation engine: merged weights swapped in place (fastalign's choice) vs vLLM's own LoRA.

Two ways for vLLM to sample from a LoRA policy after each learner step:
- merged: the engine holds W + (α/r)·B·A; a step's sync is `update_weights(partial=True)` of the adapted
  tensors (fastalign's `AdaptedWeights.merged`), generation is the plain model's;
- vllm-lora: the engine is started with `enable_lora=True` and keeps the base; every sync writes the
  adapter with peft's `save_pretrained` and generation passes a `LoRARequest(load_inplace=True)`, so each
  adapted layer adds its LoRA matmuls to every generated token (vLLM's CPU punica ops).
Each mode runs in its own fresh process: `--warmup` untimed rounds then `--rounds` timed rounds of one
sync plus one generation (batch B prompts × N samples × max_new_tokens tokens, EOS ignored, so every
round generates the same number of tokens); medians are printed and written as JSON.

    python bench/lora_sync.py [--model DIR] [--lora_r 16] [--rounds 5] [--out PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results" / "lora_sync.json"
MODES = ("merged", "vllm-lora")


def _adapter(model_dir: str, r: int, seed: int):
    """A peft model with the run's default LoRA config at rank r and a non-zero B (a trained adapter's size)."""
    import torch

    from fastalign.config import RunConfig
    from fastalign.learner.lora import lora_policy
    from fastalign.models import load_causal_lm

    model = lora_policy(load_causal_lm(model_dir, "fp32"), RunConfig(model=model_dir, lora_r=r).validate())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 1e-3)
    return model


def summarise(rows: list[dict], args) -> dict:
    timed = rows[args.warmup:]
    if not timed:
        return {"rounds": [], "warmup_rounds": rows}
    med = {key: statistics.median(r[key] for r in timed) for key in timed[0]}
    tokens = args.batch_size * args.samples_per_prompt * args.max_new_tokens
    return {"median": med, "rounds": timed, "tokens_per_round": tokens,
            "generate_tok_per_s": tokens / med["generate_s"]}


def run_mode(args) -> dict:
    import torch

    from fastalign.atomic import write_json_atomic
    from fastalign.engine.vllm_engine import VLLMEngine
    from fastalign.learner.lora import AdaptedWeights
    from fastalign.threads import set_torch_threads

    model = _adapter(args.model_dir, args.lora_r, seed=0)
    if args.mode == "merged":
        engine = VLLMEngine(args.model_dir, dtype="fp32", kv_cache_gib=0.25, seed=0, max_model_len=256)
    else:  # the same engine settings, started with vLLM's LoRA support
        engine = _LoraEngine(args.model_dir, args.lora_r)
    set_torch_threads(args.threads)
    prompts = [[1] + list(range(100 + 7 * k, 140 + 7 * k)) for k in range(args.batch_size)]
    weights, rows = AdaptedWeights(model), []
    names = engine.names_to_update(weights.trained_names())
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.warmup + args.rounds):
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "lora_B" in name:
                        p.add_(1e-4)  # a learner step's change
            t0 = time.perf_counter()
            if args.mode == "merged":
                engine.update_weights(weights.merged(names), partial=True)
            else:
                engine.sync(model, Path(tmp) / f"adapter-{k}")
            t1 = time.perf_counter()
            engine.generate_fixed(prompts, args.samples_per_prompt, args.max_new_tokens, seed=k)
            t2 = time.perf_counter()
            rows.append({"sync_s": t1 - t0, "generate_s": t2 - t1})
            write_json_atomic(args.mode_out, summarise(rows, args))  # kept if timed out
    engine.close()
    return summarise(rows, args)


def _fixed_params(n: int, max_new_tokens: int, seed: int):
    from vllm import SamplingParams

    return SamplingParams(n=n, max_tokens=max_new_tokens, min_tokens=max_new_tokens, ignore_eos=True,
                          temperature=1.0, seed=seed)


def _generate_fixed(llm, prompts, n, max_new_tokens, seed, lora_request=None):
    from vllm.inputs import TokensPrompt

    return llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], _fixed_params(n, max_new_tokens, seed),
                        use_tqdm=False, lora_request=lora_request)


def _plain_generate_fixed(self, prompts, n, max_new_tokens, seed):
    from fastalign.threads import using_threads

    with using_threads(self.threads):
        return _generate_fixed(self._llm, prompts, n, max_new_tokens, seed)


class _LoraEngine:
    """vLLM with enable_lora: the base stays, the adapter is (re)loaded from a directory every sync."""

    def __init__(self, model_dir: str, r: int) -> None:
        from fastalign.engine.vllm_engine import import_vllm
        from fastalign.threads import restore_set_num_threads

        vllm = import_vllm()
        self._llm = vllm.LLM(model=model_dir, tokenizer=model_dir, dtype="float32", seed=0, max_model_len=256,
                             kv_cache_memory_bytes=2**28, gpu_memory_utilization=0.1, enforce_eager=True,
                             enable_lora=True, max_lora_rank=max(8, r), max_loras=1, disable_log_stats=True)
        restore_set_num_threads()
        self._request = None

    def names_to_update(self, names):
        return frozenset(names)

    def sync(self, model, path: Path) -> None:
        from vllm.lora.request import LoRARequest

        model.save_pretrained(str(path), save_embedding_layers=False)
        self._request = LoRARequest("policy", 1, str(path), load_inplace=True)

    def generate_fixed(self, prompts, n, max_new_tokens, seed):
        return _generate_fixed(self._llm, prompts, n, max_new_tokens, seed, self._request)

    def close(self) -> None:
        self._llm.llm_engine.engine_core.shutdown()


def spawn(args, mode: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "mode.json"
        cmd = [sys.executable, __file__, "--model", args.model, "--lora_r", str(args.lora_r), "--rounds",
               str(args.rounds), "--warmup", str(args.warmup), "--batch_size", str(args.batch_size),
               "--samples_per_prompt", str(args.samples_per_prompt), "--max_new_tokens", str(args.max_new_tokens),
               "--threads", str(args.threads), "--mode", mode, "--mode_out", str(out)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        print(f"[lora_sync] {mode} ...", file=sys.stderr, flush=True)
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:  # the rounds done so far are in `out`
            done = json.loads(out.read_text()) if out.is_file() else {}
            return {**done, "failed": f"timed out after {args.timeout:.0f} s"}
        if proc.returncode != 0 or not out.is_file():
            return {"failed": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-3000:]}
        return json.loads(out.read_text())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="packaged default's name or an HF dir")
    p.add_argument("--lora_r", type=int, default=16)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--samples_per_prompt", type=int, default=2)
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per mode")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--mode", choices=MODES, help="internal: run one mode in this process")
    p.add_argument("--mode_out", help="internal: where --mode writes its JSON")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0 or args.lora_r < 1:
        p.error("--rounds and --lora_r must be ≥ 1, --warmup ≥ 0")
    return args


def main(argv: list[str] | None = None) -> int:
    from fastalign.atomic import write_json_atomic

    args = parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.mode:
        from fastalign.engine.vllm_engine import VLLMEngine
        from fastalign.models import resolve_model_dir

        VLLMEngine.generate_fixed = _plain_generate_fixed
        args.model_dir = str(resolve_model_dir(args.model))
        write_json_atomic(args.mode_out, run_mode(args))
        return 0
    sys.path.insert(0, str(REPO))
    from bench.throughput import machine_info

    results = {mode: spawn(args, mode) for mode in args.modes}
    print(f"{'mode':10s} {'sync s':>8s} {'generate s':>11s} {'tok/s':>8s}")
    for mode, r in results.items():
        if "median" not in r:
            print(f"{mode:10s} {r.get('failed')}: {r.get('stderr_tail', '')[-500:]} {r.get('warmup_rounds', '')}")
            continue
        m = r["median"]
        print(f"{mode:10s} {m['sync_s']:8.3f} {m['generate_s']:11.2f} {r['generate_tok_per_s']:8.1f}"
              + (f"  ({r['failed']}; {len(r['rounds'])} timed rounds)" if "failed" in r else ""))
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "config": vars(args),
              "machine": machine_info(args.threads), "results": results}
    if all("median" in results.get(mode, {}) for mode in MODES):
        round_s = {mode: sum(r["median"].values()) for mode, r in results.items()}
        report["vllm_lora_round_vs_merged"] = round_s["vllm-lora"] / round_s["merged"]
        print(f"vllm-lora round (sync + generate) vs merged: {report['vllm_lora_round_vs_merged']:.2f}×")
    print(f"written: {write_json_atomic(args.out, report)}")
    return 0 if all("median" in r and "failed" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

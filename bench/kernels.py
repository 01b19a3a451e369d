"""The learner's LM-head + loss path (forward + backward): time and peak memory vs naive and Liger-Kernel.

Methods, all computing a DPO loss on B pairs (2B sequences of T response tokens) from the positions' final
hidden states [2B·T, H] and an LM head [V, H], summed reference log-probs given:
- naive: full logits [2B·T, V] → log_softmax → gather → sums → DPO;
- fastalign: `fastalign.learner.logprobs.loss_from_hidden`, the very function the learner calls, with
  its default impl ("auto": the torch path on every device, chunks of positions through three LM-head
  products and one chunk of logits at a time beyond the keep budget);
- triton: the same function with its Triton kernels forced (CUDA only), the path "auto" does not take
  (docs/benchmarks.md has the H200 measurement that decided it);
- liger: liger_kernel.chunked_loss.LigerFusedLinearDPOLoss (chunk_size=1 pair, use_ref_model=False: it
  gets no reference model, so it does slightly less work than the others).
Every (config, method) runs in a fresh subprocess: `--warmup` untimed runs, then `--repeats` timed runs;
the median is reported. Peak memory: on CPU, VmHWM after the run minus VmRSS before it (the kernel's
peak-RSS counter reset via /proc/self/clear_refs, glibc's free memory trimmed); on CUDA,
torch.cuda.max_memory_allocated over the run minus what was allocated before it. Gradient buffers are
freed before each run, so their allocation counts.

    python bench/kernels.py                        # SmolLM2's head on the CPU, T 256/512, 4/8 pairs, fp32
    python bench/kernels.py --device cuda          # Llama-3-8B's head (H 4096, V 128256), T 512/1024, 8 pairs, bf16
    python bench/kernels.py --quick                # tiny sizes (a smoke test)
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fastalign.atomic import write_json_atomic  # noqa: E402
from fastalign.learner.logprobs import ResponseHidden, loss_from_hidden  # noqa: E402
from fastalign.machine import cpu_model  # noqa: E402

METHODS = ("naive", "fastalign", "triton", "liger")
CPU_METHODS = ("naive", "fastalign", "liger")  # the default on the CPU, where Triton runs only in its interpreter
LEARNER_LOSS = loss_from_hidden  # the learner's own function (tests/test_bench_kernels.py checks identity)
SHAPES = {"cpu": dict(hidden=576, vocab=49152, tokens=[256, 512], pairs=[4, 8], dtype="fp32"),
          "cuda": dict(hidden=4096, vocab=128256, tokens=[512, 1024], pairs=[8], dtype="bf16")}


def _status_kib(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _reset_peak(device: str) -> float:
    """Reset the peak counter; returns the current usage in MiB."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") / 1024


def _peak(device: str) -> float:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return _status_kib("VmHWM") / 1024


def dpo_of_sums(ref_c, ref_r):
    import torch.nn.functional as F

    b = ref_c.shape[0]

    def loss_of_sums(sums):
        margin = (sums[:b] - sums[b:]) - (ref_c - ref_r)
        return -F.logsigmoid(0.1 * margin).mean()
    return loss_of_sums


def _make_step(method: str, p: int, t: int):
    import torch

    seq_index = None

    def naive(hidden, head, targets, ref_c, ref_r):
        logps = torch.log_softmax(head(hidden).float(), dim=-1).gather(1, targets[:, None]).squeeze(1)
        sums = logps.view(2 * p, t).sum(1)
        loss = dpo_of_sums(ref_c, ref_r)(sums)
        loss.backward()
        return float(loss)

    def learner(impl):
        def step(hidden, head, targets, ref_c, ref_r):
            nonlocal seq_index
            if seq_index is None:
                seq_index = torch.arange(2 * p, device=hidden.device).repeat_interleave(t)
            loss, _ = LEARNER_LOSS(ResponseHidden(hidden, targets, seq_index, 2 * p), head,
                                   dpo_of_sums(ref_c, ref_r), impl=impl)
            loss.backward()
            return float(loss)
        return step

    liger_loss = None

    def liger(hidden, head, targets, ref_c, ref_r):
        nonlocal liger_loss
        if liger_loss is None:
            from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

            liger_loss = LigerFusedLinearDPOLoss(beta=0.1, use_ref_model=False, compiled=True, chunk_size=1)
        loss = liger_loss(head.weight, hidden.view(2 * p, t, -1), targets.view(2 * p, t))[0]
        loss.backward()
        return float(loss)

    steps = {"naive": naive, "fastalign": learner("auto"), "triton": learner("triton"), "liger": liger}
    return steps[method]


def worker(cfg: dict) -> dict:
    """One (config, method) measurement; runs in its own process."""
    import torch

    torch.set_num_threads(cfg["threads"])
    device, dtype = cfg["device"], {"fp32": torch.float32, "bf16": torch.bfloat16}[cfg["dtype"]]
    g = torch.Generator().manual_seed(0)
    p, t, h, v = cfg["pairs"], cfg["tokens"], cfg["hidden"], cfg["vocab"]
    hidden = torch.randn(2 * p * t, h, generator=g).to(device, dtype).requires_grad_()
    head = torch.nn.Linear(h, v, bias=False).to(device, dtype)
    with torch.no_grad():
        head.weight.copy_(torch.randn(v, h, generator=g) * h ** -0.5)
    targets = torch.randint(0, v, (2 * p * t,), generator=g).to(device)
    ref_c, ref_r = ((torch.randn(p, generator=g) - 10.0 * t).to(device) for _ in range(2))
    step = _make_step(cfg["method"], p, t)
    times, peaks, loss = [], [], float("nan")
    for i in range(cfg["warmup"] + cfg["repeats"]):
        hidden.grad = head.weight.grad = None
        before = _reset_peak(device)
        start = time.perf_counter()
        loss = step(hidden, head, targets, ref_c, ref_r)
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        if i >= cfg["warmup"]:
            times.append(elapsed)
            peaks.append(_peak(device) - before)
    return dict(cfg, loss=loss, times_s=times, median_s=statistics.median(times), peak_mib=max(peaks))


def run_one(cfg: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(cfg["threads"]), PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True, text=True,
                          env=env, cwd=REPO)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return dict(cfg, error=(proc.stderr or proc.stdout)[-1500:])
    return json.loads(lines[-1])


def table(rows: list[dict]) -> str:
    out = [f"{'T':>5} {'pairs':>5} {'method':>9} {'median s':>9} {'peak MiB':>9} {'mem/naive':>9} {'time/naive':>10}"]
    naive = {(r["tokens"], r["pairs"]): r for r in rows if r["method"] == "naive" and "error" not in r}
    for r in rows:
        if "error" in r:
            out.append(f"{r['tokens']:>5} {r['pairs']:>5} {r['method']:>9}  failed: {r['error'].splitlines()[-1]}")
            continue
        base = naive.get((r["tokens"], r["pairs"]))
        mem = f"{r['peak_mib'] / base['peak_mib']:.2f}" if base else "-"
        tim = f"{r['median_s'] / base['median_s']:.2f}" if base else "-"
        out.append(f"{r['tokens']:>5} {r['pairs']:>5} {r['method']:>9} {r['median_s']:>9.3f} {r['peak_mib']:>9.0f} "
                   f"{mem:>9} {tim:>10}")
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=sorted(SHAPES), default="cpu", help="cpu: SmolLM2's head; cuda: Llama-3-8B's")
    ap.add_argument("--hidden", type=int, help="default: the device's shapes")
    ap.add_argument("--vocab", type=int)
    ap.add_argument("--tokens", type=int, nargs="+", help="response tokens per sequence")
    ap.add_argument("--pairs", type=int, nargs="+")
    ap.add_argument("--dtype", choices=("fp32", "bf16"))
    ap.add_argument("--methods", nargs="+", choices=METHODS,
                    help=f"default: {' '.join(CPU_METHODS)} on the CPU, all on CUDA")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (H=64, V=2048, T=32/64, 2 pairs)")
    ap.add_argument("--out", type=Path, help="default: bench/results/kernels[-cuda].json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    shapes = dict(SHAPES[args.device])
    if args.methods is None:
        args.methods = list(CPU_METHODS if args.device == "cpu" else METHODS)
    if args.quick:
        shapes.update(hidden=64, vocab=2048, tokens=[32, 64], pairs=[2])
        args.repeats = 2
    for key, value in shapes.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.out is None:
        args.out = REPO / "bench" / "results" / ("kernels.json" if args.device == "cpu" else "kernels-cuda.json")
    return args


def machine(device: str) -> dict:
    import torch

    info = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__}
    info["cpu"] = cpu_model()
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    rows, load_before = [], os.getloadavg()
    for t in args.tokens:
        for p in args.pairs:
            for m in args.methods:
                cfg = dict(method=m, tokens=t, pairs=p, hidden=args.hidden, vocab=args.vocab, threads=args.threads,
                           repeats=args.repeats, warmup=args.warmup, device=args.device, dtype=args.dtype)
                rows.append(run_one(cfg))
                print(table(rows).splitlines()[-1], flush=True)
    print(table(rows))
    write_json_atomic(args.out, {"command": " ".join(["python", "bench/kernels.py", *(argv or sys.argv[1:])]),
                                 "memory_method": "CPU: VmHWM after the run minus VmRSS before it (peak-RSS counter "
                                 "reset via /proc/self/clear_refs); CUDA: max_memory_allocated minus allocated "
                                 "before; fresh process per method and config",
                                 "dtype": args.dtype, "loss": "dpo", "machine": machine(args.device),
                                 "loadavg_1_5_15_before": load_before, "loadavg_1_5_15_after": os.getloadavg(),
                                 "results": rows}, indent=1)
    print(f"wrote {args.out}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

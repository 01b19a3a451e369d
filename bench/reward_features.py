"""How much of each oracle can the reward model's features see? Why SEA gains on VADER and not on the rubric.

SEA's epistemic reward model is an MLP ensemble on frozen features of (prompt, answer). If the features
cannot tell the oracle's better answer from its worse one, neither its Thompson draws nor its labels
can be better than its fit. This bench fits the reward model offline on random oracle-labelled pairs of
real answers and scores it on random pairs of held-out prompts.

Answers: the final evaluation of every finished run under `--runs_dirs` (each method's and seed's
trained policy on the 64 held-out evaluation prompts, plus the reference policy's answers), i.e. the
answers a reward model meets once training has moved the policy. Per split, the prompts are shuffled,
3/4 train and 1/4 test; a pair is two answers of one prompt that the oracle scores differently.

Feature maps:
* `minilm`, the default (`--erm_features minilm`): the MiniLM embedding of the prompt–answer pair;
* `minilm+prompt*answer`: adds the elementwise product of the prompt's and the answer's own MiniLM
  embeddings (the interaction term of SBERT-style pair classifiers). The rubric's relevance is the sum of
  that product, so on the rubric this map is handed one of the oracle's six criteria;
* `policy` (`--erm_features policy`): the frozen initial policy's last hidden state averaged over the
  answer's tokens (`PolicyHiddenFeatures`, fp32), the prompt in the loop's chat format. Answers are
  re-tokenised from their text, with the stop token appended when shorter than `--max_new_tokens` (the
  loop's responses carry it when they ended on it); `--policy none` leaves the map out;
* `criteria`, for an oracle that exposes them (the rubric): its own criteria, of which it is a linear
  function, so this row is what the learners reach with the right features.

Learners: `reward_model`, the ensemble as the loop trains it (EpistemicRewardModel defaults, rounds of
`--batch_size` pairs), scored by its mean reward; `logistic`, an L2 logistic regression on the
standardised feature difference fit on the same pairs (what a linear head gets from the features).

What it does not show: the pairs are random, not the ones an exploration rule picks (those are the
ones the heads disagree on, harder); one model, 64 prompts, 32-token answers. Written: OUT.json.

    python bench/reward_features.py --splits 3
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
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fastalign.atomic import write_json_atomic  # noqa: E402
from fastalign.config import DEFAULT_MODEL, RunConfig  # noqa: E402
from fastalign.explore.reward_model import EpistemicRewardModel  # noqa: E402
from fastalign.machine import cpu_model  # noqa: E402

ORACLES = ("vader", "rubric")  # the packaged oracles, scored in this process


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs_dirs", default=",".join(str(d) for d in sorted((REPO / "runs").glob("sample_efficiency*"))),
                    help="comma-separated sweep directories whose finished runs' final answers are used "
                         "(default: every runs/sample_efficiency* sweep)")
    ap.add_argument("--oracles", default="vader,rubric")
    ap.add_argument("--splits", type=int, default=3, help="prompt splits (seeds)")
    ap.add_argument("--train_pairs", default="80,160,320,640,1280", help="pairs seen when accuracy is measured")
    ap.add_argument("--test_pairs", type=int, default=2000)
    ap.add_argument("--batch_size", type=int, default=8, help="pairs per reward-model round, as in the loop")
    ap.add_argument("--policy", default=DEFAULT_MODEL,
                    help="the runs' initial policy (name or HF directory), whose hidden state is the `policy` map; "
                         "`none` leaves that map out")
    ap.add_argument("--max_new_tokens", type=int, default=RunConfig().max_new_tokens,
                    help="the runs' answer length: a shorter answer ended on the stop token")
    ap.add_argument("--cache", type=Path, default=REPO / "runs" / "reward_features" / "features.pt")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "reward_features")
    args = ap.parse_args(argv)
    args.train_pairs = sorted(int(k) for k in args.train_pairs.split(","))
    unknown = set(args.oracles.split(",")) - set(ORACLES)
    if unknown:
        ap.error(f"--oracles: unknown {', '.join(sorted(unknown))}; choose from {', '.join(ORACLES)}")
    if any(k % args.batch_size or k <= 0 for k in args.train_pairs):
        ap.error(f"--train_pairs {args.train_pairs}: each must be a positive multiple of --batch_size {args.batch_size}")
    return args


def final_answers(runs_dirs: list[Path]) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """Prompts, the distinct (prompt, answer) pairs of every finished run's final evaluation, and the runs."""
    seen: dict[str, set[str]] = {}
    runs = []
    for path in sorted(p for d in runs_dirs for p in d.glob("*/seed*/eval_responses.jsonl")):
        if not (path.parent / "summary.json").is_file():
            continue  # a run still going: its file is an intermediate evaluation
        runs.append(f"{path.parent.parent.parent.name}/{path.parent.parent.name}/{path.parent.name}")
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                seen.setdefault(row["prompt"], set()).update((row["reference"], row["policy"]))
    if len(seen) < 4:
        raise SystemExit(f"found answers for {len(seen)} prompts under {[str(d) for d in runs_dirs]}: "
                         "run a sample-efficiency sweep first (bench/sample_efficiency.py) or pass --runs_dirs")
    prompts = sorted(seen)
    return prompts, [(p, a) for p in prompts for a in sorted(seen[p])], runs


def embeddings(items: list[tuple[str, str]], cache: Path, embedder=None, policy: str = "none",
               max_new_tokens: int = 32) -> dict[str, torch.Tensor]:
    """Features of every item: MiniLM's pair embedding, prompt and answer each embedded alone (as the
    rubric embeds them), and the policy's hidden state unless `policy` is "none". Cached by the item list
    (and the policy), so a rerun over the same runs skips the encoders."""
    key = [list(x) for x in items]
    saved = torch.load(cache, weights_only=False) if cache.is_file() else {}
    if saved.get("items") != key:
        if embedder is None:
            from fastalign.explore.features import MiniLMFeatures

            embedder = MiniLMFeatures()
        alone = {t: embedder.embed([t])[0] for t in dict.fromkeys(t for pair in items for t in pair)}
        saved = {"items": key, "policies": {},
                 "features": {"pair": embedder([p for p, _ in items], [a for _, a in items]),
                              "prompt": torch.stack([alone[p] for p, _ in items]),
                              "answer": torch.stack([alone[a] for _, a in items])}}
        write_cache(cache, saved)  # before the policy's pass, so a run stopped there keeps the encoder's work
    saved.setdefault("policies", {})  # a cache written before the policy map
    if policy != "none" and policy not in saved["policies"]:
        saved["policies"][policy] = policy_hidden_states(items, policy, max_new_tokens)
        write_cache(cache, saved)
    return {**saved["features"], **({"policy": saved["policies"][policy]} if policy != "none" else {})}


def write_cache(cache: Path, saved: dict) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    torch.save(saved, tmp)
    tmp.replace(cache)


def policy_hidden_states(items: list[tuple[str, str]], policy: str, max_new_tokens: int) -> torch.Tensor:
    """[M, d] `--erm_features policy` of each (prompt, answer): the frozen initial policy's hidden state."""
    from fastalign.data import format_prompts
    from fastalign.explore.features import PolicyHiddenFeatures
    from fastalign.models import load_causal_lm, load_tokenizer, resolve_model_dir

    model_dir = resolve_model_dir(policy)
    tokenizer, model = load_tokenizer(model_dir), load_causal_lm(model_dir).eval()
    prompts = sorted({p for p, _ in items})
    formatted = format_prompts(tokenizer, prompts, RunConfig().max_prompt_tokens)
    prompt_ids = dict(zip(prompts, (p.token_ids for p in formatted)))

    def answer_ids(answer: str) -> list[int]:
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        return ids + [tokenizer.eos_token_id] if len(ids) < max_new_tokens else ids

    extractor = PolicyHiddenFeatures(model.get_decoder())
    chunk = 64
    return torch.cat([extractor([prompt_ids[p] for p, _ in items[i:i + chunk]],
                                [answer_ids(a) for _, a in items[i:i + chunk]])
                      for i in tqdm(range(0, len(items), chunk), desc="policy features", leave=False)])


class Known:
    """An embedder that returns the embeddings already computed (so the rubric scores without the encoder)."""

    def __init__(self, vectors: dict[str, torch.Tensor]):
        self.vectors = vectors

    def embed(self, texts):
        return torch.stack([self.vectors[t] for t in texts])


def random_pairs(groups: list[np.ndarray], scores: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """[n, 2] (better, worse) answer indices, each pair from one prompt of `groups`, never a tie."""
    usable = [g for g in groups if len(set(scores[g])) > 1]
    if not usable:
        raise ValueError("no prompt has two answers the oracle scores differently")
    out = []
    while len(out) < n:
        a, b = rng.choice(usable[rng.integers(len(usable))], size=2, replace=False)
        if scores[a] != scores[b]:
            out.append((a, b) if scores[a] > scores[b] else (b, a))
    return np.array(out)


def fit_reward_model(phi: torch.Tensor, train: np.ndarray, test: np.ndarray, checkpoints: list[int],
                     batch_size: int, seed: int) -> dict[int, float]:
    """Held-out accuracy of the loop's reward model after each checkpoint's number of pairs."""
    rm = EpistemicRewardModel(feature_dim=phi.shape[1], seed=seed)
    out = {}
    for start in range(0, checkpoints[-1], batch_size):
        chunk = train[start:start + batch_size]
        rm.add_pairs(phi[chunk[:, 0]], phi[chunk[:, 1]])
        rm.update()
        if start + batch_size in checkpoints:
            out[start + batch_size] = rm.accuracy(phi[test[:, 0]], phi[test[:, 1]])
    return out


def fit_logistic(phi: torch.Tensor, train: np.ndarray, test: np.ndarray, l2: float = 1e-3) -> float:
    """Held-out accuracy of a logistic regression on the standardised difference φ(better) − φ(worse).

    No intercept (the label of a pair flips with its order), so every training difference is labelled 1."""
    x = (phi[train[:, 0]] - phi[train[:, 1]]).double()
    scale = x.std(0).clamp(min=1e-8)
    x = x / scale
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.softplus(-(x @ w)).mean() + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    x_test = (phi[test[:, 0]] - phi[test[:, 1]]).double() / scale
    return float(((x_test @ w.detach()) > 0).double().mean())


def feature_maps(features: dict[str, torch.Tensor], criteria: dict[str, np.ndarray] | None) -> dict[str, torch.Tensor]:
    maps = {"minilm": features["pair"],
            "minilm+prompt*answer": torch.cat([features["pair"], features["prompt"] * features["answer"]], 1)}
    if "policy" in features:
        maps["policy"] = features["policy"]
    if criteria is not None:
        maps["criteria"] = torch.tensor(np.stack(list(criteria.values()), 1), dtype=torch.float32)
    return maps


def measure(scores: np.ndarray, maps: dict[str, torch.Tensor], groups_of: dict[str, np.ndarray], prompts: list[str],
            args, label: str = "") -> dict:
    """Per feature map and learner: held-out accuracy per split at each number of training pairs."""
    out = {name: {"reward_model": {str(k): [] for k in args.train_pairs},
                  "logistic": {str(k): [] for k in args.train_pairs}} for name in maps}
    for split in tqdm(range(args.splits), desc=f"{label} splits", leave=False):
        rng = np.random.default_rng(split)
        order = rng.permutation(len(prompts))
        cut = len(prompts) * 3 // 4
        train_groups = [groups_of[prompts[i]] for i in order[:cut]]
        test = random_pairs([groups_of[prompts[i]] for i in order[cut:]], scores, args.test_pairs, rng)
        train = random_pairs(train_groups, scores, args.train_pairs[-1], rng)
        for name, phi in maps.items():
            for k, acc in fit_reward_model(phi, train, test, args.train_pairs, args.batch_size, split).items():
                out[name]["reward_model"][str(k)].append(acc)
            for k in args.train_pairs:
                out[name]["logistic"][str(k)].append(fit_logistic(phi, train[:k], test))
    return out


def main(argv=None, embedder=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(0)
    runs_dirs = [Path(d) for d in args.runs_dirs.split(",") if d]
    prompts, items, runs = final_answers(runs_dirs)
    features = embeddings(items, args.cache, embedder, args.policy, args.max_new_tokens)
    known = Known({**dict(zip((p for p, _ in items), features["prompt"])),
                   **dict(zip((a for _, a in items), features["answer"]))})
    from fastalign.oracle import RubricOracle, VaderOracle

    oracles = {"vader": VaderOracle, "rubric": lambda: RubricOracle(embedder=known)}
    groups_of: dict[str, list[int]] = {}
    for i, (p, _) in enumerate(items):
        groups_of.setdefault(p, []).append(i)
    groups_of = {p: np.array(g) for p, g in groups_of.items()}
    argv = sys.argv[1:] if argv is None else list(argv)
    result = {"setup": {"command": " ".join(shlex.quote(x) for x in ["python", "bench/reward_features.py", *argv]),
                        "cpu": cpu_model(), "dtype": "fp32", "policy": args.policy,
                        "runs_dirs": [str(d.resolve().relative_to(REPO)) if d.resolve().is_relative_to(REPO) else str(d)
                                      for d in runs_dirs],
                        "runs": runs, "prompts": len(prompts), "answers": len(items), "splits": args.splits,
                        "test_pairs": args.test_pairs, "batch_size": args.batch_size, "date": time.strftime("%Y-%m-%d")},
              "oracles": {}}
    ps, answers = [p for p, _ in items], [a for _, a in items]
    for name in args.oracles.split(","):
        oracle = oracles[name]()
        scores = np.asarray(oracle.score(ps, answers), dtype=np.float64)
        criteria = oracle.criteria(ps, answers) if hasattr(oracle, "criteria") else None
        result["oracles"][name] = measure(scores, feature_maps(features, criteria), groups_of, prompts, args, name)
        print(f"\n{name}: held-out accuracy on random pairs, mean over {args.splits} splits, after "
              + " / ".join(map(str, args.train_pairs)) + " pairs")
        for feat, learners in result["oracles"][name].items():
            for learner, accs in learners.items():
                print(f"  {feat:22s} {learner:13s} " + " / ".join(f"{np.mean(v):.3f}" for v in accs.values()))
    print(f"wrote {write_json_atomic(args.out.with_suffix('.json'), result, indent=1)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One online round — sample → select → query → learn → sync — and the loop around it.

Every stage is a component handed in by `train.py`, so a researcher can swap any of them (another
explorer, oracle or learner) and keep the rest. Per-stage wall times are logged each round; they are
what the throughput bench reports.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import DATASET_RESPONSES, POLICY_LABELS, REFERENCE_SAMPLES, RunConfig
from .data import PromptStream
from .engine import GenerationEngine
from .eval import WinRateEvaluator, plot_win_rate
from .learner.distributed import all_reduce_sum, is_main_process
from .learner.learner import PolicyLearner
from .metrics import MetricsLogger, read_metrics
from .oracle import Oracle
from .types import Completion, Preference, PreferencePair, Prompt

STAGES = ("generate", "select", "oracle", "reward_model", "learn", "sync")


@dataclass
class LoopState:
    round: int = 0
    queries: int = 0  # oracle queries over all ranks
    pairs_trained: int = 0
    ties: int = 0
    start_time: float = field(default_factory=time.time)
    last_eval: dict = field(default_factory=dict)


def make_pairs(prompts: list[Prompt], completions: list[list[Completion]], idx: np.ndarray,
               pref: Preference, reference_samples: list[Completion] | None = None,
               policy_labels: bool = False) -> list[PreferencePair]:
    """Chosen/rejected records from the selected indices and the oracle's labels (with policy_labels the
    pairs stay unlabelled, in selection order, for the learner to label); reference_samples: ỹ per prompt."""
    pairs = []
    for k, (p, row) in enumerate(zip(prompts, completions)):
        a, b = row[idx[k, 0]], row[idx[k, 1]]
        chosen, rejected = (a, b) if pref.a_wins[k] else (b, a)
        pair = PreferencePair(
            prompt_ids=p.token_ids, chosen_ids=chosen.token_ids, rejected_ids=rejected.token_ids,
            chosen_text=chosen.text, rejected_text=rejected.text, prompt_text=p.instruction,
            chosen_behaviour_logprob=chosen.logprob_sum, rejected_behaviour_logprob=rejected.logprob_sum,
            policy_labels=policy_labels)
        if reference_samples is not None:
            pair.extra_ids, pair.extra_ref_logprob = reference_samples[k].token_ids, reference_samples[k].logprob_sum
        pairs.append(pair)
    return pairs


class OnlineLoop:
    def __init__(self, cfg: RunConfig, *, stream: PromptStream, engine: GenerationEngine, explorer, oracle: Oracle,
                 learner: PolicyLearner, evaluator: WinRateEvaluator, metrics: MetricsLogger, rank: int = 0,
                 world_size: int = 1, tokenizer=None, dataset_responses: dict[str, list[Completion]] | None = None):
        if cfg.algorithm in DATASET_RESPONSES and not dataset_responses:
            raise ValueError(f"--algorithm {cfg.algorithm} needs dataset_responses (prompt instruction → responses)")
        self.dataset_responses = dataset_responses
        self.cfg, self.stream, self.engine, self.explorer = cfg, stream, engine, explorer
        self.oracle, self.learner, self.evaluator, self.metrics = oracle, learner, evaluator, metrics
        self.rank, self.world_size, self.tokenizer = rank, world_size, tokenizer
        self.state = LoopState()
        self.out = Path(cfg.output_dir)

    # ------------------------------------------------------------------ one round
    def round(self) -> dict[str, float]:
        cfg, times = self.cfg, {}
        t = time.perf_counter()
        prompts = self.stream.next_batch(cfg.batch_size)
        seed = cfg.seed * 1_000_003 + self.state.round * self.world_size + self.rank
        if self.dataset_responses is not None:  # SAIL-DP: the prompt set's own responses
            completions = [self.dataset_responses[p.instruction] for p in prompts]
        else:
            completions = self.engine.generate([p.token_ids for p in prompts], n=cfg.samples_per_prompt,
                                               max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                               top_p=cfg.top_p, seed=seed)
        times["generate"], t = time.perf_counter() - t, time.perf_counter()

        idx = self.explorer.select(prompts, completions)
        keep = np.flatnonzero(idx[:, 0] >= 0)  # rows whose responses were all identical have no pair
        prompts, completions, idx = [prompts[k] for k in keep], [completions[k] for k in keep], idx[keep]
        times["select"], t = time.perf_counter() - t, time.perf_counter()

        reference_samples = None
        if cfg.algorithm in REFERENCE_SAMPLES:  # SELM/XPO: ỹ ~ π_ref with the reference's weights in the engine
            reference_samples = self._reference_samples(prompts, seed + 500_000_017)
            times["reference_sample"], t = time.perf_counter() - t, time.perf_counter()

        if cfg.algorithm in POLICY_LABELS:  # SAIL-PP/DP: the learner labels the pairs, the oracle is not asked
            pref = Preference(prob_a=np.full(len(prompts), np.nan), a_wins=np.ones(len(prompts), dtype=bool))
        else:
            pref = self.oracle.compare([p.instruction for p in prompts],
                                       [row[i].text for row, i in zip(completions, idx[:, 0])],
                                       [row[j].text for row, j in zip(completions, idx[:, 1])])
        times["oracle"], t = time.perf_counter() - t, time.perf_counter()

        informative = pref.prob_a != 0.5  # a tie carries no preference (NaN: no oracle, the learner labels)
        explore_metrics = self.explorer.observe(keep, idx, pref.a_wins, informative)
        times["reward_model"], t = time.perf_counter() - t, time.perf_counter()

        pairs = make_pairs(prompts, completions, idx, pref, reference_samples, cfg.algorithm in POLICY_LABELS)
        if self.world_size == 1:  # drop ties; ranks in a group keep them at weight 0 to stay in step
            pairs = [p for p, keep_it in zip(pairs, informative) if keep_it]
            weights = [1.0] * len(pairs)
        else:
            weights = informative.astype(float).tolist()
        train_metrics = self.learner.step(pairs, weights) if sum(weights) > 0 or self.world_size > 1 else {}
        times["learn"], t = time.perf_counter() - t, time.perf_counter()

        if train_metrics or reference_samples is not None:  # also puts the policy back after ỹ ~ π_ref
            self.engine.update_weights(self.learner.named_weights())
        times["sync"] = time.perf_counter() - t

        self.state.round += 1
        self.state.queries = int(all_reduce_sum(self.oracle.queries))
        self.state.pairs_trained += len(pairs)
        self.state.ties += int((~informative).sum())
        total = sum(times.values())
        row = {"round": self.state.round, **train_metrics, **explore_metrics,
               **{f"time/{k}": v for k, v in times.items()},
               "pairs_per_sec": len(prompts) * self.world_size / total, "ties": int((~informative).sum()),
               "response_tokens": float(np.mean([len(c.token_ids) for group in completions for c in group]))}
        self.metrics.log("train", self.state.queries, row)
        return row

    def _reference_samples(self, prompts: list[Prompt], seed: int) -> list[Completion]:
        """One sample per prompt from the reference: its weights go into the engine (no second model copy);
        the round's sync puts the policy's back. Completion.logprob_sum is then log π_ref(ỹ), raw, at T=1."""
        self.engine.update_weights(self.learner.reference_weights())
        cfg = self.cfg
        samples = self.engine.generate([p.token_ids for p in prompts], n=1, max_new_tokens=cfg.max_new_tokens,
                                       temperature=cfg.temperature, top_p=cfg.top_p, seed=seed)
        return [group[0] for group in samples]

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        t = time.perf_counter()
        # before the first update the policy is the reference: its greedy responses are already known
        metrics, responses = self.evaluator.evaluate(self.evaluator.reference if self.learner.steps == 0 else None)
        metrics["time/eval"] = time.perf_counter() - t
        self.state.last_eval = metrics
        self.metrics.log("eval", self.state.queries, {"round": self.state.round, **metrics})
        if is_main_process():
            self._write_responses(responses)
        return metrics

    def _write_responses(self, responses: list[Completion]) -> None:
        path = self.out / "eval_responses.jsonl"
        with path.open("w") as f:
            for p, ref, pol in zip(self.evaluator.prompts, self.evaluator.reference, responses):
                f.write(json.dumps({"prompt": p.instruction, "reference": ref.text, "policy": pol.text}) + "\n")

    # ------------------------------------------------------------------ the loop
    def should_stop(self) -> str | None:
        cfg, s = self.cfg, self.state
        if s.round >= cfg.rounds:
            return f"{cfg.rounds} rounds done"
        if cfg.max_queries is not None and s.queries >= cfg.max_queries:
            return f"query budget {cfg.max_queries} reached"
        if cfg.time_budget_minutes is not None and time.time() - s.start_time >= 60 * cfg.time_budget_minutes:
            return f"time budget {cfg.time_budget_minutes} min reached"
        return None

    def run(self) -> dict:
        from tqdm.auto import tqdm

        bar = tqdm(total=self.cfg.rounds, desc="rounds", disable=not (self.cfg.progress and is_main_process()),
                   dynamic_ncols=True)
        self.evaluate()
        while (reason := self.should_stop()) is None:
            row = self.round()
            if self.state.round % self.cfg.eval_every == 0:
                self.evaluate()
            bar.update(1)
            bar.set_postfix(queries=self.state.queries, win=f"{100 * self.state.last_eval['win_rate']:.0f}%",
                            pairs_s=f"{row['pairs_per_sec']:.2f}", loss=f"{row.get('loss', float('nan')):.3f}")
        bar.close()
        if self.state.round % self.cfg.eval_every:
            self.evaluate()
        return self.finish(reason)

    def finish(self, reason: str) -> dict:
        summary = {"stopped": reason, "rounds": self.state.round, "queries": self.state.queries,
                   "pairs_trained": self.state.pairs_trained, "tied_pairs": self.state.ties,
                   "wall_time_s": round(time.time() - self.state.start_time, 1), **self.state.last_eval}
        if is_main_process():
            evals = read_metrics(self.metrics.path, kind="eval")
            plot_win_rate(evals, self.out / "win_rate.png", title=f"{self.cfg.loss} · {self.cfg.oracle} oracle")
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if self.cfg.save_final:
            final = self.out / "final"
            self.learner.save_pretrained(final, self.tokenizer)  # every rank: ZeRO-3 gathers collectively
            summary["final_model"] = str(final)
        return summary

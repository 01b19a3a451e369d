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

from .config import RunConfig
from .data import PromptStream
from .engine import GenerationEngine
from .eval import WinRateEvaluator, plot_win_rate
from .learner.distributed import all_reduce_sum, is_main_process
from .learner.learner import PolicyLearner
from .metrics import MetricsLogger, read_metrics
from .oracle import Oracle
from .types import Completion, PreferencePair, Prompt

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
               a_wins: np.ndarray, from_oracle: np.ndarray | None = None) -> list[PreferencePair]:
    """Chosen/rejected records from the selected indices and their labels (a = idx[:, 0])."""
    pairs = []
    from_oracle = np.ones(len(prompts), dtype=bool) if from_oracle is None else from_oracle
    for k, (p, row) in enumerate(zip(prompts, completions)):
        a, b = row[idx[k, 0]], row[idx[k, 1]]
        chosen, rejected = (a, b) if a_wins[k] else (b, a)
        pairs.append(PreferencePair(
            prompt_ids=p.token_ids, chosen_ids=chosen.token_ids, rejected_ids=rejected.token_ids,
            chosen_text=chosen.text, rejected_text=rejected.text, prompt_text=p.instruction,
            chosen_behaviour_logprob=chosen.logprob_sum, rejected_behaviour_logprob=rejected.logprob_sum,
            from_oracle=bool(from_oracle[k])))
    return pairs


class OnlineLoop:
    def __init__(self, cfg: RunConfig, *, stream: PromptStream, engine: GenerationEngine, explorer, oracle: Oracle,
                 learner: PolicyLearner, evaluator: WinRateEvaluator, metrics: MetricsLogger, rank: int = 0,
                 world_size: int = 1, tokenizer=None):
        self.cfg, self.stream, self.engine, self.explorer = cfg, stream, engine, explorer
        self.oracle, self.learner, self.evaluator, self.metrics = oracle, learner, evaluator, metrics
        self.rank, self.world_size, self.tokenizer = rank, world_size, tokenizer
        self.state = LoopState()
        self.out = Path(cfg.output_dir)
        self.engine_weights = "reference"  # the engine starts with the initial (= reference) weights

    # ------------------------------------------------------------------ one round
    def round(self) -> dict[str, float]:
        cfg, times = self.cfg, {}
        t = time.perf_counter()
        prompts = self.stream.next_batch(cfg.batch_size)
        seed = cfg.seed * 1_000_003 + self.state.round * self.world_size + self.rank
        if cfg.responses_from == "reference":
            self.load_engine("reference")
        completions = self.engine.generate([p.token_ids for p in prompts], n=cfg.samples_per_prompt,
                                           max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                           top_p=cfg.top_p, seed=seed)
        times["generate"], t = time.perf_counter() - t, time.perf_counter()

        idx = self.explorer.select(prompts, completions, queries=self.state.queries)
        keep = np.flatnonzero(idx[:, 0] >= 0)  # rows whose responses were all identical have no pair
        prompts, completions, idx = [prompts[k] for k in keep], [completions[k] for k in keep], idx[keep]
        by_model = self.explorer.model_labelled[keep]  # mixed preference: labelled by the reward model
        times["select"], t = time.perf_counter() - t, time.perf_counter()

        asked = np.flatnonzero(~by_model)
        pref = self.oracle.compare([prompts[k].instruction for k in asked],
                                   [completions[k][idx[k, 0]].text for k in asked],
                                   [completions[k][idx[k, 1]].text for k in asked])
        a_wins, informative = np.ones(len(prompts), dtype=bool), np.ones(len(prompts), dtype=bool)
        a_wins[asked], informative[asked] = pref.a_wins, pref.prob_a != 0.5  # a tie carries no preference
        times["oracle"], t = time.perf_counter() - t, time.perf_counter()

        explore_metrics = self.explorer.observe(keep, idx, a_wins, informative & ~by_model)
        times["reward_model"], t = time.perf_counter() - t, time.perf_counter()

        pairs = make_pairs(prompts, completions, idx, a_wins, from_oracle=~by_model)
        if self.world_size == 1:  # drop ties; ranks in a group keep them at weight 0 to stay in step
            pairs = [p for p, keep_it in zip(pairs, informative) if keep_it]
            weights = [1.0] * len(pairs)
        else:
            weights = informative.astype(float).tolist()
        train_metrics = self.learner.step(pairs, weights) if sum(weights) > 0 or self.world_size > 1 else {}
        times["learn"], t = time.perf_counter() - t, time.perf_counter()

        if train_metrics and cfg.responses_from == "policy":
            self.load_engine("policy")
        times["sync"] = time.perf_counter() - t

        self.state.round += 1
        self.state.queries = int(all_reduce_sum(self.oracle.queries))
        self.state.pairs_trained += len(pairs)
        ties = int((~informative).sum())
        self.state.ties += ties
        total = sum(times.values())
        row = {"round": self.state.round, **train_metrics, **explore_metrics,
               **{f"time/{k}": v for k, v in times.items()},
               "pairs_per_sec": len(prompts) * self.world_size / total, "ties": ties,
               "model_labelled": int(by_model.sum()),
               "response_tokens": float(np.mean([len(c.token_ids) for group in completions for c in group]))}
        self.metrics.log("train", self.state.queries, row)
        return row

    def load_engine(self, weights: str) -> None:
        """Put the current policy's or the frozen reference's weights into the engine, unless it holds them.

        The engine is tagged with what it holds: "reference", or the policy after a given number of steps
        (before the first step the policy is the reference).
        """
        want = "reference" if weights == "reference" or self.learner.steps == 0 else f"policy@{self.learner.steps}"
        if want == self.engine_weights:
            return
        source = self.learner.reference.named_parameters() if want == "reference" else self.learner.named_weights()
        self.engine.update_weights(source)
        self.engine_weights = want

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        t = time.perf_counter()
        self.load_engine("policy")
        # before the first update the policy is the reference: its greedy responses are already known
        metrics, responses = self.evaluator.evaluate(self.evaluator.reference if self.learner.steps == 0 else None)
        if self.cfg.eval_best_of_n:
            seed = self.cfg.seed * 1_000_003 + 999_983 * (self.state.round + 1)
            metrics.update(self.evaluator.evaluate_best_of_n(self.explorer.score, self.cfg.eval_best_of_n, seed,
                                                             self.cfg.temperature, self.cfg.top_p))
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

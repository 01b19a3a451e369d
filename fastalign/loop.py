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

from .checkpoint import Checkpointer, ProcessRng
from .config import DATASET_RESPONSES, POLICY_LABELS, REFERENCE_SAMPLES, RunConfig
from .data import PromptStream
from .engine import GenerationEngine
from .eval import WinRateEvaluator, plot_win_rate
from .faults import GenerationError, RunInterrupted, StopSignals, write_failed_batch
from .learner.distributed import all_reduce_max, all_reduce_sum, is_main_process
from .learner.learner import NonFiniteLossError, PolicyLearner
from .metrics import MetricsLogger, read_metrics
from .oracle import Oracle
from .oracle.durable import OracleFailure
from .types import Completion, PreferencePair, Prompt

STAGES = ("generate", "select", "reference_sample", "oracle", "reward_model", "learn", "sync")  # time/* per round


@dataclass
class LoopState:
    round: int = 0
    queries: int = 0  # oracle queries over all ranks
    pairs_trained: int = 0
    ties: int = 0
    start_time: float = field(default_factory=time.time)
    last_eval: dict = field(default_factory=dict)
    eval_round: int = -1  # the round of last_eval

    def state_dict(self) -> dict:
        return {"round": self.round, "queries": self.queries, "pairs_trained": self.pairs_trained,
                "ties": self.ties, "elapsed": time.time() - self.start_time, "last_eval": dict(self.last_eval),
                "eval_round": self.eval_round}

    def load_state_dict(self, state: dict) -> None:
        self.round, self.queries = int(state["round"]), int(state["queries"])
        self.pairs_trained, self.ties = int(state["pairs_trained"]), int(state["ties"])
        self.start_time, self.last_eval = time.time() - float(state["elapsed"]), dict(state["last_eval"])
        self.eval_round = int(state["eval_round"])


def make_pairs(prompts: list[Prompt], completions: list[list[Completion]], idx: np.ndarray,
               a_wins: np.ndarray, from_oracle: np.ndarray | None = None,
               reference_samples: list[Completion] | None = None, policy_labels: bool = False) -> list[PreferencePair]:
    """Chosen/rejected records from the selected indices and their labels (a = idx[:, 0]). With policy_labels
    the pairs stay in selection order for the learner to label; reference_samples: one ỹ per prompt."""
    pairs = []
    from_oracle = np.ones(len(prompts), dtype=bool) if from_oracle is None else from_oracle
    for k, (p, row) in enumerate(zip(prompts, completions)):
        a, b = row[idx[k, 0]], row[idx[k, 1]]
        chosen, rejected = (a, b) if a_wins[k] else (b, a)
        pair = PreferencePair(
            prompt_ids=p.token_ids, chosen_ids=chosen.token_ids, rejected_ids=rejected.token_ids,
            chosen_text=chosen.text, rejected_text=rejected.text, prompt_text=p.instruction,
            chosen_behaviour_logprob=chosen.logprob_sum, rejected_behaviour_logprob=rejected.logprob_sum,
            from_oracle=bool(from_oracle[k]), policy_labels=policy_labels)
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
        self.engine_weights = "reference"  # the engine starts with the initial (= reference) weights
        self.checkpointer: Checkpointer | None = None  # set by enable_checkpoints()
        self.signals = StopSignals()
        self.run_info: dict = {}  # what the run's set-up reports (e.g. prompts skipped), added to the summary

    # ------------------------------------------------------------------ checkpoints
    def enable_checkpoints(self) -> Checkpointer:
        """Checkpoint every cfg.checkpoint_every rounds, on SIGTERM/SIGINT, on a fault and at the end."""
        components = {"loop": self.state, "stream": self.stream, "explorer": self.explorer, "rng": ProcessRng()}
        if hasattr(self.oracle, "state_dict"):
            components["oracle"] = self.oracle
        self.checkpointer = Checkpointer(self.cfg, self.learner, components, rank=self.rank,
                                         world_size=self.world_size, metrics_path=self.metrics.path)
        return self.checkpointer

    def resume(self, path: Path) -> None:
        """Continue from a checkpoint: every component's state, then the engine gets the learner's weights."""
        self.checkpointer.restore(path)
        self.load_engine("policy")

    def _guarded(self, step, rollback: bool):
        """Run `step`; if the oracle or the engine fails, checkpoint first: a round's partial progress is
        rolled back to its start (the learner has not stepped yet), an evaluation's is simply redone."""
        if self.checkpointer is None:
            return step()
        before = self.checkpointer.states() if rollback else None
        try:
            return step()
        except (OracleFailure, GenerationError) as exc:
            cp = self.checkpointer
            if self.world_size == 1:  # a lone failing rank cannot join a collective save
                done = cp.last_saved is not None and cp.last_saved.name == f"checkpoint-{self.state.round:06d}"
                path = cp.last_saved if done else cp.save(self.state.round, self.state.queries, states=before)
                exc.args = (f"{exc.args[0]}; state saved to {path}, resume with `--resume auto`",)
            raise

    def _after_round(self) -> None:
        """Periodic checkpoint, then the stop conditions that checkpoint first: a signal, divergence."""
        cp, cfg = self.checkpointer, self.cfg
        signum = int(all_reduce_max(self.signals.received or 0))
        diverged = self.learner.skipped_steps > cfg.max_nonfinite_steps
        due = cfg.checkpoint_every and self.state.round % cfg.checkpoint_every == 0
        if cp is not None and (due or signum or diverged):
            cp.save(self.state.round, self.state.queries)
        saved = cp.last_saved if cp is not None else None
        if signum:
            raise RunInterrupted(signum, self.state.round, saved)
        if diverged:
            raise NonFiniteLossError(
                f"{self.learner.skipped_steps} steps had a NaN/inf loss or gradient (max_nonfinite_steps="
                f"{cfg.max_nonfinite_steps}): the run is diverging; lower --learning_rate or --beta, or check the "
                f"oracle for extreme values; state saved to {saved}")

    # ------------------------------------------------------------------ one round
    def round(self) -> dict[str, float]:
        cfg, times = self.cfg, {}
        t = time.perf_counter()
        prompts = self.stream.next_batch(self.explorer.prompts_per_round(cfg.batch_size))  # APL: a larger pool
        seed = cfg.seed * 1_000_003 + self.state.round * self.world_size + self.rank
        if self.dataset_responses is not None:  # SAIL-DP: the prompt set's own responses
            completions = [self.dataset_responses[p.instruction] for p in prompts]
        else:
            if cfg.responses_from == "reference":  # offline DPO: pairs from the frozen reference
                self.load_engine("reference")
            completions = self._generate(prompts, seed)
        times["generate"], t = time.perf_counter() - t, time.perf_counter()

        idx = self.explorer.select(prompts, completions, queries=self.state.queries)
        keep = np.flatnonzero(idx[:, 0] >= 0)  # rows whose responses were all identical have no pair
        prompts, completions, idx = [prompts[k] for k in keep], [completions[k] for k in keep], idx[keep]
        by_model = self.explorer.model_labelled[keep]  # mixed preference: labelled by the reward model
        times["select"], t = time.perf_counter() - t, time.perf_counter()

        reference_samples = None
        if cfg.algorithm in REFERENCE_SAMPLES:  # SELM/XPO: ỹ ~ π_ref with the reference's weights in the engine
            reference_samples = self._reference_samples(prompts, seed + 500_000_017)
            times["reference_sample"], t = time.perf_counter() - t, time.perf_counter()

        # asked: the rows the oracle labels; SAIL-PP/DP's learner and mixed preference's reward model label the rest
        asked = np.zeros(0, dtype=int) if cfg.algorithm in POLICY_LABELS else np.flatnonzero(~by_model)
        pref = self.oracle.compare([prompts[k].instruction for k in asked],
                                   [completions[k][idx[k, 0]].text for k in asked],
                                   [completions[k][idx[k, 1]].text for k in asked])
        a_wins, informative = np.ones(len(prompts), dtype=bool), np.ones(len(prompts), dtype=bool)
        a_wins[asked], informative[asked] = pref.a_wins, pref.prob_a != 0.5  # a tie carries no preference
        times["oracle"], t = time.perf_counter() - t, time.perf_counter()

        explore_metrics = self.explorer.observe(keep, idx, a_wins, informative & ~by_model)
        times["reward_model"], t = time.perf_counter() - t, time.perf_counter()

        pairs = make_pairs(prompts, completions, idx, a_wins, from_oracle=~by_model,
                           reference_samples=reference_samples, policy_labels=cfg.algorithm in POLICY_LABELS)
        if self.world_size == 1:  # drop ties; ranks in a group keep them at weight 0 to stay in step
            pairs = [p for p, keep_it in zip(pairs, informative) if keep_it]
            weights = [1.0] * len(pairs)
        else:
            weights = informative.astype(float).tolist()
        train_metrics = self.learner.step(pairs, weights) if sum(weights) > 0 or self.world_size > 1 else {}
        times["learn"], t = time.perf_counter() - t, time.perf_counter()

        if cfg.responses_from == "policy":  # the new policy, or back from the reference after ỹ ~ π_ref
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
               "model_labelled": int(by_model.sum()), "learner_steps": self.learner.steps,
               "response_tokens": float(np.mean([len(c.token_ids) for group in completions for c in group]))}
        self.metrics.log("train", self.state.queries, row)
        return row

    def _generate(self, prompts: list[Prompt], seed: int, n: int | None = None) -> list[list[Completion]]:
        """n samples per prompt (default samples_per_prompt); an engine failure names the round and the batch."""
        cfg = self.cfg
        try:
            return self.engine.generate([p.token_ids for p in prompts], n=n or cfg.samples_per_prompt,
                                        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                        top_p=cfg.top_p, seed=seed)
        except Exception as exc:  # noqa: BLE001 — any engine failure is reported with its batch
            batch = write_failed_batch(self.out / f"failed_batch-rank{self.rank}.jsonl", prompts)
            raise GenerationError(self.state.round + 1, prompts, exc, batch) from exc

    def _reference_samples(self, prompts: list[Prompt], seed: int) -> list[Completion]:
        """One sample per prompt from the reference: its weights go into the engine (no second model copy);
        the round's sync puts the policy's back. Completion.logprob_sum is then log π_ref(ỹ), raw, at T=1."""
        self.load_engine("reference")
        return [group[0] for group in self._generate(prompts, seed, n=1)]

    def load_engine(self, weights: str) -> None:
        """Put the current policy's or the frozen reference's weights into the engine, unless it holds them.

        The engine is tagged with what it holds: "reference", or the policy after a given number of steps
        (before the first step the policy is the reference).
        """
        want = "reference" if weights == "reference" or self.learner.steps == 0 else f"policy@{self.learner.steps}"
        if want == self.engine_weights:
            return
        source = self.learner.reference_weights() if want == "reference" else self.learner.named_weights()
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
        self.state.last_eval, self.state.eval_round = metrics, self.state.round
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
        if self.state.eval_round == -1 and self.run_info:
            self.metrics.log("data", 0, self.run_info)  # how much of the input the run actually uses
        if self.state.eval_round != self.state.round and self.state.round % self.cfg.eval_every == 0:
            self.evaluate()  # round 0, or a resume whose checkpoint was written before its round's evaluation
        self.signals.install()
        try:
            while (reason := self.should_stop()) is None:
                row = self._guarded(self.round, rollback=True)
                if self.state.round % self.cfg.eval_every == 0:
                    self._guarded(self.evaluate, rollback=False)
                self._after_round()
                bar.update(1)
                bar.set_postfix(queries=self.state.queries, win=f"{100 * self.state.last_eval['win_rate']:.0f}%",
                                pairs_s=f"{row['pairs_per_sec']:.2f}", loss=f"{row.get('loss', float('nan')):.3f}")
        finally:
            self.signals.restore()
            bar.close()
        if self.state.eval_round != self.state.round:
            self.evaluate()
        cp = self.checkpointer
        if cp is not None and (cp.last_saved is None or cp.last_saved.name != f"checkpoint-{self.state.round:06d}"):
            cp.save(self.state.round, self.state.queries)  # the end state, to extend the run with more --rounds
        return self.finish(reason)

    def finish(self, reason: str) -> dict:
        summary = {"stopped": reason, "rounds": self.state.round, "queries": self.state.queries,
                   "pairs_trained": self.state.pairs_trained, "tied_pairs": self.state.ties,
                   "wall_time_s": round(time.time() - self.state.start_time, 1), **self.state.last_eval,
                   **self.run_info}
        if hasattr(self.oracle, "paid_queries"):  # a DurableOracle: what was paid vs answered from its log
            summary["oracle_paid_queries"] = int(all_reduce_sum(self.oracle.paid_queries))
            summary["oracle_paid_eval_queries"] = int(all_reduce_sum(self.oracle.paid_eval_queries))
            summary["oracle_replayed_queries"] = int(all_reduce_sum(self.oracle.replayed_queries))
        if is_main_process():
            evals = read_metrics(self.metrics.path, kind="eval")
            plot_win_rate(evals, self.out / "win_rate.png", title=f"{self.cfg.loss} · {self.cfg.oracle} oracle")
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if self.cfg.save_final:
            final = self.out / "final"
            self.learner.save_pretrained(final, self.tokenizer)  # every rank: ZeRO-3 gathers collectively
            summary["final_model"] = str(final)
        return summary

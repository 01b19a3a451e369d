"""One online round — sample → select → query → learn → sync — and the loop around it.

Every stage is a component handed in by `train.py`, so a researcher can swap any of them (another
explorer, oracle, learner or algorithm) and keep the rest; the algorithm object answers where responses
come from and who labels them. Per-stage wall times are logged each round; they are what the throughput
bench reports.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from .algorithms import Algorithm
from .atomic import write_json_atomic
from .checkpoint import Checkpointer, ProcessRng
from .config import RunConfig
from .data import PromptStream
from .engine import GenerationEngine
from .eval import WinRateEvaluator, plot_win_rate
from .faults import GenerationError, RunInterrupted, StopSignals, write_failed_batch
from .learner.distributed import all_reduce_max, all_reduce_sum, is_main_process
from .learner.learner import NonFiniteLossError, PolicyLearner
from .metrics import MetricsLogger, read_metrics
from .oracle import Oracle
from .oracle.durable import OracleFailure
from .seeding import stream_rng, stream_seed
from .types import ORACLE, POLICY, REFERENCE, REWARD_MODEL, Completion, Preference, PreferencePair, Prompt

STAGES = ("generate", "select", "extra_responses", "oracle", "reward_model", "learn", "sync")  # time/* per round


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


def make_pairs(prompts: list[Prompt], completions: list[list[Completion]], idx: np.ndarray, a_wins: np.ndarray,
               labelled_by: np.ndarray, extra: list[Completion] | None = None) -> list[PreferencePair]:
    """Chosen/rejected records from the selected indices (a = idx[:, 0]), their labels and who gave them;
    extra: one more response per prompt for the algorithm's loss (SELM's ỹ)."""
    pairs = []
    for k, (p, row) in enumerate(zip(prompts, completions)):
        a, b = row[idx[k, 0]], row[idx[k, 1]]
        chosen, rejected = (a, b) if a_wins[k] else (b, a)
        pair = PreferencePair(prompt_ids=p.token_ids, chosen_ids=chosen.token_ids, rejected_ids=rejected.token_ids,
                              labelled_by=str(labelled_by[k]), chosen_from=chosen.source,
                              rejected_from=rejected.source)
        if extra is not None:
            pair.extra_ids, pair.extra_ref_logprob = extra[k].token_ids, extra[k].logprob_sum
        pairs.append(pair)
    return pairs


def fixed_pairs(completions: list[list[Completion]]) -> np.ndarray:
    """[B, 2] = (0, 1) per row, -1 where the two responses are identical (no preference to learn)."""
    same = np.array([row[0].token_ids == row[1].token_ids for row in completions], dtype=bool)
    idx = np.tile(np.array([0, 1]), (len(completions), 1))
    idx[same] = -1
    return idx


def queried_score(pref: Preference) -> dict[str, float]:
    """The oracle's mean score of the responses it judged this round, over all ranks: the online reward
    curve, smoother than the greedy evaluation. Empty for an oracle without scores (a judge)."""
    scores = [] if pref.scores_a is None else [pref.scores_a, pref.scores_b]
    total = all_reduce_sum(float(sum(np.sum(s) for s in scores)))
    count = all_reduce_sum(float(sum(len(s) for s in scores)))
    return {"oracle_score": total / count} if count else {}


class OnlineLoop:
    def __init__(self, cfg: RunConfig, *, stream: PromptStream, engine: GenerationEngine, explorer, oracle: Oracle,
                 learner: PolicyLearner, evaluator: WinRateEvaluator, metrics: MetricsLogger, algorithm: Algorithm,
                 rank: int = 0, world_size: int = 1, tokenizer=None):
        self.cfg, self.stream, self.engine, self.explorer = cfg, stream, engine, explorer
        self.algorithm = algorithm
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
        components = {"loop": self.state, "stream": self.stream, "explorer": self.explorer,
                      "algorithm": self.algorithm, "rng": ProcessRng()}
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
    def seed_for(self, stream: str) -> int:
        """This round's seed of a named stream on this rank (fastalign.seeding)."""
        return stream_seed(self.cfg.seed, stream, self.state.round, self.rank)

    def round(self) -> dict[str, float]:
        cfg, algorithm, times = self.cfg, self.algorithm, {}
        t = time.perf_counter()
        prompts = self.stream.next_batch(self.explorer.prompts_per_round(cfg.batch_size))  # APL: a pool
        completions = algorithm.sample(self, prompts, self.seed_for)
        times["generate"], t = time.perf_counter() - t, time.perf_counter()

        idx = fixed_pairs(completions) if algorithm.fixed_pair else self.explorer.select(
            prompts, completions, queries=self.state.queries)
        by_model = (np.zeros(len(prompts), dtype=bool) if algorithm.fixed_pair else self.explorer.model_labelled)
        keep = np.flatnonzero(idx[:, 0] >= 0)  # rows whose responses were all identical have no pair
        prompts, completions = [prompts[k] for k in keep], [completions[k] for k in keep]
        idx, by_model = idx[keep], by_model[keep]
        labelled_by = algorithm.label_sources(len(prompts), stream_rng(cfg.seed, "label-sources", self.state.round,
                                                                       self.rank))
        labelled_by[by_model] = REWARD_MODEL  # SEA mixed preference: the reward model's confident pair
        within = np.flatnonzero(self.within_budget(labelled_by == ORACLE))
        if within.size < len(prompts):  # the budget's last round asks only what is left of it
            keep, idx, by_model, labelled_by = keep[within], idx[within], by_model[within], labelled_by[within]
            prompts, completions = [prompts[k] for k in within], [completions[k] for k in within]
        times["select"], t = time.perf_counter() - t, time.perf_counter()

        extra = algorithm.extra_responses(self, prompts, self.seed_for) if prompts else None
        times["extra_responses"], t = time.perf_counter() - t, time.perf_counter()

        asked = np.flatnonzero(labelled_by == ORACLE)
        pref = self.oracle.compare([prompts[k].instruction for k in asked],
                                   [completions[k][idx[k, 0]].text for k in asked],
                                   [completions[k][idx[k, 1]].text for k in asked])
        # the reward model's, the dataset's and (until the learner draws it) the policy's label: a ≻ b
        a_wins, informative = np.ones(len(prompts), dtype=bool), np.ones(len(prompts), dtype=bool)
        a_wins[asked], informative[asked] = pref.a_wins, pref.prob_a != 0.5  # a tie carries no preference
        times["oracle"], t = time.perf_counter() - t, time.perf_counter()

        explore_metrics = ({} if algorithm.fixed_pair else
                           self.explorer.observe(keep, idx, a_wins, informative & (labelled_by == ORACLE)))
        times["reward_model"], t = time.perf_counter() - t, time.perf_counter()

        pairs = [p for p, keep_it in zip(make_pairs(prompts, completions, idx, a_wins, labelled_by, extra), informative)
                 if keep_it]
        train_metrics = self.learner.learn(pairs) if pairs or self.world_size > 1 else {}
        times["learn"], t = time.perf_counter() - t, time.perf_counter()

        self.load_engine("policy")  # the new policy, or back from the reference's weights
        times["sync"] = time.perf_counter() - t

        self.state.round += 1
        self.state.queries = int(all_reduce_sum(self.oracle.queries))
        counts = {"pairs": len(pairs), "ties": int((~informative).sum()), "model_labelled": int(by_model.sum()),
                  "policy_labelled": int(sum(p.labelled_by == POLICY for p in pairs))}
        counts = {k: int(all_reduce_sum(v)) for k, v in counts.items()}  # over all ranks
        scored = queried_score(pref)
        self.state.pairs_trained += counts["pairs"]
        self.state.ties += counts["ties"]
        total = sum(times.values())
        row = {"round": self.state.round, **train_metrics, **explore_metrics, **scored,
               **{f"time/{k}": v for k, v in times.items()},
               "pairs_per_sec": len(prompts) * self.world_size / total, **counts, "learner_steps": self.learner.steps,
               "response_tokens": float(np.mean([len(c.token_ids) for group in completions for c in group]))
               if completions else 0.0}
        self.metrics.log("train", self.state.queries, row)
        return row

    def within_budget(self, asks: np.ndarray) -> np.ndarray:
        """The rows this rank keeps. A rank asks the oracle about at most its share of what is left of
        `max_queries` (split evenly over ranks); its asking rows past that share (in batch order) are dropped,
        neither asked nor trained on. So a budget is a hard cap, and runs compared at equal queries asked
        equally many although a round's queries vary (mixed preference asks about part of its batch). With
        several ranks an uneven round can leave some of the budget to one more round."""
        within = np.ones(asks.size, dtype=bool)
        if self.cfg.max_queries is None:
            return within
        left = max(self.cfg.max_queries - self.state.queries, 0)
        share = left // self.world_size + int(self.rank < left % self.world_size)
        within[np.flatnonzero(asks)[share:]] = False
        return within

    # ------------------------------------------------------------------ the Sampler the algorithm draws from
    def policy(self, prompts: list[Prompt], n: int, seed: int) -> list[list[Completion]]:
        self.load_engine("policy")
        return self._generate(prompts, seed, n, POLICY)

    def reference(self, prompts: list[Prompt], n: int, seed: int) -> list[list[Completion]]:
        """Samples of the frozen reference: its weights go into the engine (no second model copy); the
        round's sync puts the policy's back. Their log-probs are then log π_ref, raw, at temperature 1."""
        self.load_engine("reference")
        return self._generate(prompts, seed, n, REFERENCE)

    def reference_greedy(self, prompts: list[Prompt]) -> list[Completion]:
        self.load_engine("reference")
        return [self._mark(c, REFERENCE) for c in self._engine_call(prompts, lambda ids: self.engine.greedy(
            ids, max_new_tokens=self.cfg.max_new_tokens))]

    def _generate(self, prompts: list[Prompt], seed: int, n: int, source: str) -> list[list[Completion]]:
        cfg = self.cfg
        rows = self._engine_call(prompts, lambda ids: self.engine.generate(
            ids, n=n, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, seed=seed))
        return [[self._mark(c, source) for c in row] for row in rows]

    @staticmethod
    def _mark(c: Completion, source: str) -> Completion:
        c.source = source
        return c

    def _engine_call(self, prompts: list[Prompt], call):
        """An engine call on the prompts' token ids; a failure names the round and the batch."""
        try:
            return call([p.token_ids for p in prompts])
        except Exception as exc:  # noqa: BLE001 — any engine failure is reported with its batch
            batch = write_failed_batch(self.out / f"failed_batch-rank{self.rank}.jsonl", prompts)
            raise GenerationError(self.state.round + 1, prompts, exc, batch) from exc

    def load_engine(self, weights: str) -> None:
        """Put the current policy's or the frozen reference's weights into the engine, unless it holds them.

        The engine is tagged with what it holds: "reference", or the policy after a given number of steps
        (before the first step the policy is the reference).
        """
        want = "reference" if weights == "reference" or self.learner.steps == 0 else f"policy@{self.learner.steps}"
        if want == self.engine_weights:
            return
        names = self.sync_names
        source = self.learner.reference_weights(names) if want == "reference" else self.learner.named_weights(names)
        self.engine.update_weights(source, partial=names is not None)
        self.engine_weights = want

    @cached_property
    def sync_names(self) -> frozenset[str] | None:
        """What a swap sends: None = every parameter; with LoRA the adapted tensors (policy and reference
        differ in nothing else), completed to whole fused layers where the engine fuses them (vLLM's qkv)."""
        trained = self.learner.trained_weight_names()
        return None if trained is None else self.engine.names_to_update(trained)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        t = time.perf_counter()
        self.load_engine("policy")
        # before the first update the policy is the reference: its greedy responses are already known
        metrics, responses = self.evaluator.evaluate(self.evaluator.reference if self.learner.steps == 0 else None)
        if self.cfg.eval_best_of_n:
            seed = stream_seed(self.cfg.seed, "eval-best-of-n", self.state.round)
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
        if self.cfg.save_final:
            final = self.out / "final"
            self.learner.save_pretrained(final, self.tokenizer)  # every rank: ZeRO-3 gathers collectively
            summary["final_model"] = str(final)
            if self.cfg.save_merged:
                summary["final_merged_model"] = str(self.learner.save_merged(self.out / "final_merged", self.tokenizer))
        if is_main_process():  # summary.json last: it marks the run finished, so a kill before it is resumed
            evals = read_metrics(self.metrics.path, kind="eval")
            plot_win_rate(evals, self.out / "win_rate.png", title=f"{self.cfg.loss} · {self.cfg.oracle} oracle")
            write_json_atomic(self.out / "summary.json", summary)
        return summary

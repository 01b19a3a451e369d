"""One round's wiring with stand-in stages: which weights generate, who labels each pair, what is counted.

The engine, learner and evaluator are small fakes that record what the loop asks of them, so these
tests pin the loop's own logic (offline sampling from the reference, mixed preference learning,
best-of-N evaluation) in milliseconds; tests/test_loop.py runs the real stages end to end.
"""
from __future__ import annotations

import numpy as np
import torch

from fastalign.algorithms import build_algorithm
from fastalign.config import RunConfig
from fastalign.data import PromptStream
from fastalign.eval import WinRateEvaluator
from fastalign.explore.explorer import EpistemicExplorer, PassiveExplorer
from fastalign.explore.reward_model import EpistemicRewardModel
from fastalign.loop import OnlineLoop
from fastalign.metrics import MetricsLogger, read_metrics
from fastalign.oracle import CallableOracle
from fastalign.types import ORACLE, REWARD_MODEL, Completion, Prompt


class FakeEngine:
    """Responses whose length encodes the sample index; remembers which weights it generated with."""

    def __init__(self):
        self.weights = "reference"
        self.generated_with: list[str] = []

    def generate(self, prompt_ids, n, max_new_tokens, temperature=1.0, top_p=1.0, seed=0):
        self.generated_with.append(self.weights)
        return [[Completion(token_ids=[5] * (k + 1), text="e" * (k + 1) + "x" * (n - k), logprobs=[-1.0] * (k + 1))
                 for k in range(n)] for _ in prompt_ids]

    def greedy(self, prompt_ids, max_new_tokens):
        self.generated_with.append(f"greedy:{self.weights}")
        return [Completion(token_ids=[5], text="x") for _ in prompt_ids]

    def update_weights(self, named, partial=False):
        self.weights = next(iter(named))[0]


class FakeLearner:
    def __init__(self):
        self.steps = 0
        self.skipped_steps = 0  # steps refused for a NaN/inf loss
        self.pairs: list = []

    def learn(self, pairs):
        self.pairs.extend(pairs)
        self.steps += 1
        return {"loss": 0.5}

    def named_weights(self, names=None):
        yield f"policy@{self.steps}", torch.zeros(1)

    def trained_weight_names(self):
        return None  # every parameter, as full fine-tuning

    def reference_weights(self, names=None):
        yield "reference", torch.zeros(1)


def e_share(prompts, responses):
    return [r.count("e") / len(r) for r in responses]


def make_loop(tmp_path, explorer, **options) -> tuple[OnlineLoop, FakeEngine, FakeLearner, CallableOracle]:
    cfg = RunConfig(output_dir=str(tmp_path), batch_size=4, micro_batch_size=4, eval_every=2, tensorboard=False,
                    progress=False, save_final=False, **options)
    prompts = [Prompt(id=str(i), instruction=f"q{i}", text=f"q{i}", token_ids=[1, i]) for i in range(12)]
    engine, learner, oracle = FakeEngine(), FakeLearner(), CallableOracle(e_share)
    loop = OnlineLoop(cfg, stream=PromptStream(prompts, seed=0), engine=engine, explorer=explorer, oracle=oracle,
                      learner=learner, evaluator=WinRateEvaluator(engine, oracle, prompts[:3], 4),
                      metrics=MetricsLogger(tmp_path, tensorboard=False), algorithm=build_algorithm(cfg))
    return loop, engine, learner, oracle


def test_offline_responses_come_from_the_reference_and_eval_from_the_policy(tmp_path):
    loop, engine, learner, _ = make_loop(tmp_path, PassiveExplorer(seed=0), algorithm="offline-dpo", rounds=4)
    engine.generated_with.clear()
    loop.run()
    sampled = [w for w in engine.generated_with if not w.startswith("greedy")]
    greedy = [w for w in engine.generated_with if w.startswith("greedy")]
    assert sampled == ["reference"] * 4
    assert greedy == ["greedy:policy@2", "greedy:policy@4"]  # each evaluation sees the latest policy


def test_online_responses_come_from_the_policy_after_the_first_step(tmp_path):
    loop, engine, _, _ = make_loop(tmp_path, PassiveExplorer(seed=0), rounds=3)
    engine.generated_with.clear()
    loop.run()
    sampled = [w for w in engine.generated_with if not w.startswith("greedy")]
    assert sampled == ["reference", "policy@1", "policy@2"]  # synced after every step


class CountE:
    dim = 2

    def __call__(self, prompts, responses):
        return torch.tensor([[float(r.count("e")), 1.0] for r in responses])


def sea_explorer(share: float, burn_in: int) -> EpistemicExplorer:
    model = EpistemicRewardModel(feature_dim=2, num_heads=3, hidden=8, seed=0)
    return EpistemicExplorer("ee-ts", CountE(), model, seed=0, mixed_share=share, mixed_burn_in=burn_in,
                             mixed_min_confidence=0.0, mixed_min_accuracy=0.0)  # ungated, as oat


def test_mixed_preference_pairs_are_trained_but_not_counted_as_queries(tmp_path):
    loop, _, learner, oracle = make_loop(tmp_path, sea_explorer(0.5, burn_in=8), explore="ee-ts",
                                         samples_per_prompt=4, mixed_share=0.5, mixed_burn_in=8, rounds=4)
    loop.run()
    train = read_metrics(tmp_path / "metrics.jsonl", kind="train")
    assert [r["model_labelled"] for r in train] == [0, 0, 2, 2]  # after 8 queries, half of each batch
    assert [r["queries"] for r in train] == [4, 8, 10, 12] and oracle.queries == 12
    assert len(learner.pairs) == 16
    assert sum(p.labelled_by == REWARD_MODEL for p in learner.pairs) == 4
    assert loop.explorer.reward_model.pairs_seen == 12  # the reward model learns from the oracle only


def test_a_query_budget_is_a_hard_cap_when_rounds_ask_unequal_numbers(tmp_path):
    # rounds ask 4, 4, 2, 2 (after 8 queries the model labels half of each batch): a budget of 11 leaves
    # round 4 one query, so one of its two asking rows is dropped and its two model-labelled ones stay
    loop, _, learner, oracle = make_loop(tmp_path, sea_explorer(0.5, burn_in=8), explore="ee-ts",
                                         samples_per_prompt=4, mixed_share=0.5, mixed_burn_in=8, rounds=10,
                                         max_queries=11)
    summary = loop.run()
    train = read_metrics(tmp_path / "metrics.jsonl", kind="train")
    assert [r["queries"] for r in train] == [4, 8, 10, 11] and oracle.queries == 11
    assert summary["queries"] == 11 and summary["stopped"] == "query budget 11 reached"
    assert [r["model_labelled"] for r in train] == [0, 0, 2, 2]  # the free labels of the last round stay
    assert [r["pairs"] for r in train] == [4, 4, 4, 3] and len(learner.pairs) == 15
    assert loop.explorer.reward_model.pairs_seen == 11  # the dropped row is not observed either


def test_a_budget_that_is_not_a_whole_number_of_rounds_ends_on_it(tmp_path):
    loop, _, learner, oracle = make_loop(tmp_path, PassiveExplorer(seed=0), rounds=10, max_queries=6)
    loop.run()
    train = read_metrics(tmp_path / "metrics.jsonl", kind="train")
    assert [r["queries"] for r in train] == [4, 6] and oracle.queries == 6 and len(learner.pairs) == 6


def test_ranks_split_what_is_left_of_the_budget(tmp_path):
    loop, _, _, _ = make_loop(tmp_path, PassiveExplorer(seed=0), max_queries=10)
    loop.state.queries, loop.world_size = 7, 2  # 3 left: rank 0 may ask 2, rank 1 one
    asks = np.array([True, False, True, True])
    loop.rank = 0
    assert loop.within_budget(asks).tolist() == [True, True, True, False]
    loop.rank = 1
    assert loop.within_budget(asks).tolist() == [True, True, False, False]
    loop.state.queries = 0  # a whole round left: nothing dropped
    assert loop.within_budget(asks).all()


def test_best_of_n_evaluation_ranks_samples_with_the_explorer(tmp_path):
    loop, engine, _, _ = make_loop(tmp_path, sea_explorer(0.0, 0), explore="ee-ts", samples_per_prompt=4,
                                   eval_best_of_n=3, rounds=2)
    # a scorer that knows the oracle: its best of 3 ("eee") must beat the reference's "x"
    loop.explorer.score = lambda prompts, samples: np.array([[c.text.count("e") for c in row] for row in samples])
    loop.run()
    evals = read_metrics(tmp_path / "metrics.jsonl", kind="eval")
    assert evals[-1]["bon_win_rate"] == 1.0 and "sample_win_rate" in evals[-1]


def gated_explorer(gated_out: str) -> EpistemicExplorer:
    model = EpistemicRewardModel(feature_dim=2, num_heads=3, hidden=8, seed=0)
    return EpistemicExplorer("ee-ts", CountE(), model, seed=0, mixed_share=0.5, mixed_burn_in=8,
                             mixed_min_confidence=0.0, mixed_min_accuracy=0.5, window=100, gated_out=gated_out)


def test_gated_out_rows_are_neither_asked_nor_trained_on(tmp_path):
    # a window of 100 oracle pairs is never filled here: after the burn-in every candidate is refused
    loop, _, learner, oracle = make_loop(tmp_path, gated_explorer("drop"), explore="ee-ts", samples_per_prompt=4,
                                         mixed_share=0.5, mixed_burn_in=8, mixed_gated_out="drop", rounds=4)
    loop.run()
    train = read_metrics(tmp_path / "metrics.jsonl", kind="train")
    assert [r["queries"] for r in train] == [4, 8, 10, 12] and oracle.queries == 12
    assert [r.get("mixed/gated_out", 0) for r in train] == [0, 0, 2, 2]
    assert [r["model_labelled"] for r in train] == [0, 0, 0, 0]
    assert all(p.labelled_by == ORACLE for p in learner.pairs) and len(learner.pairs) <= 12
    assert loop.explorer.reward_model.pairs_seen == len(learner.pairs)
    assert [r["learner_steps"] for r in train] == [1, 2, 3, 4]


def test_gated_out_rows_can_go_to_the_oracle_instead(tmp_path):
    loop, _, _, oracle = make_loop(tmp_path, gated_explorer("oracle"), explore="ee-ts", samples_per_prompt=4,
                                   mixed_share=0.5, mixed_burn_in=8, mixed_gated_out="oracle", rounds=4)
    loop.run()
    assert oracle.queries == 16  # every prompt asked


def test_apl_draws_a_pool_and_spends_batch_size_queries_per_round(tmp_path):
    from fastalign.explore.apl import ActivePreferenceExplorer

    scored = []

    def implicit(prompt_ids, responses):
        scored.append(len(prompt_ids))
        return np.array([[float(len(y)) for y in row] for row in responses])  # longest vs shortest

    apl = ActivePreferenceExplorer(implicit, seed=0, pool_factor=3)
    loop, _, learner, oracle = make_loop(tmp_path, apl, explore="apl", samples_per_prompt=4, apl_pool_factor=3,
                                         rounds=2)
    loop.run()
    train = read_metrics(tmp_path / "metrics.jsonl", kind="train")
    assert [r["queries"] for r in train] == [4, 8] and scored == [4, 4]
    assert (loop.stream.epoch, loop.stream.position) == (1, 12)  # a pool of 12 prompts drawn per round
    assert all(r["apl/pool"] == 12 and r["apl/kept"] == 4 for r in train)
    assert {(len(p.chosen_ids), len(p.rejected_ids)) for p in learner.pairs} <= {(4, 1), (1, 4)}

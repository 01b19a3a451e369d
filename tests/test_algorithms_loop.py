"""Each --algorithm runs real rounds on the tiny model (transformers engine: starts in a second), and the
loop's reference-sample swap always hands the policy's weights back to the engine."""
import json
from pathlib import Path

import numpy as np
import pytest

from fastalign.config import RunConfig
from fastalign.explore.explorer import PassiveExplorer
from fastalign.loop import OnlineLoop
from fastalign.metrics import read_metrics
from fastalign.train import run
from fastalign.types import Completion, Prompt

WORDS = ["sea", "tree", "green", "apple", "eel", "bee", "sun", "moon", "red", "see"]


def prompt_file(path: Path, n: int = 12) -> Path:
    """Prompts with two dataset responses each (for sail-dp; the other algorithms ignore the field)."""
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"Say something about the {WORDS[i % 10]} number {i}.",
                                "responses": [f"The {WORDS[i % 10]} is here.", f"No {i}."]}) + "\n")
    return path


def run_algorithm(algorithm: str, tiny_model_dir, tmp_path: Path, rounds: int = 1, **extra) -> tuple[dict, list]:
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(Path(__file__).parent))
    cfg = RunConfig(model=str(tiny_model_dir), output_dir=str(tmp_path / "run"), oracle="callable",
                    oracle_path="loop_rewards:letter_e_share", engine="hf", dtype="fp32", engine_dtype="fp32",
                    prompts=str(prompt_file(tmp_path / "prompts.jsonl")), num_eval_prompts=4, algorithm=algorithm,
                    batch_size=4, micro_batch_size=4, max_new_tokens=6, rounds=rounds, eval_every=rounds,
                    learning_rate=1e-3, logprob_impl="naive", threads=1, save_final=False, tensorboard=False, progress=False, **extra)
    try:
        summary = run(cfg)
    finally:
        mp.undo()
    return summary, read_metrics(tmp_path / "run" / "metrics.jsonl", kind="train")


@pytest.mark.parametrize("algorithm", ["selm", "xpo"])
def test_reference_sample_algorithms(algorithm, tiny_model_dir, tmp_path):
    summary, train = run_algorithm(algorithm, tiny_model_dir, tmp_path)
    assert summary["queries"] == 4 and len(train) == 1
    row = train[0]
    assert row["time/reference_sample"] > 0 and row["extra/logps"] < 0
    if algorithm == "xpo":
        assert row["extra/term"] == pytest.approx(1e-5 * row["extra/logps"], rel=1e-5)
    else:  # before the first step π_θ = π_ref: the engine's sampling log-probs of ỹ equal the learner's
        assert abs(row["extra/term"]) < 1e-3 * 0.1 * 1e-3 * abs(row["extra/logps"])
    assert row["loss"] == pytest.approx(row["loss/pair"] + row["extra/term"], rel=1e-4, abs=1e-7)


def test_bpo_starts_each_pair_at_zero_margin(tiny_model_dir, tmp_path):
    """The behaviour policy is the policy at the round's start: h = 0 at the round's only step."""
    summary, train = run_algorithm("bpo", tiny_model_dir, tmp_path, rounds=2)
    assert summary["queries"] == 8 and len(train) == 2
    for row in train:
        assert row["rewards/margin"] == pytest.approx(0.0, abs=1e-6)
        assert row["loss"] == pytest.approx(np.log(2), abs=1e-6)


def test_sail_pr_round(tiny_model_dir, tmp_path):
    summary, train = run_algorithm("sail-pr", tiny_model_dir, tmp_path)
    assert summary["queries"] == 4 and all(np.isfinite(r["loss"]) for r in train)


@pytest.mark.parametrize("algorithm", ["sail-pp", "sail-dp"])
def test_policy_labelled_sail_makes_no_oracle_queries(algorithm, tiny_model_dir, tmp_path):
    summary, train = run_algorithm(algorithm, tiny_model_dir, tmp_path, rounds=2)
    assert summary["queries"] == 0 and summary["pairs_trained"] == 8
    assert [r["queries"] for r in train] == [0, 0]
    assert all(0 <= r["sail/label_swapped"] <= 1 for r in train)
    assert "win_rate" in summary  # evaluation still asks the oracle, uncounted


def test_sail_dp_needs_responses(tiny_model_dir, tmp_path):
    from fastalign.data import PromptFormatError

    bad = tmp_path / "p.jsonl"
    bad.write_text("".join(json.dumps({"prompt": f"p{i}", "responses": ["only one"]}) + "\n" for i in range(12)))
    cfg = RunConfig(model=str(tiny_model_dir), prompts=str(bad), num_eval_prompts=4, algorithm="sail-dp",
                    output_dir=str(tmp_path / "run"))
    with pytest.raises(PromptFormatError, match="list of ≥ 2 non-empty response strings"):
        run(cfg)


class _Engine:
    def __init__(self):
        self.loaded: list[str] = []

    def generate(self, prompt_ids, n, max_new_tokens, temperature=1.0, top_p=1.0, seed=None):
        return [[Completion([7, k], f"r{k}", [-1.0, -1.0], "stop") for k in range(n)] for _ in prompt_ids]

    def update_weights(self, weights):
        self.loaded.append(next(iter(weights))[0])


class _Learner:
    steps = 0

    def reference_weights(self):
        yield "reference", None

    def named_weights(self):
        yield "policy", None

    def step(self, pairs, weights):
        assert all(p.extra_ids == [7, 0] and p.extra_ref_logprob == -2.0 for p in pairs)
        return {}


class _TieOracle:
    queries = 0

    def compare(self, prompts, a, b):
        from fastalign.types import Preference

        self.queries += len(prompts)
        return Preference(prob_a=np.full(len(prompts), 0.5), a_wins=np.ones(len(prompts), dtype=bool))


@pytest.mark.parametrize("steps, swaps", [(3, ["reference", "policy"]), (0, [])])
def test_reference_swap_is_undone_even_when_no_step_is_taken(tmp_path, steps, swaps):
    """All pairs tie → no learner step; after ỹ ~ π_ref the engine must still get the policy's weights back.
    Before the first step the policy is the reference, so the engine already holds both: no swap at all."""
    from fastalign.metrics import MetricsLogger

    class Stream:
        def next_batch(self, n):
            return [Prompt(str(i), f"p{i}", f"p{i}", [1, 2]) for i in range(n)]

    engine, learner = _Engine(), _Learner()
    learner.steps = steps
    loop = OnlineLoop(RunConfig(algorithm="xpo", batch_size=2, micro_batch_size=2, output_dir=str(tmp_path)),
                      stream=Stream(), engine=engine, explorer=PassiveExplorer(0), oracle=_TieOracle(),
                      learner=learner, evaluator=None, metrics=MetricsLogger(tmp_path, False))
    loop.load_engine("policy")  # the round starts with the current policy in the engine
    engine.loaded.clear()
    loop.round()
    assert engine.loaded == swaps

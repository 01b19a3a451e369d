"""XPO against TRL's XPOTrainer (trl/experimental/xpo/xpo_trainer.py): the judged pair is (y ~ π_θ, ỹ ~ π_ref)
and loss = mean(DPO_i + α·log π_θ(ỹ_i)) with log-probs summed, on the judged ỹ whether it won or lost;
worked out by hand on the shared pair (α = 1e-5)."""
import pytest

from fastalign.algorithms import build_algorithm
from fastalign.config import ConfigError
from fastalign.types import POLICY, REFERENCE, Completion

from algorithm_pairs import DPO_GRAD, ELL, config, one_pair, pair_record


@pytest.mark.parametrize("reference_won", [True, False])
def test_the_bonus_is_on_the_reference_sample_whether_it_won_or_lost(reference_won):
    algorithm = build_algorithm(config(algorithm="xpo", xpo_alpha=1e-5))
    s = one_pair()
    sources = dict(chosen_from=REFERENCE, rejected_from=POLICY) if reference_won else dict(
        chosen_from=POLICY, rejected_from=REFERENCE)
    loss, _, metrics = algorithm.loss(s, [pair_record(**sources)], None)
    loss.sum().backward()
    reference_logp = -10.0 if reference_won else -12.0
    assert loss.item() == pytest.approx(-ELL + 1e-5 * reference_logp)
    assert s.policy_chosen.grad.item() == pytest.approx(DPO_GRAD + (1e-5 if reference_won else 0.0))
    assert s.policy_rejected.grad.item() == pytest.approx(-DPO_GRAD + (0.0 if reference_won else 1e-5))
    assert metrics["xpo/policy_sample_won"] == (0.0 if reference_won else 1.0)


def test_a_pair_without_exactly_one_reference_sample_is_refused():
    algorithm = build_algorithm(config(algorithm="xpo"))
    with pytest.raises(ValueError, match="exactly one reference sample"):
        algorithm.loss(one_pair(), [pair_record()], None)


class Sampler:
    def policy(self, prompts, n, seed):
        return [[Completion([1], "y", source=POLICY)] * n for _ in prompts]

    def reference(self, prompts, n, seed):
        return [[Completion([2], "ỹ", source=REFERENCE)] * n for _ in prompts]


def test_each_row_is_one_policy_sample_and_one_reference_sample():
    algorithm = build_algorithm(config(algorithm="xpo"))
    rows = algorithm.sample(Sampler(), ["p1", "p2"], lambda stream: 0)
    assert [[c.source for c in row] for row in rows] == [[POLICY, REFERENCE]] * 2
    assert algorithm.fixed_pair


@pytest.mark.parametrize("options, message", [
    (dict(explore="ee-ts", samples_per_prompt=4), "judges one policy sample against one reference sample"),
    (dict(samples_per_prompt=4), "samples_per_prompt 4 does not apply"),
    (dict(loss="slic"), "use --loss dpo or ipo"),
])
def test_refused_configurations(options, message):
    with pytest.raises(ConfigError, match=message):
        config(algorithm="xpo", **options).validate()

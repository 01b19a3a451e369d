"""SELM against the authors' trainer (shenao-zhang/SELM, scripts/selm_trainer.py, `optimistic_dpo_loss`):
    losses = −log σ(β·logits) + α·β·(log π_θ(y_ref) − log π_ref(y_ref)), log-probs summed,
worked out by hand on the shared pair with ỹ: log π_θ(ỹ) = −20, log π_ref(ỹ) = −18, α = 1e-3, β = 0.1."""
import pytest
import torch

from fastalign.algorithms import build_algorithm
from fastalign.config import ConfigError

from algorithm_pairs import DPO_GRAD, ELL, config, one_pair, pair_record


def test_loss_value_and_gradients():
    algorithm = build_algorithm(config(algorithm="selm", selm_alpha=1e-3))
    s = one_pair()
    extra = torch.tensor([-20.0], dtype=torch.float64, requires_grad=True)
    loss, _, metrics = algorithm.loss(s, [pair_record(extra_ids=[5], extra_ref_logprob=-18.0)], extra)
    loss.sum().backward()
    assert loss.item() == pytest.approx(-ELL + 1e-3 * 0.1 * (-20.0 + 18.0))
    assert extra.grad.item() == pytest.approx(1e-4)  # α·β: minimising lowers log π(ỹ), away from π_ref
    assert s.policy_chosen.grad.item() == pytest.approx(DPO_GRAD)  # the pair loss's gradient is untouched
    assert metrics["selm/term"] == pytest.approx(-2e-4) and metrics["loss/pair"] == pytest.approx(-ELL)


def test_needs_the_extra_response_and_a_known_form():
    algorithm = build_algorithm(config(algorithm="selm"))
    with pytest.raises(ValueError, match="reference response"):
        algorithm.loss(one_pair(), [pair_record()], None)
    with pytest.raises(ConfigError, match="unknown selm_response 'beam'"):
        config(algorithm="selm", selm_response="beam").validate()


class Sampler:
    def __init__(self):
        self.calls = []

    def reference(self, prompts, n, seed):
        self.calls.append(("sample", n, seed))
        return [["sampled"] for _ in prompts]

    def reference_greedy(self, prompts):
        self.calls.append(("greedy",))
        return ["greedy" for _ in prompts]


@pytest.mark.parametrize("form, want", [("sample", "sampled"), ("greedy", "greedy")])
def test_the_reference_response_is_sampled_or_greedy(form, want):
    sampler = Sampler()
    algorithm = build_algorithm(config(algorithm="selm", selm_response=form))
    assert algorithm.extra_responses(sampler, ["p1", "p2"], lambda stream: 7) == [want, want]
    assert sampler.calls[0][0] == form

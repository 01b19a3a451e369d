"""PolicyLearner.implicit_rewards: log π_θ(y|x) − log π_ref(y|x) per candidate response (APL's certainty score).

Checked against an independent computation: full-vocabulary logits of each model on prompt + response,
log-softmax, summed over the response tokens (DPO's implicit reward / β, Rafailov et al. 2023).
"""
import numpy as np
import pytest
import torch

from fastalign.config import RunConfig
from fastalign.learner.distributed import init_distributed
from fastalign.learner.learner import PolicyLearner
from fastalign.types import PreferencePair

PROMPTS = [[5, 6, 7], [8, 9]]
RESPONSES = [[[10, 11], [12], [13, 14, 15]], [[16, 17, 18], [19], [20, 21]]]


@pytest.fixture(scope="module")
def learner(tiny_model_dir):
    init_distributed()
    cfg = RunConfig(model=str(tiny_model_dir), dtype="fp32", learning_rate=5e-3, batch_size=2, micro_batch_size=1)
    return PolicyLearner(cfg, tiny_model_dir, pad_id=0)


def summed_logp(model, prompt, response) -> float:
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([prompt + response])).logits[0].double(), -1)
    return float(sum(logp[len(prompt) - 1 + t, tok] for t, tok in enumerate(response)))


def test_implicit_rewards_are_zero_while_the_policy_is_the_reference(learner):
    assert learner.steps == 0
    assert np.array_equal(learner.implicit_rewards(PROMPTS, RESPONSES), np.zeros((2, 3)))


def test_implicit_rewards_match_an_independent_log_ratio_after_a_step(learner):
    learner.step([PreferencePair(prompt_ids=[5, 6, 7], chosen_ids=[10, 11], rejected_ids=[12]),
                  PreferencePair(prompt_ids=[8, 9], chosen_ids=[19], rejected_ids=[16, 17, 18])])
    got = learner.implicit_rewards(PROMPTS, RESPONSES)  # chunks of 2 sequences: crosses prompt boundaries
    want = np.array([[summed_logp(learner.policy, p, y) - summed_logp(learner.reference, p, y) for y in row]
                     for p, row in zip(PROMPTS, RESPONSES)])
    assert np.abs(want).max() > 1e-3  # the step moved the policy
    np.testing.assert_allclose(got, want, atol=2e-4)
    assert learner.policy.training  # left as it was found


def test_implicit_rewards_refuse_ragged_or_mismatched_input(learner):
    with pytest.raises(ValueError, match="same number"):
        learner.implicit_rewards(PROMPTS, [[[1]], [[2], [3]]])
    with pytest.raises(ValueError, match="one list of responses per prompt"):
        learner.implicit_rewards(PROMPTS, RESPONSES[:1])

"""BPO (Xu et al. 2024, arXiv 2406.12168): the DPO loss with π_ref := π_β, the policy that sampled the batch.

Checked against an independent computation: full-vocabulary logits of the policy on prompt + response,
log-softmax, summed over the response (log π_β before the batch's first update, log π_θ before each
later one), then −log σ(β·((log π_θ(y_w) − log π_β(y_w)) − (log π_θ(y_l) − log π_β(y_l)))) per pair.
"""
import numpy as np
import pytest
import torch

from fastalign.config import RunConfig
from fastalign.learner.distributed import init_distributed
from fastalign.learner.learner import PolicyLearner
from fastalign.types import PreferencePair

BETA = 0.5
TRIPLES = [([5, 6, 7], [10, 11], [12]), ([8, 9], [19], [16, 17, 18]), ([30, 31, 32, 33], [40], [41, 42])]


def summed_logp(model, prompt, response) -> float:
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([prompt + response])).logits[0].double(), -1)
    return float(sum(logp[len(prompt) - 1 + t, tok] for t, tok in enumerate(response)))


def logps(model) -> np.ndarray:
    """[pairs, 2]: log π(chosen), log π(rejected) of each pair."""
    return np.array([[summed_logp(model, p, c), summed_logp(model, p, r)] for p, c, r in TRIPLES])


def dpo_loss(policy: np.ndarray, reference: np.ndarray) -> float:
    h = (policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1])
    return float(np.mean(np.log1p(np.exp(-BETA * h))))


@pytest.fixture
def learner(tiny_model_dir):
    init_distributed()
    cfg = RunConfig(model=str(tiny_model_dir), dtype="fp32", algorithm="bpo", updates_per_round=3, beta=BETA,
                    learning_rate=1e-2, batch_size=3, micro_batch_size=2, logprob_impl="naive")
    return PolicyLearner(cfg, tiny_model_dir, pad_id=0)


def test_every_update_of_a_batch_is_dpo_against_the_behaviour_policy(learner, monkeypatch, tiny_model_dir):
    """The second batch: its behaviour policy is the one the first batch's updates left, not the initial model
    (which a frozen reference, online DPO's, would be)."""
    from fastalign.models import load_causal_lm

    learner.learn([PreferencePair(prompt_ids=p, chosen_ids=r, rejected_ids=c) for p, c, r in TRIPLES])
    pairs = [PreferencePair(prompt_ids=p, chosen_ids=c, rejected_ids=r) for p, c, r in TRIPLES]
    behaviour = logps(learner.policy)
    assert np.abs(behaviour - logps(load_causal_lm(tiny_model_dir, "fp32"))).max() > 1e-3
    before_each_step, real_step = [], learner.step

    def recording_step(batch):
        before_each_step.append(logps(learner.policy))
        return real_step(batch)

    monkeypatch.setattr(learner, "step", recording_step)
    metrics = learner.learn(pairs)

    assert learner.reference is None and learner.steps == 6
    np.testing.assert_allclose([[p.ref_chosen_logprob, p.ref_rejected_logprob] for p in pairs], behaviour,
                               atol=2e-4)  # log π_β: the first update's own forward, cached on the pairs
    assert dpo_loss(before_each_step[0], behaviour) == pytest.approx(np.log(2), abs=1e-6)  # h = 0 at first
    last = before_each_step[-1]
    assert np.abs(last - behaviour).max() > 1e-3  # two updates moved the policy away from π_β
    assert metrics["loss"] == pytest.approx(dpo_loss(last, behaviour), abs=2e-4)
    h = (last[:, 0] - behaviour[:, 0]) - (last[:, 1] - behaviour[:, 1])
    assert metrics["rewards/margin"] == pytest.approx(BETA * h.mean(), abs=2e-4)

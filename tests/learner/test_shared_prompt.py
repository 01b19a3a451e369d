"""Prefix-shared pair log-probs (the prompt run once, both responses from its KV cache) equal the plain path."""
import pytest
import torch

from fastalign.config import RunConfig
from fastalign.learner.distributed import init_distributed
from fastalign.learner.learner import PolicyLearner
from fastalign.learner.logprobs import build_batch, pair_logps, sequence_logps
from fastalign.models import load_causal_lm
from fastalign.types import PreferencePair


def random_pairs(n: int, seed: int = 0) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """Prompts and responses of different lengths, one empty response among them."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda k: torch.randint(10, 5000, (k,), generator=g).tolist()  # noqa: E731
    prompts = [rand(3 + 2 * i) for i in range(n)]
    chosen = [rand(2 + i) for i in range(n)]
    rejected = [rand(7 - i) for i in range(n)]
    chosen[1] = []
    return prompts, chosen, rejected


@pytest.mark.parametrize("impl", ["torch", "naive"])
def test_shared_prompt_logps_equal_plain_in_value_and_gradient(tiny_model_dir, impl):
    model = load_causal_lm(tiny_model_dir)
    prompts, chosen, rejected = random_pairs(4)
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0, 0.25, 2.0, -0.5])
    results = {}
    for name in ("plain", "shared"):
        model.zero_grad()
        if name == "plain":
            logps = sequence_logps(model, build_batch(prompts * 2, chosen + rejected, pad_id=0), impl=impl)
        else:
            logps = pair_logps(model, prompts, chosen, rejected, pad_id=0, impl=impl, share_prompt=True)
        (logps * weights).sum().backward()
        results[name] = (logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    assert results["shared"][0][1].item() == 0.0  # the empty chosen response
    torch.testing.assert_close(results["shared"][0], results["plain"][0], rtol=1e-5, atol=1e-4)
    for name, grad in results["plain"][1].items():
        torch.testing.assert_close(results["shared"][1][name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_pair_logps_refuses_mismatched_or_empty_prompts(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir)
    with pytest.raises(ValueError, match="one chosen and one rejected"):
        pair_logps(model, [[1, 2]], [[3]], [], pad_id=0)
    with pytest.raises(ValueError, match="at least one token"):
        pair_logps(model, [[]], [[3]], [[4]], pad_id=0)


def test_learner_loss_and_gradient_are_the_same_with_and_without_prompt_sharing(tiny_model_dir):
    """Compared before the optimiser: Adam's first step divides by |g|, which would magnify rounding."""
    init_distributed()
    prompts, chosen, rejected = random_pairs(4, seed=1)
    cfg = RunConfig(model=str(tiny_model_dir), dtype="fp32", batch_size=4, micro_batch_size=4)
    learner = PolicyLearner(cfg, tiny_model_dir, pad_id=0)
    params = [p for p in learner.policy.parameters() if p.requires_grad]
    results = {}
    for share in (False, True):
        cfg.share_prompt = share
        pairs = [PreferencePair(prompt_ids=p, chosen_ids=c, rejected_ids=r) for p, c, r in zip(prompts, chosen, rejected)]
        learner.fill_reference_logps(pairs)
        loss, _ = learner._micro_loss(pairs)
        results[share] = (loss.item(), torch.autograd.grad(loss, params),
                          [(p.ref_chosen_logprob, p.ref_rejected_logprob) for p in pairs])
    torch.testing.assert_close(results[True][2], results[False][2], rtol=1e-5, atol=1e-4)
    assert results[True][0] == pytest.approx(results[False][0], abs=1e-6)
    for got, want in zip(results[True][1], results[False][1]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)

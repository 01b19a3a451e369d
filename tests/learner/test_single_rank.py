"""A world of one skips DeepSpeed's gradient all-reduce (an identity there): the step is unchanged."""
import torch

from fastalign.config import RunConfig
from fastalign.learner.distributed import init_distributed
from fastalign.learner.learner import PolicyLearner
from fastalign.types import PreferencePair


def pairs() -> list[PreferencePair]:
    g = torch.Generator().manual_seed(3)
    rand = lambda k: torch.randint(10, 5000, (k,), generator=g).tolist()  # noqa: E731
    return [PreferencePair(prompt_ids=rand(4 + i), chosen_ids=rand(3 + i), rejected_ids=rand(5 - i)) for i in range(4)]


def test_single_rank_step_without_allreduce_equals_the_step_with_it(tiny_model_dir):
    init_distributed()
    cfg = RunConfig(model=str(tiny_model_dir), dtype="fp32", learning_rate=1e-2, batch_size=4, micro_batch_size=2)
    skipped = PolicyLearner(cfg, tiny_model_dir, pad_id=0)
    reduced = PolicyLearner(cfg, tiny_model_dir, pad_id=0)
    assert skipped.engine.enable_backward_allreduce is False
    reduced.engine.enable_backward_allreduce = True
    skipped.step(pairs())
    reduced.step(pairs())
    for (name, a), b in zip(skipped.policy.named_parameters(), reduced.policy.parameters()):
        assert torch.equal(a, b), name

"""A NaN/inf step is skipped at every ZeRO stage and leaves no trace: after a bad round and a good one,
the policy equals a fresh learner's after the good round alone."""
import pytest
import torch

from fastalign.config import RunConfig
from fastalign.learner.distributed import init_distributed
from fastalign.learner.learner import PolicyLearner
from fastalign.types import PreferencePair


def pairs() -> list[PreferencePair]:
    g = torch.Generator().manual_seed(5)
    rand = lambda k: torch.randint(10, 5000, (k,), generator=g).tolist()  # noqa: E731
    return [PreferencePair(prompt_ids=rand(4 + i), chosen_ids=rand(3 + i), rejected_ids=rand(5 - i)) for i in range(4)]


def weights(learner: PolicyLearner) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in learner.named_weights()}


def nan_gradient(learner: PolicyLearner):
    """A finite loss whose backward puts NaN into one MLP weight's gradient."""
    param = next(p for name, p in learner.policy.named_parameters() if "mlp" in name)
    return param.register_hook(lambda g: torch.full_like(g, float("nan")))


def nan_loss_in_second_micro_batch(monkeypatch):
    """The first micro-batch's backward has run (partial gradients exist) when the second one's loss is NaN."""
    real, calls = PolicyLearner._micro_loss, []

    def second_is_nan(self, *args):
        loss, metrics = real(self, *args)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 2 else loss), metrics

    monkeypatch.setattr(PolicyLearner, "_micro_loss", second_is_nan)
    return monkeypatch


@pytest.mark.parametrize("fault", ["nan_gradient", "nan_loss"])
@pytest.mark.parametrize("zero_stage,max_grad_norm", [(0, 1.0), (1, 1.0), (1, 0.0), (2, 1.0), (2, 0.0), (3, 0.0)])
def test_bad_step_is_skipped_and_leaves_no_trace(tiny_model_dir, zero_stage, max_grad_norm, fault, monkeypatch):
    init_distributed()
    cfg = RunConfig(model=str(tiny_model_dir), dtype="fp32", learning_rate=1e-2, batch_size=4, micro_batch_size=2,
                    zero_stage=zero_stage, max_grad_norm=max_grad_norm, logprob_impl="naive")
    clean = PolicyLearner(cfg, tiny_model_dir, pad_id=0)
    clean.step(pairs())
    learner = PolicyLearner(cfg, tiny_model_dir, pad_id=0)
    before = weights(learner)

    undo = nan_gradient(learner).remove if fault == "nan_gradient" else \
        nan_loss_in_second_micro_batch(monkeypatch).undo
    out = learner.step(pairs())
    assert out == {"skipped_nonfinite": 1.0, "skipped_total": 1.0}
    assert learner.steps == 0
    assert all(torch.equal(before[k], v) for k, v in weights(learner).items())

    undo()
    out = learner.step(pairs())
    assert "skipped_nonfinite" not in out and learner.steps == 1
    expected = weights(clean)
    assert all(torch.equal(expected[k], v) for k, v in weights(learner).items())

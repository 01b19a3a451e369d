"""Every loss of the family against an independent computation: the papers' formulas written out in plain
`math` (values, and gradients by central differences), and TRL's own DPOTrainer code where it has the
loss (TRL 1.16, the installed peer; `DPOTrainer._compute_loss` driven with a stand-in model).

Notation: cl = log π(y_w) − log π_ref(y_w), rl = log π(y_l) − log π_ref(y_l), h = cl − rl.
"""
from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from fastalign.config import ConfigError, RunConfig
from fastalign.losses import (
    ALIASES, LOSSES, BCOPair, LossParams, SequenceLogps, bco_pair, loss_spec, make_pair_loss, preference_metrics,
)

BETA, EPS, TAU, GAMMA_RATIO = 0.3, 0.1, 0.05, 0.5


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def smoothed(z: float, eps: float) -> float:
    return -(1 - eps) * logsig(z) - eps * logsig(-z)


# one pair's loss, written from the papers / TRL's documentation: (pc, pr, rc, rr, lc, lr) → value
def per_pair(name: str, pc, pr, rc, rr, lc, lr) -> float:
    cl, rl = pc - rc, pr - rr
    h, b, e = cl - rl, BETA, EPS
    return {
        "dpo": lambda: -logsig(b * h),
        "cdpo": lambda: smoothed(b * h, e),
        "robust": lambda: (-(1 - e) * logsig(b * h) + e * logsig(-b * h)) / (1 - 2 * e),
        "ipo": lambda: (cl / lc - rl / lr - 1 / (2 * b)) ** 2,
        "slic": lambda: max(0.0, 1 - b * h),
        "simpo": lambda: -logsig(b * (pc / lc - pr / lr) - GAMMA_RATIO * b),
        "exo_pair": lambda: sig(b * h) * (logsig(b * h) - math.log(1 - e)) + sig(-b * h) * (logsig(-b * h) - math.log(e)),
        "nca_pair": lambda: -logsig(b * cl) - 0.5 * logsig(-b * cl) - 0.5 * logsig(-b * rl),
        "bco_pair": lambda: -logsig(b * cl) - logsig(-b * rl),  # δ = 0 (stateless form)
        "sppo_hard": lambda: (cl - 0.5 / b) ** 2 + (rl + 0.5 / b) ** 2,
        "apo_zero": lambda: 1 - sig(b * cl) + sig(b * rl),
        "apo_down": lambda: sig(b * cl) + 1 - sig(b * h),
        "discopop": lambda: -logsig(b * h) * (1 - sig(b * h / TAU)) + math.exp(-b * h) * sig(b * h / TAU),
    }[name]()


def batch_losses(name: str, pc, pr, rc, rr, lc, lr) -> list[float]:
    """Per-pair losses of a batch; AOT's are defined on the batch's sorted margins."""
    if name == "aot":
        d = [x - y for x, y in zip(sorted(a - c for a, c in zip(pc, pr)), sorted(a - c for a, c in zip(rc, rr)))]
        return [smoothed(BETA * v, EPS) for v in d]
    if name == "aot_pair":
        d = [x - y for x, y in zip(sorted(a - c for a, c in zip(pc, rc)), sorted(a - c for a, c in zip(pr, rr)))]
        return [smoothed(BETA * v, EPS) for v in d]
    return [per_pair(name, *row) for row in zip(pc, pr, rc, rr, lc, lr)]


def batch(seed: int = 0, n: int = 5) -> dict[str, list[float]]:
    g = torch.Generator().manual_seed(seed)
    r = lambda lo, hi: (lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)).tolist()  # noqa: E731
    return {"pc": r(-30, -5), "pr": r(-30, -5), "rc": r(-30, -5), "rr": r(-30, -5),
            "lc": [float(v) for v in torch.randint(1, 20, (n,), generator=g)],
            "lr": [float(v) for v in torch.randint(1, 20, (n,), generator=g)]}


def seq(x: dict[str, list[float]]) -> SequenceLogps:
    t = lambda k, grad=False: torch.tensor(x[k], dtype=torch.float64, requires_grad=grad)  # noqa: E731
    return SequenceLogps(t("pc", True), t("pr", True), t("rc"), t("rr"), t("lc"), t("lr"))


PARAMS = LossParams(beta=BETA, label_smoothing=EPS, simpo_gamma_ratio=GAMMA_RATIO, discopop_tau=TAU)


@pytest.mark.parametrize("name", list(LOSSES))
def test_values_and_gradients_equal_the_written_out_formulas(name):
    x = batch()
    s = seq(x)
    ours = loss_spec(name).fn(s, PARAMS)
    want = batch_losses(name, **x)
    assert ours.tolist() == pytest.approx(want, rel=1e-10, abs=1e-12)
    ours.sum().backward()
    step = 1e-6
    for key, grad in (("pc", s.policy_chosen.grad), ("pr", s.policy_rejected.grad)):
        for i in range(len(x[key])):
            up, down = {**x, key: list(x[key])}, {**x, key: list(x[key])}
            up[key][i] += step
            down[key][i] -= step
            numeric = (sum(batch_losses(name, **up)) - sum(batch_losses(name, **down))) / (2 * step)
            assert grad[i].item() == pytest.approx(numeric, rel=1e-5, abs=1e-7), (name, key, i)


def test_one_pair_by_hand():
    """h = 1.5, β = 0.1 (βh = 0.15, σ(0.15) = 0.5374298453): a few values a reader can check on paper."""
    s = SequenceLogps(*(torch.tensor([v], dtype=torch.float64) for v in (-10.0, -12.0, -11.0, -11.5, 4.0, 5.0)))
    p = LossParams(beta=0.1)
    assert loss_spec("dpo").fn(s, p).item() == pytest.approx(0.620957047789532)
    assert loss_spec("slic").fn(s, p).item() == pytest.approx(0.85)
    assert loss_spec("ipo").fn(s, p).item() == pytest.approx((0.35 - 5) ** 2)  # h_avg = 1/4 + 0.5/5
    assert loss_spec("sppo_hard").fn(s, p).item() == pytest.approx((1 - 5) ** 2 + (-0.5 + 5) ** 2)
    assert loss_spec("apo_zero").fn(s, p).item() == pytest.approx(1 - 1 / (1 + math.exp(-0.1)) + 1 / (1 + math.exp(0.05)))


# --------------------------------------------------------------------------------------- TRL's own code
TRL_NAMES = {"dpo": "sigmoid", "slic": "hinge", "ipo": "ipo", "exo_pair": "exo_pair", "nca_pair": "nca_pair",
             "robust": "robust", "bco_pair": "bco_pair", "sppo_hard": "sppo_hard", "aot": "aot",
             "aot_pair": "aot_unpaired", "apo_zero": "apo_zero", "apo_down": "apo_down", "discopop": "discopop"}


def trl_loss(loss_type: str, x: dict[str, list[float]], eps: float):
    """TRL's mean loss and its gradient w.r.t. the summed policy log-probs, from `DPOTrainer._compute_loss`."""
    dpo_trainer = pytest.importorskip("trl.trainer.dpo_trainer")
    n = len(x["pc"])
    lengths = torch.tensor(x["lc"] + x["lr"]).long()
    width = int(lengths.max()) + 2
    completion_mask = (torch.arange(width)[None, :] >= 1) & (torch.arange(width)[None, :] <= lengths[:, None])
    sums = torch.tensor(x["pc"] + x["pr"], dtype=torch.float64, requires_grad=True)
    shift = completion_mask[:, 1:].double()
    first = shift / shift.sum(1, keepdim=True)  # spread each sum over its completion tokens

    def model(**kwargs):
        zeros = torch.zeros(2 * n, width - 1, dtype=torch.float64)
        return SimpleNamespace(log_probs=first * sums[:, None], entropy=zeros, mean_logits=zeros,
                               is_top1=zeros.bool())

    accelerator = SimpleNamespace(device="cpu", gather_for_metrics=lambda t: t, gather=lambda t: t)
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=accelerator, aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=True, f_divergence_type="reverse_kl", f_alpha_divergence_coef=1.0,
        loss_types=[loss_type], loss_weights=[1.0], beta=BETA, label_smoothing=eps,
        args=SimpleNamespace(discopop_tau=TAU), use_weighting=False, _total_train_tokens=0, _tp_size=1,
        _metrics=defaultdict(lambda: defaultdict(list)))
    inputs = {"input_ids": torch.zeros(2 * n, width, dtype=torch.long), "attention_mask": completion_mask.long(),
              "completion_mask": completion_mask.long(),
              "ref_chosen_logps": torch.tensor(x["rc"], dtype=torch.float64),
              "ref_rejected_logps": torch.tensor(x["rr"], dtype=torch.float64)}
    loss = dpo_trainer.DPOTrainer._compute_loss(trainer, model, inputs, return_outputs=False)
    loss.backward()
    return loss.item(), sums.grad


@pytest.mark.parametrize("name", sorted(TRL_NAMES))
def test_equals_trls_dpo_trainer(name):
    x = batch(seed=1)
    smoothing = EPS if loss_spec(name).smoothing != "unused" else 0.0
    want, want_grad = trl_loss(TRL_NAMES[name], x, smoothing)
    s = seq(x)
    fn = loss_spec(name).fn
    ours = (bco_pair(s, PARAMS) if name == "bco_pair" else fn(s, LossParams(BETA, smoothing, discopop_tau=TAU))).mean()
    ours.backward()
    assert ours.item() == pytest.approx(want, rel=1e-7)  # TRL keeps ε in a float32 tensor
    torch.testing.assert_close(torch.cat([s.policy_chosen.grad, s.policy_rejected.grad]), want_grad,
                               rtol=1e-7, atol=1e-12)


# --------------------------------------------------------------------------------------- state and registry
def test_bco_shift_is_the_running_mean_of_batch_rewards():
    """δ before each use = mean over batches so far (this one included) of mean(β·cl, β·rl) (TRL ≤ 0.28)."""
    loss = make_pair_loss("bco_pair", LossParams(beta=0.5))
    assert isinstance(loss, BCOPair)
    one = SequenceLogps(*(torch.tensor(v) for v in ([-1.0], [-3.0], [-2.0], [-2.0], [1.0], [1.0])))  # β·cl=.5, β·rl=-.5
    two = SequenceLogps(*(torch.tensor(v) for v in ([-1.0], [-1.0], [-2.0], [-2.0], [1.0], [1.0])))  # both 0.5
    first = loss(one)
    assert loss.shift == pytest.approx(0.0)
    assert first.item() == pytest.approx(-logsig(0.5) - logsig(0.5))
    second = loss(two)
    assert loss.shift == pytest.approx(0.25)  # (0 + 0.5) / 2
    assert second.item() == pytest.approx(-logsig(0.5 - 0.25) - logsig(-(0.5 - 0.25)))
    fresh = make_pair_loss("bco_pair", LossParams(beta=0.5))
    fresh.load_state_dict(loss.state_dict())
    assert fresh(one).item() == pytest.approx(loss(one).item())


def test_trl_names_are_aliases_of_the_same_losses():
    for alias, name in ALIASES.items():
        assert loss_spec(alias) is loss_spec(name)
    with pytest.raises(ValueError, match="unknown loss 'kto'"):
        loss_spec("kto")


@pytest.mark.parametrize("loss,smoothing,message", [
    ("exo_pair", 0.0, "--loss exo_pair needs --label_smoothing > 0"),
    ("cdpo", 0.0, "--loss cdpo needs --label_smoothing > 0"),
    ("dpo", 0.1, "label_smoothing applies to --loss cdpo, robust, exo_pair, aot, aot_pair; not to 'dpo'"),
    ("kto", 0.0, "unknown loss 'kto'"),
])
def test_config_refuses_smoothing_where_a_loss_does_not_take_it(loss, smoothing, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RunConfig(loss=loss, label_smoothing=smoothing).validate()


def test_aot_smoothing_is_optional_and_every_loss_validates():
    for name, spec in LOSSES.items():
        RunConfig(loss=name, label_smoothing=EPS if spec.smoothing == "required" else 0.0).validate()
    RunConfig(loss="aot", label_smoothing=0.1).validate()


def test_metrics_are_implicit_rewards():
    s = SequenceLogps(*(torch.tensor(v) for v in ([-10.0], [-12.0], [-11.0], [-11.5], [4.0], [5.0])))
    m = preference_metrics(s, 0.1, torch.tensor([0.6]))
    assert m["rewards/chosen"] == pytest.approx(0.1) and m["rewards/rejected"] == pytest.approx(-0.05)
    assert m["rewards/margin"] == pytest.approx(0.15) and m["rewards/accuracy"] == 1.0

"""SELM, XPO and SAIL terms against values and gradients worked out by hand; SAIL's label term against the
exact expectation over the policy's own labels.

The pair of tests/learner/test_losses.py: log π(y_w) = −10, log π(y_l) = −12, log π_ref(y_w) = −11,
log π_ref(y_l) = −11.5, so h = 1.5; β = 0.1: βh = 0.15, σ(0.15) = 0.5374298453, ℓ = log σ(0.15) = −0.6209570478.
Reference sample ỹ: log π_θ(ỹ) = −20, log π_ref(ỹ) = −18.
"""
import math
from types import SimpleNamespace

import pytest
import torch

from fastalign.learner.algorithms import (
    algorithm_loss, orient, sail_loss, sample_policy_labels, selm_term, xpo_term,
)
from fastalign.learner.losses import LossParams, SequenceLogps

SIG = 0.5374298453437496
ELL = -0.620957047789532
DPO_GRAD = -(1 - SIG) * 0.1  # d(−ℓ)/d log π(y_w)
P = LossParams(beta=0.1)


def one_pair(w=-10.0, l=-12.0, rw=-11.0, rl=-11.5) -> SequenceLogps:
    t = lambda v: torch.tensor([v], dtype=torch.float64, requires_grad=True)  # noqa: E731
    return SequenceLogps(policy_chosen=t(w), policy_rejected=t(l), ref_chosen=t(rw), ref_rejected=t(rl),
                         chosen_len=torch.tensor([4.0]), rejected_len=torch.tensor([5.0]))


def cfg(**kw):
    base = dict(algorithm="online-dpo", loss="dpo", selm_alpha=1e-3, xpo_alpha=1e-5, sail_coef=0.5, sail_sampling="exact")
    return SimpleNamespace(**{**base, **kw})


def test_selm_term_value_and_gradient():
    extra = torch.tensor([-20.0], dtype=torch.float64, requires_grad=True)
    term = selm_term(extra, torch.tensor([-18.0], dtype=torch.float64), alpha=1e-3, beta=0.1)
    term.sum().backward()
    assert term.item() == pytest.approx(1e-3 * 0.1 * -2.0)
    assert extra.grad.item() == pytest.approx(1e-4)  # minimising lowers log π(ỹ): explore away from π_ref


def test_xpo_term_value_and_gradient():
    extra = torch.tensor([-20.0], dtype=torch.float64, requires_grad=True)
    term = xpo_term(extra, alpha=1e-5)
    term.sum().backward()
    assert term.item() == pytest.approx(-2e-4)
    assert extra.grad.item() == pytest.approx(1e-5)


@pytest.mark.parametrize("name,term", [("selm", 1e-3 * 0.1 * -2.0), ("xpo", 1e-5 * -20.0)])
def test_algorithm_loss_adds_the_extra_term_to_the_pair_loss(name, term):
    s = one_pair()
    extra = torch.tensor([-20.0], dtype=torch.float64, requires_grad=True)
    loss, _, metrics = algorithm_loss(cfg(algorithm=name), s, P, (extra, torch.tensor([-18.0])), [False])
    loss.sum().backward()
    assert loss.item() == pytest.approx(-ELL + term)
    assert s.policy_chosen.grad.item() == pytest.approx(DPO_GRAD)  # the pair loss's gradient is untouched
    assert metrics["extra/term"] == pytest.approx(term) and metrics["loss/pair"] == pytest.approx(-ELL)


def test_algorithm_loss_refuses_missing_inputs():
    with pytest.raises(ValueError, match="reference sample"):
        algorithm_loss(cfg(algorithm="xpo"), one_pair(), P, None, [False])
    with pytest.raises(ValueError, match="cannot label"):
        algorithm_loss(cfg(algorithm="online-dpo"), one_pair(), P, None, [True])
    with pytest.raises(ValueError, match="unlabelled"):
        algorithm_loss(cfg(algorithm="sail-pp"), one_pair(), P, None, [False])


def test_sail_pr_value_and_gradients():
    """L = −ℓ − λ·sg(ℓ)·(log π(y_w) + log π(y_l)), λ = 0.5."""
    s = one_pair()
    loss = sail_loss(s, P, "sail-pr", coef=0.5)
    loss.sum().backward()
    assert loss.item() == pytest.approx(-ELL - 0.5 * ELL * (-22.0))
    assert s.policy_chosen.grad.item() == pytest.approx(DPO_GRAD - 0.5 * ELL)
    assert s.policy_rejected.grad.item() == pytest.approx(-DPO_GRAD - 0.5 * ELL)
    assert s.ref_chosen.grad.item() == pytest.approx(-DPO_GRAD)  # the sampling term does not touch π_ref


def test_sail_authors_sampling_term_matches_their_gradient_hook():
    """The released code adds −coef·sg(ℓ)/sg(log π(y)) to ∂L/∂log π(y): weaker, and of opposite sign."""
    s = one_pair()
    loss = sail_loss(s, P, "sail-pr", coef=0.5, sampling="authors")
    loss.sum().backward()
    assert loss.item() == pytest.approx(-ELL - 0.5 * 2 * ELL)  # each response's term has value −coef·ℓ
    assert s.policy_chosen.grad.item() == pytest.approx(DPO_GRAD - 0.5 * ELL / -10.0)
    assert s.policy_rejected.grad.item() == pytest.approx(-DPO_GRAD - 0.5 * ELL / -12.0)
    exact = one_pair()
    sail_loss(exact, P, "sail-pr", coef=0.5).sum().backward()
    assert (s.policy_chosen.grad - DPO_GRAD).item() * (exact.policy_chosen.grad - DPO_GRAD).item() < 0


def test_sail_authors_sampling_term_skips_empty_responses():
    s = SequenceLogps(*(torch.tensor([v], requires_grad=True) for v in (0.0, -12.0, -11.0, -11.5)),
                      torch.tensor([0.0]), torch.tensor([3.0]))
    loss = sail_loss(s, P, "sail-pp", coef=0.5, sampling="authors")
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(s.policy_chosen.grad).all()


def test_sail_dp_value_and_gradients():
    """L = −ℓ − λ·sg(ℓ)·ℓ: the DPO gradient scaled by (1 + λℓ), no sampling term."""
    s = one_pair()
    loss = sail_loss(s, P, "sail-dp", coef=0.5)
    loss.sum().backward()
    assert loss.item() == pytest.approx(-ELL - 0.5 * ELL * ELL)
    assert s.policy_chosen.grad.item() == pytest.approx((1 + 0.5 * ELL) * DPO_GRAD)
    assert s.policy_rejected.grad.item() == pytest.approx(-(1 + 0.5 * ELL) * DPO_GRAD)


def test_sail_pp_has_both_terms():
    s = one_pair()
    sail_loss(s, P, "sail-pp", coef=0.5).sum().backward()
    assert s.policy_chosen.grad.item() == pytest.approx((1 + 0.5 * ELL) * DPO_GRAD - 0.5 * ELL)


def test_sail_zero_coef_is_dpo():
    for variant in ("sail-pr", "sail-pp", "sail-dp"):
        s = one_pair()
        loss = sail_loss(s, P, variant, coef=0.0)
        loss.sum().backward()
        assert loss.item() == pytest.approx(-ELL) and s.policy_chosen.grad.item() == pytest.approx(DPO_GRAD)


def test_sail_label_term_is_the_exact_gradient_over_the_policys_labels():
    """With λ = 1, averaging the dp surrogate's gradient over both labels weighted by P_θ = σ(βh) gives the
    gradient of J = E_label[ℓ] = s·log s + (1−s)·log(1−s), s = σ(βh): dJ/d log π(a) = β·s(1−s)·βh."""
    expected = 0.0
    for sign, prob in ((1.0, SIG), (-1.0, 1 - SIG)):
        s = one_pair()
        sail_loss(orient(s, torch.tensor([sign])), P, "sail-dp", coef=1.0).sum().backward()
        expected += prob * -s.policy_chosen.grad.item()  # ascent direction of J w.r.t. log π(a)
    assert expected == pytest.approx(0.1 * SIG * (1 - SIG) * 0.15, rel=1e-9)


def test_orient_swaps_only_where_labelled_so():
    s = SequenceLogps(*(torch.tensor([1.0, 2.0]) * k for k in (1, -1, 10, -10, 3, -3)))
    o = orient(s, torch.tensor([1.0, -1.0]))
    assert o.policy_chosen.tolist() == [1.0, -2.0] and o.policy_rejected.tolist() == [-1.0, 2.0]
    assert o.ref_chosen.tolist() == [10.0, -20.0] and o.rejected_len.tolist() == [-3.0, 6.0]


def test_policy_labels_follow_the_implicit_preference():
    n = 20000
    s = SequenceLogps(torch.full((n,), -10.0), torch.full((n,), -12.0), torch.full((n,), -11.0),
                      torch.full((n,), -11.5), torch.ones(n), torch.ones(n))
    signs = sample_policy_labels(s, beta=0.1, generator=torch.Generator().manual_seed(0))
    assert (signs > 0).float().mean().item() == pytest.approx(SIG, abs=0.01)
    sure = SequenceLogps(*(torch.tensor([v]) for v in (0.0, -500.0, 0.0, 0.0, 1.0, 1.0)))
    assert sample_policy_labels(sure, beta=0.1).item() == 1.0  # σ(50) ≈ 1: the first response wins


def test_sail_pp_through_algorithm_loss_reports_swaps():
    s = one_pair()
    loss, labelled, metrics = algorithm_loss(cfg(algorithm="sail-pp"), s, P, None, [True],
                                             torch.Generator().manual_seed(3))
    assert metrics["sail/label_swapped"] in (0.0, 1.0)
    h = labelled.margin().item()
    assert abs(h) == pytest.approx(1.5)
    ell = math.log(1 / (1 + math.exp(-0.1 * h)))
    assert loss.item() == pytest.approx(-ell - 0.5 * ell * (ell + labelled.policy_chosen.item()
                                                            + labelled.policy_rejected.item()))


@pytest.mark.parametrize("overrides,message", [
    (dict(algorithm="ppo"), "unknown algorithm 'ppo'"),
    (dict(algorithm="sail-pr", loss="ipo"), "use --loss dpo"),
    (dict(algorithm="sail-pp", explore="ee-ts", samples_per_prompt=4), "--explore passive"),
    (dict(algorithm="sail-dp"), "--response_field"),
    (dict(algorithm="xpo", xpo_alpha=-1.0), "xpo_alpha must be ≥ 0"),
    (dict(algorithm="sail-pr", sail_sampling="paper"), "unknown sail_sampling 'paper'"),
])
def test_config_refuses_bad_algorithm_settings(overrides, message):
    from fastalign.config import ConfigError, RunConfig

    with pytest.raises(ConfigError, match=message):
        RunConfig(**overrides).validate()


def test_algorithm_flags_reach_the_cli():
    from fastalign.config import parse_args

    cfg = parse_args(["--algorithm", "selm", "--selm-alpha", "0.01", "--sail_coef", "1"])
    assert (cfg.algorithm, cfg.selm_alpha, cfg.sail_coef) == ("selm", 0.01, 1.0)

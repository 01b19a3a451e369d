"""The online algorithms beyond plain online DPO, as per-pair loss terms on summed log-probs.

`--loss` picks the pair loss (dpo, ipo, …); `--algorithm` picks where the data comes from and which
terms are added to it. h = [log π(y_w) − log π(y_l)] − [log π_ref(y_w) − log π_ref(y_l)], ℓ = log σ(βh),
sg(·) = stop-gradient. Every function returns PER-PAIR losses, so the learner's tie weights and
micro-batch normalisation apply to the extra terms exactly as to the pair loss.

online-dpo  the pair loss on two policy samples labelled by the oracle (OAIF, Guo et al. 2024).
selm        pair loss + α·β·(log π_θ(ỹ) − log π_ref(ỹ)), ỹ ~ π_ref (Zhang et al. 2024, "Self-Exploring
            Language Models", optimistic DPO); α = selm_alpha (default 1e-3). Minimising it lowers the
            likelihood of what the reference already covers, which pushes the policy to explore.
xpo         pair loss + α·log π_θ(ỹ), ỹ ~ π_ref (Xie et al. 2024, "Exploratory Preference Optimization");
            α = xpo_alpha (default 1e-5).
bpo         the reference of a pair is the behaviour policy that generated it (Xu et al. 2024, "BPO:
            staying close to the behavior LLM"): log π_ref(y) := log π_θ_old(y), the policy at the
            start of the round. fastalign takes it from the learner's own forward pass of the pair,
            detached, the first time the pair is trained on (before any update of that round), and keeps
            it on the pair: exact, fp32, no frozen reference model and no extra forward. vLLM's sampling
            log-probs would also be raw temperature-1 log-probs, but they come from a different kernel
            (and possibly bf16), so h would start as numerical noise instead of exactly 0.
sail-*      SAIL (Ding et al. 2024, arXiv 2406.15567), see `sail_loss`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import ALGORITHMS, DATASET_RESPONSES, POLICY_LABELS, REFERENCE_SAMPLES, SAIL_SAMPLING  # noqa: F401
from .losses import LossParams, SequenceLogps, loss_function

SAIL = ("sail-pr", "sail-pp", "sail-dp")


def selm_term(policy_extra: torch.Tensor, ref_extra: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """α·β·(log π_θ(ỹ) − log π_ref(ỹ)) per pair, ỹ the reference's sample for the pair's prompt."""
    return alpha * beta * (policy_extra - ref_extra)


def xpo_term(policy_extra: torch.Tensor, alpha: float) -> torch.Tensor:
    """α·log π_θ(ỹ) per pair, ỹ the reference's sample for the pair's prompt."""
    return alpha * policy_extra


def sample_policy_labels(s: SequenceLogps, beta: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """+1 where the first response wins, −1 where the second does, drawn from P_θ(a ≻ b) = σ(βh)."""
    prob = torch.sigmoid(beta * s.margin().detach().double())
    u = torch.rand(prob.shape, generator=generator, dtype=torch.float64)
    return torch.where(u < prob, 1.0, -1.0).to(s.policy_chosen.dtype)


def orient(s: SequenceLogps, signs: torch.Tensor) -> SequenceLogps:
    """The pairs with chosen and rejected swapped where signs < 0 (differentiable)."""
    swap = signs < 0
    pick = lambda a, b: torch.where(swap, b, a)  # noqa: E731
    return SequenceLogps(pick(s.policy_chosen, s.policy_rejected), pick(s.policy_rejected, s.policy_chosen),
                         pick(s.ref_chosen, s.ref_rejected), pick(s.ref_rejected, s.ref_chosen),
                         pick(s.chosen_len, s.rejected_len), pick(s.rejected_len, s.chosen_len))


def sail_loss(s: SequenceLogps, p: LossParams, variant: str, coef: float, sampling: str = "exact") -> torch.Tensor:
    """The single-level SAIL objective's gradient as a per-pair surrogate loss (minimised).

    SAIL turns the bilevel problem "fit the reward r on preference data drawn from π*_r" into one level
    with the DPO reparametrisation r = β log π_θ/π_ref (so π*_r = π_θ). The objective is

        J(θ) = E_x E_{(y1,y2) ~ q} E_{(w,l) ~ P} [ ℓ_θ(w, l) ],   ℓ_θ(w, l) = log σ(β h_θ(w, l)),

    where q is the response distribution and P the label distribution of the variant:
        sail-pr: q = π_θ (policy samples), P = the oracle;
        sail-pp: q = π_θ,                  P = P_θ(w ≻ l) = σ(β h_θ(w, l)), the policy's own preference;
        sail-dp: q = the dataset,          P = P_θ.
    Differentiating through every θ-dependence (log-derivative trick for q and P) gives, for one pair
    and one label drawn from P (an unbiased single-sample estimator),

        ∇J = ∇ℓ                                         (the DPO gradient)
           + ℓ · ∇[log π_θ(y1) + log π_θ(y2)]            if q = π_θ   (sampling term: pr, pp)
           + ℓ · ∇ log P_θ(w ≻ l) = ℓ · ∇ℓ               if P = P_θ   (label term: pp, dp)

    and the surrogate minimised here, whose gradient is −∇J with the extra terms weighted by λ = coef:

        L = −ℓ − λ·sg(ℓ)·(log π_θ(y_w) + log π_θ(y_l)) [pr, pp] − λ·sg(ℓ)·ℓ [pp, dp].

    λ = 1 is the exact gradient; the default λ = 0.1 tempers the sampling term, whose weight |ℓ| ≈ 0.7
    on summed log-probs otherwise outweighs the DPO term's β(1 − σ) ≈ 0.05 by an order of magnitude.
    `s` is ordered (w, l): the oracle's label for pr, a label drawn by `sample_policy_labels` (then
    `orient`) for pp/dp.

    Checked against the authors' released trainer (SAIL's `cdpo/cdpo_trainer.py`, `GeneralizedDPOTrainer`):
    - its label term is −½·ρ·ℓ² (DDP = our dp) and −½·π·ℓ² (DPP = our pp), whose gradient −ρ·ℓ·∇ℓ is
      exactly the −λ·sg(ℓ)·ℓ above;
    - its sampling term (DPP, DPR = our pr) is a gradient hook adding −coef·sg(ℓ)/sg(log π(y)) to
      ∂L/∂log π(y), i.e. the score-function weight divided by the summed log-prob. As log π(y) < 0 that
      divides the weight by −|log π(y)|: it raises the likelihood of both responses where the exact
      term lowers it, and is |log π(y)| (≈ 30 here) times weaker. `sampling="authors"` reproduces it as
      the surrogate −coef·sg(ℓ / log π(y))·log π(y) (0 where a response is empty);
    - its example settings apply the terms to a random share of each batch (r, p, g ≈ 0.3–0.4; the rest is
      plain DPO on offline pairs) with coefficients ρ = 0.2, π = 0.2, γ = 0.3. Here every pair gets the
      terms, so λ plays the part of share × coefficient (0.06–0.09 in those settings; default 0.1).
    """
    if variant not in SAIL:
        raise ValueError(f"unknown SAIL variant {variant!r}: choose one of {', '.join(SAIL)}")
    if sampling not in SAIL_SAMPLING:
        raise ValueError(f"unknown SAIL sampling term {sampling!r}: choose one of {', '.join(SAIL_SAMPLING)}")
    ell = F.logsigmoid(p.beta * s.margin())
    loss = -ell
    if variant in ("sail-pr", "sail-pp"):
        for logp in (s.policy_chosen, s.policy_rejected):
            weight = ell.detach()
            if sampling == "authors":
                weight = torch.where(logp != 0, weight / logp.detach(), torch.zeros_like(weight))
            loss = loss - coef * weight * logp
    if variant in POLICY_LABELS:
        loss = loss - coef * ell.detach() * ell
    return loss


def algorithm_loss(cfg, s: SequenceLogps, p: LossParams, extra: tuple[torch.Tensor, torch.Tensor] | None,
                   policy_labels: list[bool], generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, SequenceLogps, dict[str, float]]:
    """Per-pair losses of cfg.algorithm on pairs `s`, the pairs as labelled, and the algorithm's metrics.

    extra: (log π_θ(ỹ) [B], log π_ref(ỹ) [B]) of each pair's reference sample, for selm/xpo.
    policy_labels: per pair, whether the learner draws its label (sail-pp/dp) instead of the oracle.
    """
    metrics: dict[str, float] = {}
    name = cfg.algorithm
    if name in SAIL:
        if name in POLICY_LABELS:
            if not all(policy_labels):
                raise ValueError(f"{name} expects unlabelled pairs (policy_labels=True) only")
            signs = sample_policy_labels(s, p.beta, generator)
            metrics["sail/label_swapped"] = float((signs < 0).float().mean())
            s = orient(s, signs)
        return sail_loss(s, p, name, cfg.sail_coef, cfg.sail_sampling), s, metrics
    if any(policy_labels):
        raise ValueError(f"pairs without oracle labels reached --algorithm {name}, which cannot label them")
    per_pair = loss_function(cfg.loss)(s, p)
    if name in REFERENCE_SAMPLES:
        if extra is None:
            raise ValueError(f"--algorithm {name} needs each pair's reference sample log-probs")
        policy_extra, ref_extra = extra
        term = (selm_term(policy_extra, ref_extra, cfg.selm_alpha, p.beta) if name == "selm"
                else xpo_term(policy_extra, cfg.xpo_alpha))
        metrics.update({"loss/pair": float(per_pair.detach().mean()), "extra/term": float(term.detach().mean()),
                        "extra/logps": float(policy_extra.detach().mean())})
        per_pair = per_pair + term
    return per_pair, s, metrics

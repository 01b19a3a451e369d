"""The pair-loss family: direct-alignment losses on summed response log-probs, chosen once by `--loss`.

Notation on one pair (y_w chosen, y_l rejected): cl = log π(y_w) − log π_ref(y_w), rl = log π(y_l) −
log π_ref(y_l), h = cl − rl, β = `beta`, ε = `label_smoothing`. Every loss maps a batch of pairs
(`SequenceLogps`) to one loss per pair; the learner weights and averages them, the fused kernels
differentiate them, and the algorithms add their own terms on top. Forms follow TRL's DPOTrainer
(`loss_type` of the same name) and the papers named in `LOSSES`; where TRL's versions differ, the
docstring of the function says which one is followed.

This module imports nothing of fastalign, so the kernels below the learner can use it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F


@dataclass
class SequenceLogps:
    """Summed response log-probs [B] and response lengths [B] (tokens) of a batch of pairs."""

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    chosen_len: torch.Tensor
    rejected_len: torch.Tensor

    def chosen_logratio(self) -> torch.Tensor:
        return self.policy_chosen - self.ref_chosen

    def rejected_logratio(self) -> torch.Tensor:
        return self.policy_rejected - self.ref_rejected

    def margin(self) -> torch.Tensor:
        """h, the log-ratio margin on summed log-probs."""
        return self.chosen_logratio() - self.rejected_logratio()

    def margin_avg(self) -> torch.Tensor:
        """h on length-averaged log-probs (the IPO paper's practice, and TRL's)."""
        cl, rl = self.chosen_len.clamp(min=1), self.rejected_len.clamp(min=1)
        return self.chosen_logratio() / cl - self.rejected_logratio() / rl

    def swapped(self, swap: torch.Tensor) -> "SequenceLogps":
        """The pairs with chosen and rejected exchanged where `swap` is true (differentiable)."""
        pick = lambda a, b: torch.where(swap, b, a)  # noqa: E731
        return SequenceLogps(pick(self.policy_chosen, self.policy_rejected),
                             pick(self.policy_rejected, self.policy_chosen),
                             pick(self.ref_chosen, self.ref_rejected), pick(self.ref_rejected, self.ref_chosen),
                             pick(self.chosen_len, self.rejected_len), pick(self.rejected_len, self.chosen_len))


@dataclass
class LossParams:
    beta: float = 0.1
    label_smoothing: float = 0.0  # ε of cdpo, robust, exo_pair, aot, aot_pair
    simpo_gamma_ratio: float = 0.5  # γ/β of SimPO
    discopop_tau: float = 0.05  # τ of DiscoPOP (TRL's default)


def _smoothed_sigmoid(z: torch.Tensor, eps: float) -> torch.Tensor:
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


def dpo(s: SequenceLogps, p: LossParams) -> torch.Tensor:
    return -F.logsigmoid(p.beta * s.margin())


def cdpo(s: SequenceLogps, p: LossParams) -> torch.Tensor:
    """TRL's `sigmoid` with label_smoothing ε > 0 (TRL ≤ 0.28; later TRL ignores ε there)."""
    return _smoothed_sigmoid(p.beta * s.margin(), p.label_smoothing)


def robust(s: SequenceLogps, p: LossParams) -> torch.Tensor:
    z, eps = p.beta * s.margin(), p.label_smoothing
    return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)


def ipo(s: SequenceLogps, p: LossParams) -> torch.Tensor:
    """On length-averaged log-ratios, as TRL (confirmed with the IPO authors) and the IPO paper's practice."""
    return (s.margin_avg() - 1 / (2 * p.beta)) ** 2


def slic(s: SequenceLogps, p: LossParams) -> torch.Tensor:
    """TRL's `hinge`: the SLiC calibration loss on the reference-normalised margin."""
    return torch.relu(1 - p.beta * s.margin())


def simpo(s: SequenceLogps, p: LossParams) -> torch.Tensor:
    avg_w = s.policy_chosen / s.chosen_len.clamp(min=1)
    avg_l = s.policy_rejected / s.rejected_len.clamp(min=1)
    return -F.logsigmoid(p.beta * (avg_w - avg_l) - p.simpo_gamma_ratio * p.beta)


def exo_pair(s: SequenceLogps, p: LossParams) -> torch.Tensor:
    """KL(p_θ ‖ p_ε) over {chosen, rejected}, p_θ = softmax of the β-scaled log-ratios, p_ε = (1−ε, ε)."""
    z, eps = p.beta * s.margin(), p.label_smoothing
    return (torch.sigmoid(z) * (F.logsigmoid(z) - math.log1p(-eps))
            + torch.sigmoid(-z) * (F.logsigmoid(-z) - math.log(eps)))


def nca_pair(s: SequenceLogps, p: LossParams) -> torch.Tensor:
    chosen, rejected = p.beta * s.chosen_logratio(), p.beta * s.rejected_logratio()
    return -F.logsigmoid(chosen) - 0.5 * F.logsigmoid(-chosen) - 0.5 * F.logsigmoid(-rejected)


def bco_pair(s: SequenceLogps, p: LossParams, shift: float = 0.0) -> torch.Tensor:
    """Binary classification of the implicit rewards around the shift δ (`BCOPair` keeps δ running)."""
    chosen, rejected = p.beta * s.chosen_logratio(), p.beta * s.rejected_logratio()
    return -F.logsigmoid(chosen - shift) - F.logsigmoid(-(rejected - shift))


def sppo_hard(s: SequenceLogps, p: LossParams) -> torch.Tensor:
    """SPPO with hard probabilities (winner P = 1, loser P = 0): squared errors to ±1/(2β)."""
    return (s.chosen_logratio() - 0.5 / p.beta) ** 2 + (s.rejected_logratio() + 0.5 / p.beta) ** 2


def aot(s: SequenceLogps, p: LossParams) -> torch.Tensor:
    """Alignment via optimal transport: sorted policy margins against sorted reference margins."""
    policy, _ = torch.sort(s.policy_chosen - s.policy_rejected)
    reference, _ = torch.sort(s.ref_chosen - s.ref_rejected)
    return _smoothed_sigmoid(p.beta * (policy - reference), p.label_smoothing)


def aot_pair(s: SequenceLogps, p: LossParams) -> torch.Tensor:
    """AOT unpaired (TRL ≥ 0.28: `aot_unpaired`): sorted chosen against sorted rejected log-ratios."""
    chosen, _ = torch.sort(s.chosen_logratio())
    rejected, _ = torch.sort(s.rejected_logratio())
    return _smoothed_sigmoid(p.beta * (chosen - rejected), p.label_smoothing)


def apo_zero(s: SequenceLogps, p: LossParams) -> torch.Tensor:
    """APO-zero: raise the chosen likelihood, lower the rejected one (chosen better than the model's own)."""
    return 1 - torch.sigmoid(p.beta * s.chosen_logratio()) + torch.sigmoid(p.beta * s.rejected_logratio())


def apo_down(s: SequenceLogps, p: LossParams) -> torch.Tensor:
    """APO-down: lower both likelihoods, the rejected one more (chosen worse than the model's own)."""
    return torch.sigmoid(p.beta * s.chosen_logratio()) + 1 - torch.sigmoid(p.beta * s.margin())


def discopop(s: SequenceLogps, p: LossParams) -> torch.Tensor:
    """The discovered log-ratio-modulated loss: logistic and exponential parts mixed by σ(βh/τ)."""
    z = p.beta * s.margin()
    mix = torch.sigmoid(z / p.discopop_tau)
    return -F.logsigmoid(z) * (1 - mix) + torch.exp(-z) * mix


class PairLoss(Protocol):
    """A loss chosen for a run: per-pair losses [B] of a batch of pairs."""

    def __call__(self, s: SequenceLogps) -> torch.Tensor: ...


class FunctionLoss:
    """A stateless loss of the family with its parameters bound."""

    def __init__(self, fn: Callable[[SequenceLogps, LossParams], torch.Tensor], params: LossParams) -> None:
        self.fn, self.params = fn, params

    def __call__(self, s: SequenceLogps) -> torch.Tensor:
        return self.fn(s, self.params)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class BCOPair(FunctionLoss):
    """bco_pair with the BCO paper's reward shift δ: the running mean, over every batch scored so far
    (this one included, before it is used), of the batch's mean implicit reward β·log π/π_ref of both
    responses, as TRL ≤ 0.28 (`RunningMoments`). TRL ≥ 0.29 dropped δ (δ = 0); `bco_pair(shift=0)` is that."""

    def __init__(self, params: LossParams) -> None:
        super().__init__(bco_pair, params)
        self.shift, self.batches = 0.0, 0

    def __call__(self, s: SequenceLogps) -> torch.Tensor:
        rewards = self.params.beta * torch.cat([s.chosen_logratio(), s.rejected_logratio()]).detach()
        self.batches += 1
        self.shift += (float(rewards.mean()) - self.shift) / self.batches
        return bco_pair(s, self.params, self.shift)

    def state_dict(self) -> dict[str, Any]:
        return {"shift": self.shift, "batches": self.batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shift, self.batches = float(state["shift"]), int(state["batches"])


@dataclass(frozen=True)
class LossSpec:
    """One `--loss`: its function, what it needs, and where it comes from (for the docs and errors).

    smoothing: "required" (ε > 0), "optional" (ε ≥ 0) or "unused" (ε must stay 0).
    paired: False when a pair's loss depends on the other pairs of its micro-batch (AOT sorts them).
    """

    fn: Callable[[SequenceLogps, LossParams], torch.Tensor]
    formula: str
    reference: str
    smoothing: str = "unused"
    paired: bool = True
    build: Callable[[LossParams], FunctionLoss] | None = None

    def make(self, params: LossParams) -> FunctionLoss:
        return self.build(params) if self.build is not None else FunctionLoss(self.fn, params)


LOSSES: dict[str, LossSpec] = {
    "dpo": LossSpec(dpo, "−log σ(βh)", "Rafailov et al. 2023 (TRL: sigmoid)"),
    "cdpo": LossSpec(cdpo, "−(1−ε) log σ(βh) − ε log σ(−βh)",
                     "conservative DPO (TRL ≤ 0.28: sigmoid + ε)",
                     smoothing="required"),
    "robust": LossSpec(robust, "[−(1−ε) log σ(βh) + ε log σ(−βh)] / (1−2ε)",
                       "Chowdhury et al. 2024 (TRL: robust)",
                       smoothing="required"),
    "ipo": LossSpec(ipo, "(h_avg − 1/(2β))², length-averaged log-ratios", "Azar et al. 2023 (TRL: ipo)"),
    "slic": LossSpec(slic, "relu(1 − βh)", "Zhao et al. 2023 (TRL: hinge)"),
    "simpo": LossSpec(simpo, "−log σ(β(avg log π(y_w) − avg log π(y_l)) − γ), γ = ratio·β",
                      "Meng et al. 2024"),
    "exo_pair": LossSpec(exo_pair, "σ(βh)(log σ(βh) − log(1−ε)) + σ(−βh)(log σ(−βh) − log ε)",
                         "Ji et al. 2024, EXO (TRL: exo_pair)", smoothing="required"),
    "nca_pair": LossSpec(nca_pair, "−log σ(β·cl) − ½ log σ(−β·cl) − ½ log σ(−β·rl)",
                         "Chen et al. 2024, NCA (TRL: nca_pair)"),
    "bco_pair": LossSpec(bco_pair, "−log σ(β·cl − δ) − log σ(δ − β·rl), δ = running mean reward",
                         "Jung et al. 2024, BCO (TRL ≤ 0.28: bco_pair)", build=BCOPair),
    "sppo_hard": LossSpec(sppo_hard, "(cl − 1/(2β))² + (rl + 1/(2β))²", "Wu et al. 2024, SPPO (TRL: sppo_hard)"),
    "aot": LossSpec(aot, "smoothed −log σ(β(sort(log π_w − log π_l) − sort(ref margins)))",
                    "Melnyk et al. 2024, AOT (TRL: aot)", smoothing="optional", paired=False),
    "aot_pair": LossSpec(aot_pair, "smoothed −log σ(β(sort(cl) − sort(rl)))",
                         "Melnyk et al. 2024, AOT unpaired (TRL: aot_pair / aot_unpaired)", smoothing="optional",
                         paired=False),
    "apo_zero": LossSpec(apo_zero, "1 − σ(β·cl) + σ(β·rl)", "D'Oosterlinck et al. 2024, APO (TRL: apo_zero)"),
    "apo_down": LossSpec(apo_down, "σ(β·cl) + 1 − σ(βh)", "D'Oosterlinck et al. 2024, APO (TRL: apo_down)"),
    "discopop": LossSpec(discopop, "−log σ(βh)(1 − σ(βh/τ)) + e^(−βh) σ(βh/τ)",
                         "Chris Lu et al. 2024, DiscoPOP (TRL: discopop)"),
}
ALIASES = {"sigmoid": "dpo", "hinge": "slic", "aot_unpaired": "aot_pair"}  # TRL's names for the same losses


def loss_spec(name: str) -> LossSpec:
    try:
        return LOSSES[ALIASES.get(name, name)]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}: choose one of {', '.join([*LOSSES, *ALIASES])}") from None


def make_pair_loss(name: str, params: LossParams) -> FunctionLoss:
    """The run's loss object (fresh state: bco_pair keeps a running shift)."""
    return loss_spec(name).make(params)


@torch.no_grad()
def preference_metrics(s: SequenceLogps, beta: float, losses: torch.Tensor) -> dict[str, float]:
    """The usual metrics: implicit rewards β·log-ratio, their margin and accuracy, policy log-probs."""
    chosen, rejected = beta * s.chosen_logratio(), beta * s.rejected_logratio()
    return {
        "loss": float(losses.mean()),
        "rewards/chosen": float(chosen.mean()),
        "rewards/rejected": float(rejected.mean()),
        "rewards/margin": float((chosen - rejected).mean()),
        "rewards/accuracy": float((chosen > rejected).float().mean()),
        "logps/chosen": float(s.policy_chosen.mean()),
        "logps/rejected": float(s.policy_rejected.mean()),
    }


def preference_loss(name: str, s: SequenceLogps, p: LossParams) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean loss over the pairs and its metrics (stateless: bco_pair with δ = 0)."""
    losses = loss_spec(name).fn(s, p)
    return losses.mean(), preference_metrics(s, p.beta, losses)

"""SAIL: online alignment as a single-level problem, in its three variants (PR, PP, DP)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ConfigError, RunConfig
from ..losses import SequenceLogps
from ..seeding import torch_generator
from ..types import DATASET, ORACLE, POLICY, Completion, PreferencePair, Prompt
from .base import Algorithm, Sampler, require_pair_loss

if TYPE_CHECKING:
    from ..learner.learner import PolicyLearner

SAMPLING_FORMS = ("exact", "authors")


class SAIL(Algorithm):
    """SAIL (Ding et al. 2024, "SAIL: Self-Improving Efficient Online Alignment", arXiv 2406.15567).

    SAIL turns "fit the reward on preferences drawn from the policy it induces" into one level with the
    DPO reparametrisation r = β log π_θ/π_ref, and maximises J(θ) = E_{(y1,y2) ~ q} E_{(w,l) ~ P}[ℓ_θ(w, l)],
    ℓ = log σ(βh). Differentiating through the θ-dependence of the response distribution q = π_θ
    (variants PR, PP) and of the label distribution P = P_θ(w ≻ l) = σ(βh) (PP, DP) adds, to the DPO
    gradient ∇ℓ, the terms
        sampling  ℓ·∇[log π_θ(y_w) + log π_θ(y_l)]    (the pair was drawn from π_θ)
        label     ℓ·∇ℓ                                  (the label was drawn from P_θ)
    As in the authors' trainer (`cdpo/cdpo_trainer.py`, `GeneralizedDPOTrainer`), only a share of the
    pairs gets the extra terms; the rest is plain DPO on labelled pairs, the only ground truth: labelled
    by the oracle (PR, PP) or the dataset (DP). With every pair labelled by the policy the expected
    preference gradient would vanish, so a configuration without a labelled share is refused.

    Per pair (minimised; λ = `--sail_coef`, routed pairs only):
        PR  −ℓ − λ·sg(ℓ)·(log π(y_w) + log π(y_l))            all pairs oracle-labelled
        PP  −ℓ − λ·sg(ℓ)·(log π(y_w) + log π(y_l)) − ½λ·ℓ²   routed pairs labelled by P_θ, no query
        DP  −ℓ − ½λ·ℓ²                                        dataset pairs, routed labels redrawn from P_θ
    −½λℓ² is the authors' label term (its gradient is −λℓ∇ℓ). Routing is drawn per pair: each update
    for PR and DP (as the authors' per-step multinomial), once when the batch is collected for PP (its
    labels decide which pairs are queried). PP draws its labels from σ(βh) of the policy at collection
    (the learner's policy before the round's first update), like the authors' labels at generation time;
    DP redraws them at every update. Defaults are the authors' example settings (`configs/tasks.yaml`):
    share / coefficient PR 0.3 / 0.3 (g, γ), PP 0.3 / 0.2 (p, π), DP 0.4 / 0.2 (r, ρ).

    The sampling term: `--sail_sampling exact` (default) is the score-function gradient above. The
    authors' code instead adds −λ·sg(ℓ)/sg(log π(y)) to ∂L/∂log π(y) (a gradient hook); as log π(y) < 0
    that flips the term's sign and shrinks it by |log π(y)|. `--sail_sampling authors` reproduces it as the
    surrogate −λ·sg(ℓ / log π(y))·log π(y) (0 for an empty response). The sampling term assumes the pair
    was drawn from π_θ itself: SEA selection, `--top_p` < 1 or `--temperature` ≠ 1 break that and are refused.
    """

    paper = "Ding et al. 2024 (SAIL), arXiv 2406.15567"
    default_share: ClassVar[float]
    default_coef: ClassVar[float]
    sampled_from_policy: ClassVar[bool] = True  # PR, PP: the sampling term applies

    def __init__(self, cfg: RunConfig, *, tokenizer: Any = None, rank: int = 0) -> None:
        super().__init__(cfg, tokenizer=tokenizer, rank=rank)
        self.share = self.default_share if cfg.sail_share is None else cfg.sail_share
        self.coef = self.default_coef if cfg.sail_coef is None else cfg.sail_coef
        self.draws = torch_generator(cfg.seed, f"{self.name}-draws", rank)

    @classmethod
    def check(cls, cfg: RunConfig) -> None:
        require_pair_loss(cls, cfg, ("dpo",), "is defined on the DPO likelihood log σ(βh)")
        if cfg.sail_sampling not in SAMPLING_FORMS:
            raise ConfigError(f"unknown sail_sampling {cfg.sail_sampling!r}: choose 'exact' (the score-function "
                              "gradient) or 'authors' (the SAIL authors' released code)")
        if cfg.sail_coef is not None and not cfg.sail_coef >= 0:
            raise ConfigError(f"sail_coef must be ≥ 0, got {cfg.sail_coef}")
        share = cls.default_share if cfg.sail_share is None else cfg.sail_share
        cls.check_share(share)
        if cls.sampled_from_policy:
            why = "has a sampling term that assumes each pair was drawn from π_θ itself"
            cls.refuse_exploration(cfg, why)
            if cfg.top_p != 1 or cfg.temperature != 1:
                raise ConfigError(f"--algorithm {cls.name} {why}: sample with --temperature 1 --top_p 1 "
                                  f"(got {cfg.temperature}, {cfg.top_p})")

    @classmethod
    def check_share(cls, share: float) -> None:
        if not 0 < share < 1:
            raise ConfigError(f"--algorithm {cls.name}: sail_share must be in (0, 1), the share of pairs that get "
                              f"SAIL's terms, leaving the rest to labelled DPO; got {share}")

    # ------------------------------------------------------------------ terms
    def ell(self, s: SequenceLogps) -> torch.Tensor:
        return F.logsigmoid(self.params.beta * s.margin())

    def label_term(self, ell: torch.Tensor) -> torch.Tensor:
        return -0.5 * self.coef * ell ** 2

    def sampling_term(self, ell: torch.Tensor, s: SequenceLogps) -> torch.Tensor:
        term = torch.zeros_like(ell)
        for logp in (s.policy_chosen, s.policy_rejected):
            weight = ell.detach()
            if self.cfg.sail_sampling == "authors":
                weight = torch.where(logp != 0, weight / logp.detach(), torch.zeros_like(weight))
            term = term - self.coef * weight * logp
        return term

    def draw(self, probability: torch.Tensor) -> torch.Tensor:
        """Bernoulli draws (bool) from this algorithm's own seeded stream."""
        u = torch.rand(probability.shape, generator=self.draws, dtype=torch.float64)
        return u.to(probability.device) < probability.double()

    def draw_swaps(self, s: SequenceLogps) -> torch.Tensor:
        """Labels from the policy: keep (w, l) with P_θ(w ≻ l) = σ(βh), swap otherwise."""
        return self.draw(1 - torch.sigmoid(self.params.beta * s.margin().detach()))

    def routed(self, n: int, device: torch.device) -> torch.Tensor:
        return self.draw(torch.full((n,), self.share, device=device))

    @staticmethod
    def metrics(per_pair: torch.Tensor, routed: torch.Tensor, **terms: torch.Tensor) -> dict[str, float]:
        out = {"sail/routed": float(routed.float().mean())}
        out.update({f"sail/{k}": float(v.detach().mean()) for k, v in terms.items()})
        return out

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "draws": self.draws.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.draws.set_state(state["draws"])


class SAILPR(SAIL):
    """PR: policy responses, oracle labels; the routed share adds the sampling term."""

    name = "sail-pr"
    default_share, default_coef = 0.3, 0.3

    @classmethod
    def check_share(cls, share: float) -> None:
        if not 0 < share <= 1:  # every pair stays oracle-labelled, so all of them may get the term
            raise ConfigError(f"--algorithm sail-pr: sail_share must be in (0, 1], got {share}")

    def loss(self, s: SequenceLogps, pairs: list[PreferencePair], extra_logps: torch.Tensor | None):
        ell = self.ell(s)
        routed = self.routed(len(pairs), ell.device)
        sampling = torch.where(routed, self.sampling_term(ell, s), torch.zeros_like(ell))
        per_pair = -ell + sampling
        return per_pair, s, self.metrics(per_pair, routed, sampling_term=sampling)


class SAILPP(SAIL):
    """PP: policy responses; the routed share is labelled by the policy (no query) and gets both terms."""

    name = "sail-pp"
    default_share, default_coef = 0.3, 0.2

    def label_sources(self, rows: int, rng: np.random.Generator) -> np.ndarray:
        return np.where(rng.random(rows) < self.share, POLICY, ORACLE).astype(object)

    def prepare(self, pairs: list[PreferencePair], learner: "PolicyLearner") -> dict[str, float]:
        mine = [p for p in pairs if p.labelled_by == POLICY]
        if not mine:
            return {"sail/label_swapped": 0.0}
        logps = learner.policy_logps(mine)
        n = len(mine)
        s = SequenceLogps(logps[:n], logps[n:], torch.tensor([p.ref_chosen_logprob for p in mine]),
                          torch.tensor([p.ref_rejected_logprob for p in mine]), torch.ones(n), torch.ones(n))
        swaps = self.draw_swaps(s)
        for pair, swap in zip(mine, swaps.tolist()):
            if swap:
                pair.swap()
        return {"sail/label_swapped": float(swaps.float().mean())}

    def loss(self, s: SequenceLogps, pairs: list[PreferencePair], extra_logps: torch.Tensor | None):
        ell = self.ell(s)
        routed = torch.tensor([p.labelled_by == POLICY for p in pairs], device=ell.device)
        zero = torch.zeros_like(ell)
        sampling = torch.where(routed, self.sampling_term(ell, s), zero)
        label = torch.where(routed, self.label_term(ell), zero)
        per_pair = -ell + sampling + label
        return per_pair, s, self.metrics(per_pair, routed, sampling_term=sampling, label_term=label)


class SAILDP(SAIL):
    """DP: the dataset's pairs; the routed share gets labels redrawn from the policy and the label term."""

    name = "sail-dp"
    default_share, default_coef = 0.4, 0.2
    sampled_from_policy = False
    fixed_pair = True

    def __init__(self, cfg: RunConfig, *, tokenizer: Any = None, rank: int = 0) -> None:
        super().__init__(cfg, tokenizer=tokenizer, rank=rank)
        from ..dataset_pairs import load_dataset_pairs

        if tokenizer is None:
            raise ValueError("sail-dp needs the tokenizer to encode the dataset's responses")
        self.pairs = load_dataset_pairs(cfg.prompts, tokenizer, cfg.prompt_field, cfg.chosen_field,
                                        cfg.rejected_field)

    @classmethod
    def check(cls, cfg: RunConfig) -> None:
        super().check(cfg)
        if cfg.prompts == "default":
            raise ConfigError(f"--algorithm {cls.name} trains on the dataset's own preference pairs, which the "
                              f"default prompt set does not have: give --prompts a JSONL whose rows hold the "
                              f"fields {cfg.chosen_field!r} and {cfg.rejected_field!r} (--chosen_field / "
                              "--rejected_field)")

    def sample(self, sampler: Sampler, prompts: list[Prompt], seed_for) -> list[list[Completion]]:
        return [list(self.pairs[p.instruction]) for p in prompts]

    def label_sources(self, rows: int, rng: np.random.Generator) -> np.ndarray:
        return np.full(rows, DATASET, dtype=object)

    def loss(self, s: SequenceLogps, pairs: list[PreferencePair], extra_logps: torch.Tensor | None):
        routed = self.routed(len(pairs), s.policy_chosen.device)
        swaps = routed & self.draw_swaps(s)
        s = s.swapped(swaps)
        ell = self.ell(s)
        label = torch.where(routed, self.label_term(ell), torch.zeros_like(ell))
        per_pair = -ell + label
        metrics = self.metrics(per_pair, routed, label_term=label)
        metrics["sail/label_swapped"] = float(swaps.float().mean())
        return per_pair, s, metrics

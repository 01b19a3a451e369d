"""XPO: online DPO whose judged pair is a policy sample against a reference sample."""
from __future__ import annotations

import torch

from ..config import ConfigError, RunConfig
from ..losses import SequenceLogps
from ..types import REFERENCE, Completion, PreferencePair, Prompt
from .base import Algorithm, Sampler, require_pair_loss


class XPO(Algorithm):
    """XPO (Xie et al. 2024, "Exploratory Preference Optimization", arXiv 2405.21046, Algorithm 1), as in
    TRL's `XPOTrainer` and oat's `xpo`: each round one response y ~ π_θ and one ỹ ~ π_ref per prompt; the
    oracle judges (y, ỹ); the loss is

        pair loss (DPO or IPO) + α·log π_θ(ỹ),  on the judged ỹ, whether it won or lost,

    α = `--xpo_alpha` (TRL's default 1e-5; oat uses 5e-6), log-probs summed over the response. Minimising
    α·log π_θ(ỹ) lowers the likelihood of what the reference would say: the exploration bonus.
    Ties: TRL gives a tie to the policy sample, oat to the reference sample; here, as for every
    algorithm, a tied pair carries no preference and is not trained on (it still costs its query).
    """

    name = "xpo"
    paper = "Xie et al. 2024 (XPO), arXiv 2405.21046"
    fixed_pair = True

    @classmethod
    def check(cls, cfg: RunConfig) -> None:
        cls.refuse_exploration(cfg, "judges one policy sample against one reference sample, so there is no "
                                    "pair to choose")
        if cfg.samples_per_prompt != 2:
            raise ConfigError(f"--algorithm xpo samples one response from the policy and one from the reference "
                              f"per prompt; --samples_per_prompt {cfg.samples_per_prompt} does not apply "
                              "(leave it at 2)")
        require_pair_loss(cls, cfg, ("dpo", "ipo"), "is defined with the DPO or IPO pair loss (as TRL and oat)")

    def sample(self, sampler: Sampler, prompts: list[Prompt], seed_for) -> list[list[Completion]]:
        policy = sampler.policy(prompts, 1, seed_for("policy"))
        reference = sampler.reference(prompts, 1, seed_for("reference"))
        return [[p[0], r[0]] for p, r in zip(policy, reference)]

    def loss(self, s: SequenceLogps, pairs: list[PreferencePair], extra_logps: torch.Tensor | None):
        reference_chosen = torch.tensor([p.chosen_from == REFERENCE for p in pairs], device=s.policy_chosen.device)
        if not all((p.chosen_from == REFERENCE) != (p.rejected_from == REFERENCE) for p in pairs):
            raise ValueError("every XPO pair must hold exactly one reference sample (chosen_from / rejected_from)")
        reference_logps = torch.where(reference_chosen, s.policy_chosen, s.policy_rejected)
        per_pair = self.pair_loss(s)
        term = self.cfg.xpo_alpha * reference_logps
        metrics = {"loss/pair": float(per_pair.detach().mean()), "xpo/term": float(term.detach().mean()),
                   "xpo/reference_logps": float(reference_logps.detach().mean()),
                   "xpo/policy_sample_won": float((~reference_chosen).float().mean())}
        return per_pair + term, s, metrics

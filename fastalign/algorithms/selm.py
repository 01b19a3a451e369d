"""SELM: optimistic online DPO that pushes the policy away from what the reference already says."""
from __future__ import annotations

import torch

from ..config import ConfigError, RunConfig
from ..losses import SequenceLogps
from ..types import Completion, PreferencePair, Prompt
from .base import Algorithm, Sampler


class SELM(Algorithm):
    """SELM (Zhang et al. 2024, "Self-Exploring Language Models", arXiv 2405.19332, eq. 4.2):

        loss = pair loss + α·β·(log π_θ(ỹ) − sg log π_ref(ỹ)),  ỹ from π_ref for the pair's prompt,

    α = `--selm_alpha`. The term lowers the likelihood of what the reference already says, which drives
    exploration; its π_ref part carries no gradient and only makes the term read 0 at the start.
    As in the authors' trainer (`scripts/selm_trainer.py`, `optimistic_dpo_loss`) log-probs are summed
    over the response. ỹ: `--selm_response sample` draws it from π_ref as the paper writes (y ~ π_ref);
    `greedy` decodes it greedily, as the authors' code does. Each round the reference's weights go into
    the engine for ỹ and the policy's come back for the next round (two in-place swaps).
    log π_ref(ỹ) is the engine's log-prob of ỹ under the reference (raw, temperature 1).
    """

    name = "selm"
    paper = "Zhang et al. 2024 (SELM), arXiv 2405.19332"

    @classmethod
    def check(cls, cfg: RunConfig) -> None:
        if cfg.selm_response not in ("sample", "greedy"):
            raise ConfigError(f"unknown selm_response {cfg.selm_response!r}: choose 'sample' (ỹ ~ π_ref, the "
                              "paper) or 'greedy' (the authors' code)")

    def extra_responses(self, sampler: Sampler, prompts: list[Prompt], seed_for) -> list[Completion]:
        if self.cfg.selm_response == "greedy":
            return sampler.reference_greedy(prompts)
        return [row[0] for row in sampler.reference(prompts, 1, seed_for("reference"))]

    def loss(self, s: SequenceLogps, pairs: list[PreferencePair], extra_logps: torch.Tensor | None):
        if extra_logps is None:
            raise ValueError("SELM's loss needs the policy's log-probs of each pair's reference response")
        ref = torch.tensor([p.extra_ref_logprob for p in pairs], dtype=extra_logps.dtype, device=extra_logps.device)
        per_pair = self.pair_loss(s)
        term = self.cfg.selm_alpha * self.params.beta * (extra_logps - ref)
        metrics = {"loss/pair": float(per_pair.detach().mean()), "selm/term": float(term.detach().mean()),
                   "selm/logps": float(extra_logps.detach().mean())}
        return per_pair + term, s, metrics

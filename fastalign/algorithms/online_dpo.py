"""Online DPO with oracle feedback, and its offline baseline."""
from __future__ import annotations

from .base import Algorithm, Sampler
from ..types import Completion, Prompt


class OnlineDPO(Algorithm):
    """OAIF (Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback"): each round the
    policy samples responses, the oracle labels the chosen pair, the pair loss (`--loss`) updates the policy.
    With a SEA `--explore` rule this is SEA's online DPO (Liu et al. 2024)."""

    name = "online-dpo"
    paper = "Guo et al. 2024 (OAIF)"


class OfflineDPO(Algorithm):
    """The same loss on responses sampled from the frozen reference, never the policy: DPO on a set that
    could have been collected before training (the sample-efficiency bench's baseline). The oracle still
    labels each pair when it is drawn, so the curves share the x-axis of the online methods."""

    name = "offline-dpo"
    paper = "Rafailov et al. 2023 (DPO) on reference samples"

    def sample(self, sampler: Sampler, prompts: list[Prompt], seed_for) -> list[list[Completion]]:
        return sampler.reference(prompts, self.cfg.samples_per_prompt, seed_for("reference"))

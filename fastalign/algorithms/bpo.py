"""BPO: the reference of each batch is the behaviour policy that generated it."""
from __future__ import annotations

from ..config import ConfigError, RunConfig
from .base import Algorithm


class BPO(Algorithm):
    """BPO (Xu et al. 2024, "BPO: Supercharging Online Preference Learning by Adhering to the Proximity of
    Behavior LLM", arXiv 2406.12168): π_ref := π_β, the policy that sampled the batch, held fixed over
    `updates` optimiser steps on that batch. The learner takes log π_β(y) from its own first forward of
    the batch, before any update (exact, in the learner's dtype, no frozen model is loaded). h = 0 at the
    first update and moves away from 0 after it, so β is the trust region around the behaviour policy.

    Deliberate difference from the authors' code (`xu1998hz/BPO`, `online_dpo_rand_trainer.py`): there,
    one optimiser step is taken per batch by each of K LoRA adapters whose average is the behaviour (and
    reference) model, so h ≠ 0 comes from the adapters' disagreement. A single model with one step per
    batch would make h ≡ 0 (loss log 2, no trust region); several updates per batch give the trust region
    without K adapters. One update per batch is refused for that reason.
    """

    name = "bpo"
    paper = "Xu et al. 2024 (BPO), arXiv 2406.12168"
    frozen_reference = False
    default_updates = 4

    @classmethod
    def check(cls, cfg: RunConfig) -> None:
        if cfg.updates_per_round == 1:
            raise ConfigError("--algorithm bpo with --updates_per_round 1 trains at h ≡ 0 (π_ref is the policy "
                              "that sampled the batch, so its only update starts from it): use ≥ 2 updates per "
                              f"batch (default {cls.default_updates})")
        if cfg.lora_r > 0 and cfg.lora_dropout > 0:
            raise ConfigError("--algorithm bpo takes log π_β from the first update's own training forward, which LoRA "
                              "dropout would perturb (h ≠ 0 from noise alone): use --lora_dropout 0 with bpo")
        if cfg.erm_features == "policy":
            raise ConfigError("--algorithm bpo keeps no frozen reference model, whose hidden states "
                              "--erm_features policy reads: use --erm_features minilm")

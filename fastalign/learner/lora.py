"""LoRA adapters through peft: the policy is the frozen base plus W + (α/r)·B·A on the target modules.

Three consequences the learner builds on:
- the reference is the same model with its adapter switched off (`peft`'s `disable_adapter()`): no
  second copy in memory;
- training changes only the adapted modules' weights, so the generation engine gets only those, merged
  (W + (α/r)·B·A, peft's own `get_delta_weight`, the formula of its `merge_and_unload`), or back to the
  base W when it is to sample from the reference;
- checkpoints hold the adapter and its optimizer state only; the base is the run's starting model.
Every weight leaves under its plain Hugging Face name (peft's `base_model.model.` prefix and
`.base_layer` removed), as the engines and `from_pretrained` know them.
"""
from __future__ import annotations

from collections.abc import Collection, Iterator

import torch

from ..config import ConfigError, RunConfig


def lora_config(cfg: RunConfig):
    """The run's `peft.LoraConfig` (also what bench/throughput.py hands TRL as its peft_config)."""
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_targets(), bias="none", task_type="CAUSAL_LM")


def lora_policy(base: torch.nn.Module, cfg: RunConfig) -> torch.nn.Module:
    """`base` wrapped by peft with the run's LoRA adapter (only the adapter requires grad).

    peft draws A's initial values (B starts at zero) from torch's global RNG: they are drawn here from the
    run's own "lora-init" stream instead, so every rank and every run with the seed starts alike."""
    from peft import get_peft_model

    from ..seeding import stream_seed

    config = lora_config(cfg)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stream_seed(cfg.seed, "lora-init"))
            return get_peft_model(base, config)
    except ValueError as exc:  # peft: "Target modules {...} not found in the base model"
        linear = sorted({name.rpartition(".")[2] for name, m in base.named_modules()
                         if isinstance(m, torch.nn.Linear) and m is not base.get_output_embeddings()})
        raise ConfigError(f"lora_target_modules {cfg.lora_target_modules!r} do not fit this model ({exc}); its "
                          f"linear layers are named {', '.join(linear)}") from None


class AdapterOff(torch.nn.Module):
    """A module inside a peft model, run with the adapter switched off: a view of the frozen base (the
    reference, or the frozen initial policy's hidden states for `--erm_features policy`), not a copy."""

    def __init__(self, module: torch.nn.Module, peft_model: torch.nn.Module) -> None:
        super().__init__()
        self.module = module
        self.config = getattr(module, "config", None)
        object.__setattr__(self, "_peft", peft_model)  # not a child: its parameters are the module's own

    def forward(self, *args, **kwargs):
        with self._peft.disable_adapter():
            return self.module(*args, **kwargs)


class AdaptedWeights:
    """The base model's weights under their Hugging Face names, merged with the adapter or not."""

    def __init__(self, peft_model: torch.nn.Module) -> None:
        from peft.tuners.lora import LoraLayer

        base = peft_model.get_base_model()  # the HF model, its target modules replaced by LoRA layers
        self.adapted: dict[str, torch.nn.Module] = {
            f"{name}.weight": module for name, module in base.named_modules() if isinstance(module, LoraLayer)}
        self.params: dict[str, torch.Tensor] = {}
        for name, param in base.named_parameters():
            parts = name.split(".")
            if not any(p.startswith("lora_") for p in parts):
                self.params[".".join(p for p in parts if p != "base_layer")] = param

    def trained_names(self) -> frozenset[str]:
        """The tensors training changes: the adapted modules' weights."""
        return frozenset(self.adapted)

    def _check(self, names: Collection[str]) -> None:
        unknown = sorted(set(names) - set(self.params))
        if unknown:
            raise KeyError(f"no parameter named {', '.join(unknown[:5])} in the base model")

    @torch.no_grad()
    def merged(self, names: Collection[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, W + (α/r)·B·A) for adapted weights, (name, W) for the others; None = every parameter."""
        names = self.params.keys() if names is None else names
        self._check(names)
        for name in self.params:
            if name in names:
                module = self.adapted.get(name)
                weight = self.params[name].detach()
                if module is not None:
                    weight = weight + module.get_delta_weight(module.active_adapters[0]).to(weight.dtype)
                yield name, weight

    @torch.no_grad()
    def base(self, names: Collection[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, W): the frozen base's weights, i.e. the reference's; None = every parameter."""
        names = self.params.keys() if names is None else names
        self._check(names)
        for name, param in self.params.items():
            if name in names:
                yield name, param.detach()

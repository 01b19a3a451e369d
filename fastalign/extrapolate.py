"""ExPO (Zheng et al. 2024, "Weak-to-Strong Extrapolation Expedites Alignment"): θ = θ_sft + α(θ_aligned − θ_sft).

A post-hoc step with no training: α > 1 extrapolates past the aligned model along the direction the
alignment moved it, α = 1 returns the aligned model, α = 0 the SFT model. Arithmetic is done in fp32
and the result is cast back to the aligned model's dtype. `fastalign extrapolate --sft DIR --aligned DIR
--alpha A --out DIR` writes a Hugging Face directory (config from --aligned, the tokenizer from --aligned or else --sft).
--aligned may also be a LoRA adapter directory (a `--lora_r` run's final/): the aligned model is then
--sft with the adapter merged in, so the result is W + α·(α_lora/r)·B·A on the adapted weights.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch


def extrapolate_weights(sft: Iterable[tuple[str, torch.Tensor]], aligned: Iterable[tuple[str, torch.Tensor]],
                        alpha: float) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, θ_sft + α(θ_aligned − θ_sft)) for every parameter; both models must have the same names and shapes."""
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number, got {alpha!r}")
    base = dict(sft)
    seen = set()
    for name, tuned in aligned:
        if name not in base:
            raise ValueError(f"the aligned model has a parameter {name!r} the SFT model lacks: "
                             "both must be the same architecture")
        ref = base[name]
        if ref.shape != tuned.shape:
            raise ValueError(f"{name}: SFT shape {tuple(ref.shape)} ≠ aligned shape {tuple(tuned.shape)}")
        seen.add(name)
        out = ref.float() + alpha * (tuned.float() - ref.float())
        yield name, out.to(tuned.dtype)
    missing = sorted(set(base) - seen)
    if missing:
        raise ValueError(f"the SFT model has parameters the aligned model lacks: {', '.join(missing[:5])}")


def extrapolate(sft_dir: str | os.PathLike, aligned_dir: str | os.PathLike, alpha: float,
                out_dir: str | os.PathLike) -> Path:
    """Write the extrapolated model to out_dir (atomically) and return its path."""
    from transformers import AutoModelForCausalLM

    from .atomic import atomic_directory
    from .models import load_tokenizer

    adapter = is_adapter(aligned_dir)
    if not (Path(sft_dir) / "config.json").is_file():
        raise FileNotFoundError(f"--sft {str(sft_dir)!r} is not a Hugging Face model directory (no config.json)")
    if not adapter and not (Path(aligned_dir) / "config.json").is_file():
        raise FileNotFoundError(f"--aligned {str(aligned_dir)!r} is neither a Hugging Face model directory "
                                "(config.json) nor a LoRA adapter directory (adapter_config.json)")
    sft = AutoModelForCausalLM.from_pretrained(str(sft_dir), dtype="auto")
    model = merged_adapter(sft_dir, aligned_dir) if adapter else AutoModelForCausalLM.from_pretrained(
        str(aligned_dir), dtype="auto")
    with torch.no_grad():
        new = dict(extrapolate_weights(sft.named_parameters(), model.named_parameters(), alpha))
        for name, param in model.named_parameters():
            param.copy_(new[name])
    del sft
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for source in (aligned_dir, sft_dir):  # the aligned run's tokenizer, else the SFT model's
            try:
                load_tokenizer(source).save_pretrained(tmp)
                break
            except (OSError, ValueError):
                continue
    return Path(out_dir)


def is_adapter(path: str | os.PathLike) -> bool:
    """A peft adapter directory (what a LoRA run writes as final/), rather than a whole model."""
    return (Path(path) / "adapter_config.json").is_file() and not (Path(path) / "config.json").is_file()


def merged_adapter(base_dir: str | os.PathLike, adapter_dir: str | os.PathLike):
    """A fresh copy of the base model with the adapter merged in (peft's merge_and_unload)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype="auto")
    try:
        return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as exc:  # shapes or module names of another base model
        raise ValueError(f"the adapter {str(adapter_dir)!r} does not fit the --sft model {str(base_dir)!r}: "
                         f"{str(exc).splitlines()[0][:300]}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fastalign extrapolate",
                                     description="ExPO: θ = θ_sft + α(θ_aligned − θ_sft), written as an HF model.")
    parser.add_argument("--sft", required=True, help="the model alignment started from (HF directory)")
    parser.add_argument("--aligned", required=True,
                        help="the aligned model (HF directory) or a LoRA run's adapter directory, e.g. runs/x/final")
    parser.add_argument("--alpha", required=True, type=float, help="1 = aligned, > 1 extrapolates (e.g. 1.5)")
    parser.add_argument("--out", required=True, help="output directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from .models import resolve_model_dir

    try:
        out = extrapolate(resolve_model_dir(args.sft), args.aligned, args.alpha, args.out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"fastalign extrapolate: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} (alpha {args.alpha})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The fused ops' public API: validate inputs, then dispatch to Triton, the torch path or the reference.

impl: "auto" (the op's measured choice: the torch path for the LM-head ops on every device, the Triton
kernel for the ensemble on CUDA), "triton" (CUDA, or Triton's interpreter), "torch" (plain torch: chunked
products through the LM head, batched heads for the ensemble; any device), "reference" (the definition;
full logits, O(N·V) memory).
Bad inputs are rejected here, before any kernel runs, with what was wrong and how to fix it.
Implementations live in `fastalign.kernels`; Triton modules are imported only when used, because
importing Triton fixes its interpreter mode for the whole process.
"""
from __future__ import annotations

import importlib
import math
from typing import Callable

import torch

from fastalign.kernels.ensemble_mlp import ensemble_mlp_torch, ensemble_mlp_reference
from fastalign.kernels.linear_logprobs import linear_logprobs_torch, linear_logprobs_reference
from fastalign.kernels.sequence_loss import (
    KEEP_ELEMENTS, LossOfSums, sequence_loss_composed, sequence_loss_torch,
)

__all__ = ["IMPLS", "linear_logprobs", "sequence_loss", "ensemble_mlp", "resolve_impl"]

IMPLS = ("auto", "triton", "torch", "reference")
# "auto" for CUDA tensors, per op. On one H200 (bench/results/gpu_check.json, Llama-3-8B's head, bf16, 8
# pairs) the LM-head torch path took 0.066 / 0.134 s at T = 512 / 1024 and the Triton kernels 0.399 / 0.665 s
# (they recompute the logits twice and accumulate in global memory): the torch path is the default there.
CUDA_AUTO = {"lm_head": "torch", "ensemble": "triton"}
FLOAT_DTYPES = (torch.float32, torch.bfloat16)


def _triton_available() -> bool:
    from fastalign.kernels.triton_runtime import TRITON_ERROR
    return TRITON_ERROR is None


def resolve_impl(impl: str, *tensors: torch.Tensor | None, op: str = "lm_head") -> str:
    """The concrete implementation for `impl`, op ("lm_head" or "ensemble") and these tensors."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(IMPLS)}, got {impl!r}")
    if impl != "auto":
        return impl
    on_cuda = any(t is not None and t.is_cuda for t in tensors)
    if on_cuda and CUDA_AUTO[op] == "triton" and _triton_available():
        return "triton"
    return "torch"


def _triton(module: str, name: str) -> Callable:
    return getattr(importlib.import_module(f"fastalign.kernels.{module}"), name)


def _check_float(name: str, t: torch.Tensor, dtype: torch.dtype | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or bfloat16, got {t.dtype}; cast it with .float() or .bfloat16()")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name} has dtype {t.dtype} but hidden states are {dtype}; use one dtype for all of them")


def _check_devices(**tensors: torch.Tensor | None) -> None:
    devices = {n: t.device for n, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"all inputs must be on one device, got {listing}; move them with .to(device)")


def _check_targets(name: str, targets: torch.Tensor, shape: torch.Size, vocab: int, ignore_index: int | None) -> None:
    if not isinstance(targets, torch.Tensor) or targets.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must be an int64/int32 tensor of token ids, got "
                        f"{getattr(targets, 'dtype', type(targets).__name__)}")
    if targets.shape != shape:
        raise ValueError(f"{name} has shape {tuple(targets.shape)} but the hidden states need {tuple(shape)} "
                         "(one target per hidden state: hidden[..., t, :] predicts targets[..., t])")
    valid = targets if ignore_index is None else targets[targets != ignore_index]
    if valid.numel() and (int(valid.min()) < 0 or int(valid.max()) >= vocab):
        hint = "pass only the positions that predict response tokens" if ignore_index is None else (
            f"mask non-response positions with ignore_index={ignore_index}")
        raise ValueError(f"{name} holds ids outside [0, {vocab}) (min {int(valid.min())}, max {int(valid.max())}); "
                         + hint)


def _check_head(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float) -> None:
    _check_float("hidden", hidden)
    _check_float("weight", weight, hidden.dtype)
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be [vocab, {hidden.shape[-1]}] (the LM head of hidden size "
                         f"{hidden.shape[-1]}), got {tuple(weight.shape)}")
    if bias is not None:
        _check_float("bias", bias, hidden.dtype)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must be [{weight.shape[0]}], got {tuple(bias.shape)}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")


def _logprob_fn(impl: str) -> Callable:
    if impl == "reference":
        return linear_logprobs_reference
    if impl == "triton":
        return _triton("linear_logprobs_triton", "linear_logprobs_triton")
    return linear_logprobs_torch


def linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                    bias: torch.Tensor | None = None, temperature: float = 1.0, ignore_index: int = -100,
                    impl: str = "auto", return_entropy: bool = False):
    """log softmax((h·Wᵀ + b)/temperature)[target] per position, fp32, 0 where targets == ignore_index.

    hidden [..., H], weight [V, H], bias [V] or None, targets [...] → log-probs [...]; with
    `return_entropy`, (log-probs, entropies) with entropies also 0 at ignored positions.
    Differentiable w.r.t. hidden, weight and bias; never holds more than one chunk of logits.
    """
    _check_head(hidden, weight, bias, temperature)
    _check_targets("targets", targets, hidden.shape[:-1], weight.shape[0], ignore_index)
    _check_devices(hidden=hidden, weight=weight, bias=bias, targets=targets)
    which = resolve_impl(impl, hidden, weight)
    lead, h2, t2 = hidden.shape[:-1], hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    if which == "reference":
        logp, ent = linear_logprobs_reference(h2, weight, t2, bias, temperature, ignore_index)
    else:
        logp, ent = _logprob_fn(which)(h2, weight, t2, bias, temperature, ignore_index, with_entropy=return_entropy)
    return (logp.view(lead), ent.view(lead)) if return_entropy else logp.view(lead)


def sequence_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, seq_index: torch.Tensor,
                  n_seq: int, loss_of_sums: LossOfSums, bias: torch.Tensor | None = None, temperature: float = 1.0,
                  impl: str = "auto", keep_elements: int = KEEP_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """loss_of_sums(sums) and the sums [n_seq] (detached) of the response log-probs, from hidden states.

    hidden [N, H] are the positions that predict response tokens targets [N] (no ignore_index here: pass
    only those positions), seq_index [N] the sequence of each position in [0, n_seq). loss_of_sums maps
    the fp32 sums [n_seq] to a scalar (the pair loss and any algorithm terms) and may couple sequences;
    it must depend on the sums and constants only. Differentiable in hidden, weight and bias; never holds
    [N × V] logits beyond `keep_elements` of them (the torch path; see fastalign.kernels.sequence_loss).
    """
    _check_head(hidden, weight, bias, temperature)
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be [positions, hidden], got {tuple(hidden.shape)}")
    _check_targets("targets", targets, hidden.shape[:-1], weight.shape[0], ignore_index=None)
    if not isinstance(seq_index, torch.Tensor) or seq_index.shape != targets.shape or seq_index.dtype != torch.int64:
        raise ValueError(f"seq_index must be an int64 tensor shaped like targets {tuple(targets.shape)}, one sequence "
                         f"id per position, got {getattr(seq_index, 'dtype', type(seq_index).__name__)} "
                         f"{tuple(getattr(seq_index, 'shape', ()))}")
    if seq_index.numel() and (int(seq_index.min()) < 0 or int(seq_index.max()) >= n_seq):
        raise ValueError(f"seq_index holds ids outside [0, {n_seq}): n_seq must count every sequence")
    if not callable(loss_of_sums):
        raise TypeError("loss_of_sums must be a function of the summed log-probs [n_seq] returning a scalar")
    _check_devices(hidden=hidden, weight=weight, bias=bias, targets=targets, seq_index=seq_index)
    which = resolve_impl(impl, hidden, weight)
    if which == "torch":
        return sequence_loss_torch(hidden, weight, bias, targets, seq_index, n_seq, loss_of_sums, temperature,
                                   keep_elements=keep_elements)
    return sequence_loss_composed(_logprob_fn(which), hidden, weight, bias, targets, seq_index, n_seq,
                                  loss_of_sums, temperature)


def ensemble_mlp(features: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                 b2: torch.Tensor, w3: torch.Tensor, b3: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """Rewards [E, M] (fp32) of E ReLU MLP heads d→h→h→1 on shared features [M, d], in one op.

    W1 [E, d, h], b1 [E, h], W2 [E, h, h], b2 [E, h], W3 [E, h], b3 [E]; differentiable in all inputs.
    """
    _check_float("features", features)
    if features.dim() != 2:
        raise ValueError(f"features must be [M, d], got {tuple(features.shape)}")
    if not isinstance(w1, torch.Tensor) or w1.dim() != 3:
        raise ValueError(f"w1 must be [E, d, h], got {tuple(getattr(w1, 'shape', ()))}")
    (m, d), (e, _, h) = features.shape, w1.shape
    want = {"w1": (e, d, h), "b1": (e, h), "w2": (e, h, h), "b2": (e, h), "w3": (e, h), "b3": (e,)}
    params = {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "w3": w3, "b3": b3}
    for name, t in params.items():
        _check_float(name, t, features.dtype)
        if tuple(t.shape) != want[name]:
            raise ValueError(f"{name} must be {list(want[name])} for E={e} heads, d={d} features, h={h} hidden "
                             f"units, got {list(t.shape)}")
    _check_devices(features=features, **params)
    which = resolve_impl(impl, features, w1, op="ensemble")
    if which == "reference":
        return ensemble_mlp_reference(features, w1, b1, w2, b2, w3, b3)
    if which == "triton":
        return _triton("ensemble_mlp_triton", "ensemble_mlp_triton")(features, w1, b1, w2, b2, w3, b3)
    return ensemble_mlp_torch(features, w1, b1, w2, b2, w3, b3)

"""Per-token log-probs of targets under an LM head, without the full [tokens × vocab] log-softmax.

Three implementations share one contract (hidden [N, H], weight [V, H], optional bias [V], targets [N]
with `ignore_index` → log-prob [N], 0 at ignored rows, optional entropy [N], 0 at ignored rows):
- `linear_logprobs_reference`: full logits, log_softmax, gather (the definition; uses O(N·V) memory);
- `LinearLogprobsTorch` (this module): token chunks, only valid rows, fp32 accumulation, recomputes each
  chunk's logits in backward so nothing of size N·V outlives a chunk;
- the Triton kernels in `linear_logprobs_triton`.
Logits are (h·Wᵀ + b) / temperature. Inputs may be fp32 or bf16; logits, softmax statistics and outputs
are fp32 (sums of bf16 log-probs would lose the margins the losses need); gradients come back in the
inputs' dtypes. The torch path's products on CUDA take bf16 operands as they are, with fp32
accumulation and output (the Triton kernels' precision: the logits gradient is rounded to bf16 before
its two products); on the CPU every operand is fp32. Entropy is −Σ p log p of the same tempered
distribution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .compile_cache import maybe_compiled

CHUNK_ELEMENTS = 1 << 24  # logits elements per chunk on the CPU (64 MiB fp32): a cache-friendly working set
CUDA_CHUNK_ELEMENTS = 1 << 28  # on CUDA (1 GiB fp32): few chunks, so ∂W's fp32 accumulator is read few times


def chunk_rows(vocab: int, chunk_elements: int | None = None, device: torch.device | str = "cpu") -> int:
    """Rows per chunk so that one fp32 logits chunk holds about `chunk_elements` values (by device)."""
    if chunk_elements is None:
        chunk_elements = CUDA_CHUNK_ELEMENTS if torch.device(device).type == "cuda" else CHUNK_ELEMENTS
    return max(1, chunk_elements // max(vocab, 1))


def head_operand(t: torch.Tensor | None) -> torch.Tensor | None:
    """A weight or hidden state as the torch path's products take it: 16-bit stays 16-bit on CUDA
    (tensor cores, fp32 accumulation); anything else becomes fp32 (no copy when already fp32)."""
    if t is None:
        return None
    t = t.detach()
    return t if t.is_cuda and t.dtype in (torch.bfloat16, torch.float16) else t.float()


def mm32(a: torch.Tensor, b: torch.Tensor, acc: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 a @ b (a cast to b's dtype), added into `acc` in place when given; 16-bit operands (CUDA
    only, see `head_operand`) go to cuBLAS with fp32 accumulation and an fp32 result."""
    a = a.to(b.dtype)
    if b.dtype == torch.float32:
        return a @ b if acc is None else acc.addmm_(a, b)
    if acc is None:
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)


def linear_logprobs_reference(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                              bias: torch.Tensor | None = None, temperature: float = 1.0,
                              ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """The definition: (log-prob [N], entropy [N]) from full fp32 logits; both 0 at ignored rows."""
    logits = hidden.float() @ weight.float().T
    if bias is not None:
        logits = logits + bias.float()
    logps = F.log_softmax(logits / temperature, dim=-1)
    valid = targets != ignore_index
    picked = logps.gather(1, torch.where(valid, targets, 0).unsqueeze(1)).squeeze(1)
    entropy = -(logps.exp() * logps).sum(-1)
    return torch.where(valid, picked, 0.0), torch.where(valid, entropy, 0.0)


def chunk_logits(h: torch.Tensor, w: torch.Tensor, b32: torch.Tensor | None, inv_t: float) -> torch.Tensor:
    """fp32 logits of one chunk of rows, temperature applied (w from `head_operand`)."""
    z = mm32(h, w.T)
    if b32 is not None:
        z += b32
    if inv_t != 1.0:
        z *= inv_t
    return z


@maybe_compiled
def row_stats(z: torch.Tensor, tgt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log-prob of target, log-sum-exp, entropy) per row of a logits chunk."""
    lse = torch.logsumexp(z, dim=-1)
    p = torch.exp(z - lse[:, None])
    entropy = lse - (p * z).sum(-1)
    return z.gather(1, tgt[:, None]).squeeze(1) - lse, lse, entropy


@maybe_compiled
def row_stats_no_entropy(z: torch.Tensor, tgt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob of target, log-sum-exp) per row: one pass less than `row_stats`."""
    lse = torch.logsumexp(z, dim=-1)
    return z.gather(1, tgt[:, None]).squeeze(1) - lse, lse


@maybe_compiled
def dlogits(z: torch.Tensor, lse: torch.Tensor, tgt: torch.Tensor, g_lp: torch.Tensor, scale: float) -> torch.Tensor:
    """∂(Σ g·logp)/∂raw-logits = g·(onehot − softmax)·scale, scale = 1/temperature."""
    d = torch.exp(z - lse[:, None]) * (-g_lp[:, None])
    return d.scatter_add(1, tgt[:, None], g_lp[:, None]) * scale


@maybe_compiled
def dlogits_entropy(z: torch.Tensor, lse: torch.Tensor, tgt: torch.Tensor, g_lp: torch.Tensor,
                    ent: torch.Tensor, g_ent: torch.Tensor, scale: float) -> torch.Tensor:
    """As `dlogits` plus the entropy term: ∂H/∂z = −p·(z − lse + H)."""
    p = torch.exp(z - lse[:, None])
    d = p * (-g_lp[:, None] - g_ent[:, None] * (z - lse[:, None] + ent[:, None]))
    return d.scatter_add(1, tgt[:, None], g_lp[:, None]) * scale


def exp_stats_(z: torch.Tensor, tgt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob of target, Σ exp) per row; overwrites z with exp(z − rowmax) for `dlogits_from_exp_`.

    Eager in-place ops on purpose: measured on the bench CPU (1024 × 49152, 2 threads) 0.21 s for stats
    and gradient together, against 0.61 s for the compiled out-of-place pair, and no second buffer.
    """
    m = z.amax(-1)
    picked = z.gather(1, tgt[:, None]).squeeze(1)
    z.sub_(m[:, None]).exp_()
    s = z.sum(-1)
    return picked - m - s.log(), s


def dlogits_from_exp_(e: torch.Tensor, s: torch.Tensor, tgt: torch.Tensor, g_lp: torch.Tensor,
                      scale: float) -> torch.Tensor:
    """`dlogits` from the output of `exp_stats_`, in place: e ← g·(onehot − e/s)·scale."""
    e.mul_((-g_lp * scale / s)[:, None])
    return e.scatter_add_(1, tgt[:, None], (g_lp * scale)[:, None])


def as_fp32(t: torch.Tensor | None) -> torch.Tensor | None:
    """fp32 view (no copy when already fp32) of an optional tensor."""
    return None if t is None else t.detach().float()


class LinearLogprobsTorch(torch.autograd.Function):
    """Chunked, recomputing linear log-prob (+ entropy); saves only inputs and per-row statistics."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                temperature: float, ignore_index: int, with_entropy: bool, chunk: int):
        n = hidden.shape[0]
        idx = (targets != ignore_index).nonzero().squeeze(1)  # only valid rows cost anything
        w, b32, inv_t = head_operand(weight), as_fp32(bias), 1.0 / temperature
        lse = torch.zeros(idx.numel(), dtype=torch.float32, device=hidden.device)
        logp = torch.zeros(n, dtype=torch.float32, device=hidden.device)
        ent = torch.zeros(n if with_entropy else 0, dtype=torch.float32, device=hidden.device)
        for s in range(0, idx.numel(), chunk):
            rows = idx[s:s + chunk]
            z = chunk_logits(hidden[rows], w, b32, inv_t)
            if with_entropy:
                lp, lse[s:s + chunk], e = row_stats(z, targets[rows])
                ent[rows] = e
            else:
                lp, lse[s:s + chunk] = row_stats_no_entropy(z, targets[rows])
            logp[rows] = lp
        ctx.save_for_backward(hidden, weight, bias, targets, idx, lse, ent)
        ctx.cfg = (inv_t, with_entropy, chunk)
        if not with_entropy:
            ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp: torch.Tensor, g_ent: torch.Tensor | None):
        hidden, weight, bias, targets, idx, lse, ent = ctx.saved_tensors
        inv_t, with_entropy, chunk = ctx.cfg
        use_ent = with_entropy and g_ent is not None
        w, b32, h = head_operand(weight), as_fp32(bias), head_operand(hidden)
        grad_h = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device)
        for s in range(0, idx.numel(), chunk):
            rows = idx[s:s + chunk]
            hc = h[rows]
            z = chunk_logits(hc, w, b32, inv_t)
            g = g_logp[rows].float()
            if use_ent:
                d = dlogits_entropy(z, lse[s:s + chunk], targets[rows], g, ent[rows], g_ent[rows].float(), inv_t)
            else:
                d = dlogits(z, lse[s:s + chunk], targets[rows], g, inv_t)
            grad_b += d.sum(0)
            d = d.to(w.dtype)  # once for both products (a no-op in fp32)
            grad_h[rows] = mm32(d, w)
            mm32(d.T, hc, acc=grad_w)
        return (grad_h.to(hidden.dtype), grad_w.to(weight.dtype),
                None if bias is None else grad_b.to(bias.dtype), None, None, None, None, None)


def linear_logprobs_torch(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          bias: torch.Tensor | None = None, temperature: float = 1.0, ignore_index: int = -100,
                          with_entropy: bool = False, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch path: (log-prob [N], entropy [N] or empty) with a memory bound of one chunk of logits."""
    rows = chunk or chunk_rows(weight.shape[0], device=hidden.device)
    return LinearLogprobsTorch.apply(hidden, weight, bias, targets, temperature, ignore_index, with_entropy, rows)

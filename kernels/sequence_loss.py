"""From response hidden states to a loss on summed log-probs, without keeping [tokens × vocab] logits.

`sequence_loss(hidden [N, H], weight [V, H], bias, targets [N], seq_index [N], n_seq, loss_of_sums)` is the
learner's one path from its decoder output to its loss. Position i predicts token targets[i] of sequence
seq_index[i]; sums[s] = Σ_{i: seq_index[i] = s} log softmax((h_i·Wᵀ + b)/T)[targets[i]], and the loss is
`loss_of_sums(sums)`: the caller's function (the pair loss and the algorithm's terms), handed in so that
this module depends on nothing above it. The loss may couple the sequences in any way (AOT sorts the
batch, SAIL draws labels); it must depend on `sums` and on constants only, and it is called exactly once.

Implementations (`impl`):
- "torch" (`SequenceLossTorch`): chunks of positions stream through the LM head; the forward computes the
  loss and every gradient: sums from each chunk's logits (exp'd in place), g = ∂loss/∂sums by autograd on
  the small loss function, then dZ = g·(onehot − softmax)/T per chunk, grad_hidden = dZ·W and
  grad_W += dZᵀ·h. A chunk's exp-logits are kept from the first pass while the total stays within
  `keep_elements` (three LM-head matmuls, like full logits, with one chunk's worth of extra memory at a
  time otherwise), and recomputed beyond it (four). The backward only scales the stored gradients.
- "triton" / "reference": per-position log-probs from the Triton kernels (or full logits), `index_add`
  into sums, the loss, autograd.
"""
from __future__ import annotations

from typing import Callable

import torch

from .linear_logprobs import (
    as_fp32, chunk_logits, chunk_rows, dlogits_from_exp_, exp_stats_, head_operand, linear_logprobs_reference, mm32,
)

LossOfSums = Callable[[torch.Tensor], torch.Tensor]
KEEP_ELEMENTS = 1 << 28  # exp-logits kept between the passes (1 GiB fp32); beyond it chunks are recomputed


def sums_of_positions(token_logps: torch.Tensor, seq_index: torch.Tensor, n_seq: int) -> torch.Tensor:
    """Per-sequence sums [n_seq] (fp32) of per-position log-probs [N]."""
    sums = torch.zeros(n_seq, dtype=torch.float32, device=token_logps.device)
    return sums.index_add(0, seq_index.to(token_logps.device), token_logps.float())


def loss_and_grad(loss_of_sums: LossOfSums, sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss of fixed sums and its gradient with respect to them."""
    with torch.enable_grad():
        leaf = sums.detach().requires_grad_(True)
        loss = loss_of_sums(leaf)
        (g,) = torch.autograd.grad(loss, leaf, allow_unused=True)
    return loss.detach(), torch.zeros_like(sums) if g is None else g


class SequenceLossTorch(torch.autograd.Function):
    """Loss and all gradients in the forward (see the module docstring); backward scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, seq_index, n_seq: int, loss_of_sums: LossOfSums,
                temperature: float, chunk: int, keep_elements: int):
        w, b32, inv_t = head_operand(weight), as_fp32(bias), 1.0 / temperature
        h = head_operand(hidden)
        seq_index = seq_index.to(hidden.device)
        sums = torch.zeros(n_seq, dtype=torch.float32, device=hidden.device)
        kept, budget = [], keep_elements
        starts = range(0, h.shape[0], chunk)
        for start in starts:
            z = chunk_logits(h[start:start + chunk], w, b32, inv_t)
            lp, s = exp_stats_(z, targets[start:start + chunk])
            sums.index_add_(0, seq_index[start:start + chunk], lp)
            budget -= z.numel()
            kept.append((z if budget >= 0 else None, s))
        loss, g_seq = loss_and_grad(loss_of_sums, sums)
        need = ctx.needs_input_grad[:3]
        grad_h = torch.zeros(h.shape, dtype=torch.float32, device=h.device) if need[0] else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if need[1] else None
        grad_b = (torch.zeros(weight.shape[0], dtype=torch.float32, device=h.device)
                  if need[2] and bias is not None else None)
        if any(need):
            for start, (e, s) in zip(starts, kept):
                hc, tgt = h[start:start + chunk], targets[start:start + chunk]
                if e is None:  # beyond the keep budget: recompute this chunk's logits
                    e = chunk_logits(hc, w, b32, inv_t)
                    exp_stats_(e, tgt)
                d = dlogits_from_exp_(e, s, tgt, g_seq[seq_index[start:start + chunk]], inv_t)
                if grad_b is not None:
                    grad_b += d.sum(0)
                d = d.to(w.dtype)  # once for both products (a no-op in fp32)
                if grad_h is not None:
                    grad_h[start:start + chunk] = mm32(d, w)
                if grad_w is not None:
                    mm32(d.T, hc, acc=grad_w)
        ctx.grads = (grad_h, grad_w, grad_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(sums)
        return loss, sums

    @staticmethod
    def backward(ctx, g_loss, _g_sums):
        grads, ctx.grads = ctx.grads, None  # free them with the graph
        out = [None if g is None else g.mul_(g_loss).to(dtype) for g, dtype in zip(grads, ctx.dtypes)]
        return (*out, None, None, None, None, None, None, None)


def sequence_loss_torch(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        targets: torch.Tensor, seq_index: torch.Tensor, n_seq: int, loss_of_sums: LossOfSums,
                        temperature: float = 1.0, chunk: int | None = None,
                        keep_elements: int = KEEP_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """The torch path: (loss, sums detached); differentiable in hidden, weight and bias."""
    rows = chunk or chunk_rows(weight.shape[0], device=hidden.device)
    return SequenceLossTorch.apply(hidden, weight, bias, targets, seq_index, n_seq, loss_of_sums, temperature, rows,
                                   keep_elements)


def sequence_loss_composed(logprob_fn: Callable, hidden: torch.Tensor, weight: torch.Tensor,
                           bias: torch.Tensor | None, targets: torch.Tensor, seq_index: torch.Tensor, n_seq: int,
                           loss_of_sums: LossOfSums, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Any per-position log-prob op (Triton, reference) → sums → loss; autograd does the rest."""
    token_logps, _ = logprob_fn(hidden, weight, targets, bias, temperature)
    sums = sums_of_positions(token_logps, seq_index, n_seq)
    return loss_of_sums(sums), sums.detach()


def sequence_loss_reference(hidden, weight, bias, targets, seq_index, n_seq, loss_of_sums, temperature=1.0):
    """The definition: full logits, log_softmax, gather, sums, loss."""
    return sequence_loss_composed(linear_logprobs_reference, hidden, weight, bias, targets, seq_index, n_seq,
                                  loss_of_sums, temperature)

"""Summed response log-probs of a causal LM, computed only where they are needed, and the learner's loss.

Sequences are prompt + response. The decoder runs over every token (a pair's prompt once, with
`share_prompt`), but the LM head runs only on the positions that predict response tokens: on short
responses after long prompts that skips most of the [tokens × vocab] work and memory of a plain
`model(...).logits`. Those positions' hidden states (`ResponseHidden`) feed one path to the loss,
`loss_from_hidden`, which the learner and `bench/kernels.py` both call.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import ops
from ..kernels.sequence_loss import LossOfSums, sums_of_positions

IGNORE_INDEX = -100
IMPLS = ("auto", "torch", "triton", "naive")  # auto: fastalign.ops' measured choice (torch); naive: full logits


@dataclass
class SequenceBatch:
    """Right-padded prompt+response sequences; `targets[b, t]` is the token predicted at position t."""

    input_ids: torch.Tensor  # [S, L]
    attention_mask: torch.Tensor  # [S, L]
    targets: torch.Tensor  # [S, L], IGNORE_INDEX outside the response

    @property
    def lengths(self) -> torch.Tensor:
        return (self.targets != IGNORE_INDEX).sum(dim=1)


@dataclass
class ResponseHidden:
    """Hidden states of the positions that predict response tokens [N, H], those tokens [N] and each
    position's sequence [N] among n_seq sequences."""

    hidden: torch.Tensor
    targets: torch.Tensor
    seq_index: torch.Tensor
    n_seq: int


def build_batch(prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> SequenceBatch:
    """Pack (prompt, response) token lists; a response of length 0 contributes log-prob 0."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    seqs = [list(p) + list(r) for p, r in zip(prompts, responses)]
    length = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), length), dtype=torch.long)
    targets = torch.full((len(seqs), length), IGNORE_INDEX, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        n = len(p) + len(r)
        input_ids[i, :n] = torch.tensor(seqs[i], dtype=torch.long)
        attention_mask[i, :n] = 1
        if r:  # position t predicts token t+1: the response tokens are predicted from len(p)-1 on
            targets[i, len(p) - 1:n - 1] = torch.tensor(r, dtype=torch.long)
    return SequenceBatch(input_ids, attention_mask, targets)


def decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The transformer body (hidden states) and the LM head of an HF causal LM."""
    head = model.get_output_embeddings()
    body = model.get_decoder() if hasattr(model, "get_decoder") else None
    if head is None or body is None:
        raise TypeError(f"{type(model).__name__} does not expose a decoder and an LM head; "
                        "fastalign needs an HF causal LM (AutoModelForCausalLM)")
    return body, head


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def response_hidden(model: torch.nn.Module, batch: SequenceBatch) -> ResponseHidden:
    """The response-predicting positions of a plain batch: one row per sequence."""
    body, _ = decoder_and_head(model)
    device = model_device(model)
    out = body(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device), use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    mask = (batch.targets != IGNORE_INDEX).to(device)
    seq_index = torch.arange(batch.targets.shape[0], device=device).unsqueeze(1).expand_as(mask)[mask]
    return ResponseHidden(hidden[mask], batch.targets.to(device)[mask], seq_index, batch.targets.shape[0])


def shared_prompt_hidden(model: torch.nn.Module, prompts: list[list[int]], chosen: list[list[int]],
                         rejected: list[list[int]], pad_id: int) -> ResponseHidden:
    """The response-predicting positions of B pairs, each prompt run once; sequences chosen 0..B-1, then
    rejected B..2B-1.

    The two responses of a pair share their prompt, so the decoder runs over the B prompts once
    (left-padded, so every prompt ends at the same column) and both responses continue from its
    KV cache, repeated per pair: the gradient flows back through the cache into the prompt's
    activations. Equal to `response_hidden` on [prompt + response] rows up to float rounding, with
    B·P fewer decoder tokens (on the default job about a quarter of them).
    """
    from ..models import left_pad

    n = len(prompts)
    if not n or len(chosen) != n or len(rejected) != n:
        raise ValueError(f"need one chosen and one rejected response per prompt, got {n} prompts, "
                         f"{len(chosen)} chosen, {len(rejected)} rejected")
    if any(not p for p in prompts):
        raise ValueError("every prompt needs at least one token (its last position predicts the response's first)")
    body, _ = decoder_and_head(model)
    device = model_device(model)
    ids, mask, positions = (t.to(device) for t in left_pad(prompts, pad_id))
    out = body(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    cache = out.past_key_values
    cache.batch_repeat_interleave(2)  # rows 2b, 2b+1: prompt b for its chosen and its rejected response
    responses = [r for pair in zip(chosen, rejected) for r in pair]
    width = max(1, max(len(r) for r in responses))
    resp_ids = torch.full((2 * n, width), pad_id, dtype=torch.long)
    targets = torch.full((2 * n, width), IGNORE_INDEX, dtype=torch.long)
    for row, r in enumerate(responses):
        if r:
            resp_ids[row, :len(r)] = torch.tensor(r, dtype=torch.long)
            targets[row, :len(r)] = resp_ids[row, :len(r)]
    resp_ids, targets = resp_ids.to(device), targets.to(device)
    resp_mask = (targets != IGNORE_INDEX).long()
    resp_mask[:, 0] = 1  # an empty response still needs one valid query position
    start = mask.sum(dim=1).repeat_interleave(2).unsqueeze(1)
    resp_out = body(input_ids=resp_ids, attention_mask=torch.cat([mask.repeat_interleave(2, dim=0), resp_mask], 1),
                    position_ids=start + torch.arange(width, device=device), past_key_values=cache, use_cache=True)
    last_prompt = out.last_hidden_state[:, -1:].repeat_interleave(2, dim=0)
    hidden = torch.cat([last_prompt, resp_out.last_hidden_state[:, :-1]], dim=1)  # [2B, R, H]: predicts targets
    selected = targets != IGNORE_INDEX
    row = torch.arange(2 * n, device=device)
    sequence = torch.where(row % 2 == 0, row // 2, n + row // 2)  # interleaved rows → chosen first, then rejected
    seq_index = sequence.unsqueeze(1).expand_as(selected)[selected]
    return ResponseHidden(hidden[selected], targets[selected], seq_index, 2 * n)


def pair_hidden(model: torch.nn.Module, prompts: list[list[int]], chosen: list[list[int]],
                rejected: list[list[int]], pad_id: int, share_prompt: bool = True) -> ResponseHidden:
    """Chosen then rejected sequences of B pairs, the prompt run once when `share_prompt`."""
    if share_prompt:
        return shared_prompt_hidden(model, prompts, chosen, rejected, pad_id)
    return response_hidden(model, build_batch(list(prompts) * 2, list(chosen) + list(rejected), pad_id))


def _naive_token_logps(h: ResponseHidden, head: torch.nn.Module, temperature: float) -> torch.Tensor:
    """log p(target) through the LM head module itself (so ZeRO-3's parameter hooks run), full logits."""
    logits = head(h.hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    return torch.gather(F.log_softmax(logits, dim=-1), 1, h.targets.unsqueeze(1)).squeeze(1)


def loss_from_hidden(h: ResponseHidden, head: torch.nn.Module, loss_of_sums: LossOfSums, impl: str = "auto",
                     temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The learner's one path from response hidden states to its loss: (loss, sums detached).

    impl "torch"/"triton": `fastalign.ops.sequence_loss` (the torch path computes every gradient in its forward
    with three LM-head matmuls; Triton's kernels recompute); "naive": full logits through the head module
    (the reference, and the only path under ZeRO-3, which partitions the head).
    """
    if impl == "naive":
        sums = sums_of_positions(_naive_token_logps(h, head, temperature), h.seq_index, h.n_seq)
        return loss_of_sums(sums), sums.detach()
    if impl not in IMPLS:
        raise ValueError(f"unknown log-prob implementation {impl!r}: choose one of {', '.join(IMPLS)}")
    return ops.sequence_loss(h.hidden, head.weight, h.targets, h.seq_index, h.n_seq, loss_of_sums, bias=head.bias,
                             temperature=temperature, impl=impl)


def summed_logps(h: ResponseHidden, head: torch.nn.Module, impl: str = "auto",
                 temperature: float = 1.0) -> torch.Tensor:
    """Summed response log-probs [n_seq] (fp32), differentiable through the model."""
    if impl == "naive":
        return sums_of_positions(_naive_token_logps(h, head, temperature), h.seq_index, h.n_seq)
    token_lp = ops.linear_logprobs(h.hidden, head.weight, h.targets, bias=head.bias, temperature=temperature,
                                   impl=impl)
    return sums_of_positions(token_lp, h.seq_index, h.n_seq)


def sequence_logps(model: torch.nn.Module, batch: SequenceBatch, temperature: float = 1.0,
                   impl: str = "auto") -> torch.Tensor:
    """Summed response log-probs per sequence [S] of a plain batch."""
    return summed_logps(response_hidden(model, batch), decoder_and_head(model)[1], impl, temperature)


def pair_logps(model: torch.nn.Module, prompts: list[list[int]], chosen: list[list[int]], rejected: list[list[int]],
               pad_id: int, impl: str = "auto", share_prompt: bool = True) -> torch.Tensor:
    """Summed chosen then rejected response log-probs [2B] (e.g. the reference's, without gradient)."""
    h = pair_hidden(model, prompts, chosen, rejected, pad_id, share_prompt)
    return summed_logps(h, decoder_and_head(model)[1], impl)

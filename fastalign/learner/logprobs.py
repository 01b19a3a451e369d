"""Summed response log-probs of a causal LM, computed only where they are needed.

Sequences are prompt + response, right-padded into one batch. The decoder runs over every token, but
the LM head runs only on the positions that predict response tokens: on short responses after long
prompts that skips most of the [tokens × vocab] work (and memory) of a plain `model(...).logits`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


@dataclass
class SequenceBatch:
    """Right-padded prompt+response sequences; `targets[b, t]` is the token predicted at position t."""

    input_ids: torch.Tensor  # [S, L]
    attention_mask: torch.Tensor  # [S, L]
    targets: torch.Tensor  # [S, L], IGNORE_INDEX outside the response

    @property
    def lengths(self) -> torch.Tensor:
        return (self.targets != IGNORE_INDEX).sum(dim=1)


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


def response_hidden(model: torch.nn.Module, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hidden states at response-predicting positions [T, H], their targets [T] and sequence index [T]."""
    body, _ = decoder_and_head(model)
    out = body(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    mask = batch.targets != IGNORE_INDEX
    seq_index = torch.arange(batch.targets.shape[0]).unsqueeze(1).expand_as(mask)[mask]
    return hidden[mask], batch.targets[mask], seq_index


def token_logprobs_naive(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor,
                         temperature: float = 1.0) -> torch.Tensor:
    """log p(target) per selected position through the LM head module (works with ZeRO-3 hooks)."""
    logits = head(hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    return torch.gather(F.log_softmax(logits, dim=-1), 1, targets.unsqueeze(1)).squeeze(1)


def token_logprobs_fused(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor,
                         temperature: float = 1.0) -> torch.Tensor:
    """The same through the fused linear log-prob op: never holds more than one chunk of logits."""
    from ..ops import linear_logprobs

    return linear_logprobs(hidden, head.weight, targets, bias=head.bias, temperature=temperature)


TOKEN_LOGPROBS = {"naive": token_logprobs_naive, "fused": token_logprobs_fused}


def sequence_logps(model: torch.nn.Module, batch: SequenceBatch, temperature: float = 1.0,
                   impl: str = "fused") -> torch.Tensor:
    """Summed response log-probs per sequence [S] (float32), differentiable through the model."""
    _, head = decoder_and_head(model)
    hidden, targets, seq_index = response_hidden(model, batch)
    token_lp = TOKEN_LOGPROBS[impl](hidden, head, targets, temperature)
    sums = torch.zeros(batch.targets.shape[0], dtype=torch.float32, device=token_lp.device)
    return sums.index_add(0, seq_index.to(token_lp.device), token_lp)


def shared_prompt_logps(model: torch.nn.Module, prompts: list[list[int]], chosen: list[list[int]],
                        rejected: list[list[int]], pad_id: int, temperature: float = 1.0,
                        impl: str = "fused") -> torch.Tensor:
    """Summed log-probs of chosen and rejected responses [2B] (chosen first), the prompt run once.

    The two responses of a pair share their prompt, so the decoder runs over the B prompts once
    (left-padded, so every prompt ends at the same column) and both responses continue from its
    KV cache, repeated per pair: the gradient flows back through the cache into the prompt's
    activations. Equal to `sequence_logps` on [prompt + response] rows up to float rounding, with
    B·P fewer decoder tokens (on the default job about a quarter of them).
    """
    from ..models import left_pad

    n = len(prompts)
    if not n or len(chosen) != n or len(rejected) != n:
        raise ValueError(f"need one chosen and one rejected response per prompt, got {n} prompts, "
                         f"{len(chosen)} chosen, {len(rejected)} rejected")
    if any(not p for p in prompts):
        raise ValueError("every prompt needs at least one token (its last position predicts the response's first)")
    body, head = decoder_and_head(model)
    ids, mask, positions = left_pad(prompts, pad_id)
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
    resp_mask = (targets != IGNORE_INDEX).long()
    resp_mask[:, 0] = 1  # an empty response still needs one valid query position
    start = mask.sum(dim=1).repeat_interleave(2).unsqueeze(1)
    resp_out = body(input_ids=resp_ids, attention_mask=torch.cat([mask.repeat_interleave(2, dim=0), resp_mask], 1),
                    position_ids=start + torch.arange(width), past_key_values=cache, use_cache=True)
    last_prompt = out.last_hidden_state[:, -1:].repeat_interleave(2, dim=0)
    hidden = torch.cat([last_prompt, resp_out.last_hidden_state[:, :-1]], dim=1)  # [2B, R, H]: predicts targets
    selected = targets != IGNORE_INDEX
    seq_index = torch.arange(2 * n).unsqueeze(1).expand_as(selected)[selected]
    token_lp = TOKEN_LOGPROBS[impl](hidden[selected], head, targets[selected], temperature)
    sums = torch.zeros(2 * n, dtype=torch.float32, device=token_lp.device).index_add(
        0, seq_index.to(token_lp.device), token_lp)
    return torch.cat([sums[0::2], sums[1::2]])


def pair_logps(model: torch.nn.Module, prompts: list[list[int]], chosen: list[list[int]], rejected: list[list[int]],
               pad_id: int, impl: str = "fused", share_prompt: bool = True) -> torch.Tensor:
    """Summed chosen then rejected response log-probs [2B]: the learner's path for pairs."""
    if share_prompt:
        return shared_prompt_logps(model, prompts, chosen, rejected, pad_id, impl=impl)
    return sequence_logps(model, build_batch(list(prompts) * 2, list(chosen) + list(rejected), pad_id), impl=impl)

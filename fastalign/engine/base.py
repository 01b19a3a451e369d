"""The one interface every generation engine implements, and the checks they share.

Both engines return the same records (`fastalign.types.Completion`) with the same conventions, so the
loop, the explorer and the learner never see which engine produced a sample:
- `logprobs` are RAW log-probs: log softmax of the model's logits at temperature 1, before top-p, of the
  token that was sampled. That is the behaviour policy's own distribution the learner compares against.
- `token_ids` include the stop (EOS) token when generation ended on it (finish_reason "stop"), because
  the learner trains on it; finish_reason "length" means max_new_tokens was reached.
- `text` is decoded without special tokens.
"""
from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..types import Completion

ENGINE_DTYPES = ("bf16", "fp32")


class GenerationEngine(ABC):
    """Samples responses from the current policy and takes the learner's weights in place."""

    @abstractmethod
    def generate(self, prompt_ids: list[list[int]], n: int, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | None = None) -> list[list[Completion]]:
        """n samples per prompt; seed=None draws a fresh seed from the engine's own seeded stream."""

    @abstractmethod
    def greedy(self, prompt_ids: list[list[int]], max_new_tokens: int) -> list[Completion]:
        """One deterministic (argmax) response per prompt, e.g. for evaluation."""

    @abstractmethod
    def update_weights(self, weights: Iterable[tuple[str, torch.Tensor]], partial: bool = False) -> None:
        """Swap in new weights (HF parameter names, any dtype) in place: no restart, no disk.

        Every parameter is required unless `partial`: then only the given tensors change (e.g. the
        modules a LoRA adapter touches), and they must be a set `names_to_update` returns."""

    def names_to_update(self, names: Iterable[str]) -> frozenset[str]:
        """The tensors a partial update of `names` must carry: the engine may hold several HF tensors in
        one layer (vLLM's fused qkv_proj) and reloads a layer whole. Here: exactly `names`."""
        return frozenset(names)

    @abstractmethod
    def close(self) -> None:
        """Free the engine's memory and undo its process-wide side effects."""

    def __enter__(self) -> "GenerationEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_dtype(dtype: str) -> str:
    if dtype not in ENGINE_DTYPES:
        raise ValueError(f"unknown engine dtype {dtype!r}: choose one of {', '.join(ENGINE_DTYPES)}")
    return dtype


def check_request(prompt_ids: Sequence[Sequence[int]], n: int, max_new_tokens: int, temperature: float,
                  top_p: float, max_model_len: int | None = None) -> None:
    """Refuse a bad request before it reaches an engine, whose own errors are far less clear."""
    if isinstance(prompt_ids, (str, bytes)) or not isinstance(prompt_ids, Sequence):
        raise TypeError("prompt_ids must be a list of token-id lists (tokenize the prompts first)")
    if n < 1:
        raise ValueError(f"n (samples per prompt) must be ≥ 1, got {n}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be ≥ 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be ≥ 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    for i, ids in enumerate(prompt_ids):
        if isinstance(ids, (str, bytes)) or len(ids) == 0:
            raise ValueError(f"prompt {i} must be a non-empty list of token ids, got {ids!r:.60}")
        if max_model_len is not None and len(ids) + max_new_tokens > max_model_len:
            raise ValueError(f"prompt {i} has {len(ids)} tokens + max_new_tokens {max_new_tokens} > "
                             f"max_model_len {max_model_len}: shorten prompts or raise max_model_len")


def request_seeds(seed: int, count: int) -> list[int]:
    """Independent per-prompt seeds from one seed, so equal prompts in a batch still differ."""
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(count, dtype=np.uint32) >> 1]


def stop_token_ids(model_dir: str | os.PathLike | None = None, config: object = None,
                   generation_config: object = None) -> list[int]:
    """Every EOS id the model declares (config and generation config), so both engines stop alike."""
    ids: set[int] = set()

    def add(value: object) -> None:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)

    if model_dir is not None:
        for name in ("config.json", "generation_config.json"):
            path = Path(model_dir) / name
            if path.is_file():
                add(json.loads(path.read_text()).get("eos_token_id"))
    for cfg in (config, generation_config):
        if cfg is not None:
            add(getattr(cfg, "eos_token_id", None))
    if not ids:
        raise ValueError(f"model {model_dir or ''} declares no eos_token_id: set it in its config.json")
    return sorted(ids)


def truncate_at_stop(token_ids: list[int], stops: Iterable[int]) -> tuple[list[int], str]:
    """Cut after the first stop token (kept) and name the finish reason."""
    stop_set = set(stops)
    for i, tok in enumerate(token_ids):
        if tok in stop_set:
            return token_ids[:i + 1], "stop"
    return token_ids, "length"

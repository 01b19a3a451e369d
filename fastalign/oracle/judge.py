"""OAIF-style LLM judge: a local instruct model is asked which of two responses is better.

No generation: one forward pass per (prompt, order), reading the next-token distribution at the
start of the assistant's answer. The letter probability sums every single-token spelling of the
letter ("A" and " A"), and is renormalised over the two letters so that mass on other tokens
(e.g. "The") does not count. The question and the two-order average are `pairwise`'s, shared with
the served judge (`http_judge`).
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path

import numpy as np
import torch

from ..data import has_chat_template
from ..models import left_pad, load_tokenizer, torch_dtype
from .base import Oracle, sigmoid
from .hf import length_sorted_chunks
from .pairwise import LETTERS, PLAIN_ANSWER_CUE, both_orders, combine_orders, judge_instruction, pair_question


def answer_token_ids(tokenizer, letter: str) -> list[int]:
    """Every single-token spelling of the answer letter; multi-token spellings cannot be read from one step."""
    ids: list[int] = []
    for text in (letter, " " + letter):
        enc = tokenizer.encode(text, add_special_tokens=False)
        if len(enc) == 1 and enc[0] not in ids:
            ids.append(enc[0])
    if not ids:
        raise ValueError(f"the judge's tokenizer has no single token for answer {letter!r}: "
                         "pick a judge model whose vocabulary has one")
    return ids


class JudgeOracle(Oracle):
    """A pairwise LLM judge; `instruction` replaces the criterion sentence (default: more helpful)."""

    def __init__(self, model_dir: str | os.PathLike, instruction: str | None = None, *, batch_size: int = 8,
                 dtype: str = "fp32", **kwargs) -> None:
        super().__init__(**kwargs)
        from transformers import AutoModelForCausalLM

        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        self.instruction = judge_instruction(instruction)
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"judge {str(model_dir)!r} is not a Hugging Face model directory (no config.json)")
        self.name = f"judge {model_dir.name!r}"
        self.batch_size = batch_size
        self.tokenizer = load_tokenizer(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch_dtype(dtype),
                                                          attn_implementation="sdpa")
        self.model.eval()
        self.letter_ids = [answer_token_ids(self.tokenizer, letter) for letter in LETTERS]
        if set(self.letter_ids[0]) & set(self.letter_ids[1]):
            raise ValueError("the judge's tokenizer maps 'A' and 'B' to a shared token; they cannot be told apart")
        self._keep_last = "logits_to_keep" in inspect.signature(self.model.forward).parameters

    def judge_text(self, prompt: str, first: str, second: str) -> str:
        """The full judge input up to the first answer token (the assistant turn's start)."""
        user = pair_question(self.instruction, prompt, first, second)
        if has_chat_template(self.tokenizer):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                      add_generation_prompt=True)
        return user + PLAIN_ANSWER_CUE

    def encode(self, prompt: str, first: str, second: str) -> list[int]:
        text = self.judge_text(prompt, first, second)
        return self.tokenizer.encode(text, add_special_tokens=not has_chat_template(self.tokenizer))

    @torch.inference_mode()
    def first_wins(self, seqs: list[list[int]]) -> np.ndarray:
        """P_A for each encoded judge input: the probability that the judge answers 'A'."""
        out = np.empty(len(seqs), dtype=np.float64)
        for chunk in length_sorted_chunks([len(s) for s in seqs], self.batch_size):
            ids, mask, positions = left_pad([seqs[i] for i in chunk], self.tokenizer.pad_token_id)
            kwargs = {"logits_to_keep": 1} if self._keep_last else {}
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs).logits
            logp = torch.log_softmax(logits[:, -1].double(), dim=-1)
            letter_a, letter_b = (torch.logsumexp(logp[:, ids_], dim=-1) for ids_ in self.letter_ids)
            out[chunk] = sigmoid((letter_a - letter_b).numpy())
        return out

    def _probabilities(self, prompts, a, b):
        seqs = [self.encode(*question) for question in both_orders(prompts, a, b)]
        return combine_orders(self.first_wins(seqs)), None, None

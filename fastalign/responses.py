"""Responses that come with the prompt set (SAIL-DP trains on dataset responses, not policy samples).

A JSONL row holds the instruction (`prompt_field`) and a list of at least two response strings
(`response_field`, default "responses"), e.g. {"prompt": "Name a colour.", "responses": ["Blue.", "Red!"]}.
Each response is tokenised once, with the model's EOS appended, as a policy sample that stopped would be.
"""
from __future__ import annotations

from pathlib import Path

from .data import PromptFormatError, jsonl_rows, row_instruction
from .types import Completion


def load_dataset_responses(source: str, tokenizer, prompt_field: str = "prompt",
                           response_field: str = "responses") -> dict[str, list[Completion]]:
    """instruction → its dataset responses as Completions (no log-probs: no behaviour policy sampled them)."""
    path = Path(source)
    if not path.is_file():
        raise PromptFormatError(f"dataset responses need a JSONL prompt file, got {source!r}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise PromptFormatError("the tokenizer has no eos_token_id to end dataset responses with")
    out: dict[str, list[Completion]] = {}
    for row in jsonl_rows(path):
        prompt = row_instruction(row, prompt_field)  # the prompt loader's own checks and messages
        responses = row.value.get(response_field)
        if (not isinstance(responses, list) or len(responses) < 2
                or not all(isinstance(r, str) and r.strip() for r in responses)):
            raise PromptFormatError(
                f"{row.where}: field {response_field!r} must be a list of ≥ 2 non-empty response strings "
                f"(got {type(responses).__name__ if responses is not None else 'nothing'}); "
                "add the responses, or set --response_field to the key that holds them")
        out[prompt] = [Completion(token_ids=tokenizer.encode(r, add_special_tokens=False) + [eos], text=r,
                                  finish_reason="stop") for r in responses]
    return out

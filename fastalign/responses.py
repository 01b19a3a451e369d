"""Responses that come with the prompt set (SAIL-DP trains on dataset responses, not policy samples).

A JSONL row holds the instruction (`prompt_field`) and a list of at least two response strings
(`response_field`, default "responses"), e.g. {"prompt": "Name a colour.", "responses": ["Blue.", "Red!"]}.
Each response is tokenised once, with the model's EOS appended, as a policy sample that stopped would be.
"""
from __future__ import annotations

import json
from pathlib import Path

from .data import PromptFormatError
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
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise PromptFormatError(f"{where}: malformed JSON ({err.msg} at column {err.colno})") from None
            responses = row.get(response_field) if isinstance(row, dict) else None
            if (not isinstance(responses, list) or len(responses) < 2
                    or not all(isinstance(r, str) and r.strip() for r in responses)):
                raise PromptFormatError(
                    f"{where}: field {response_field!r} must be a list of ≥ 2 non-empty response strings "
                    f"(got {type(responses).__name__ if responses is not None else 'nothing'}); "
                    "add the responses, or set --response_field to the key that holds them")
            prompt = row.get(prompt_field)
            if not isinstance(prompt, str):
                raise PromptFormatError(f"{where}: missing string field {prompt_field!r}")
            out[prompt] = [Completion(token_ids=tokenizer.encode(r, add_special_tokens=False) + [eos], text=r,
                                      finish_reason="stop") for r in responses]
    return out

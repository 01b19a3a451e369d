"""Preference pairs that come with the prompt set (SAIL-DP trains on the dataset's pairs, not policy samples).

A JSONL row holds the instruction (`prompt_field`) and a chosen and a rejected response (`chosen_field`,
`rejected_field`; default "chosen" / "rejected", the usual preference-dataset format), e.g.
{"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "No."}. Each response is tokenised once,
with the model's EOS appended, as a policy sample that stopped would be.
"""
from __future__ import annotations

from pathlib import Path

from .data import PromptFormatError, jsonl_rows, row_instruction
from .types import DATASET, Completion


def load_dataset_pairs(source: str, tokenizer, prompt_field: str = "prompt", chosen_field: str = "chosen",
                       rejected_field: str = "rejected") -> dict[str, tuple[Completion, Completion]]:
    """instruction → (chosen, rejected) as Completions (no log-probs: no behaviour policy sampled them)."""
    path = Path(source)
    if not path.is_file():
        raise PromptFormatError(f"dataset preference pairs need a JSONL prompt file, got {source!r}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise PromptFormatError("the tokenizer has no eos_token_id to end dataset responses with")
    out: dict[str, tuple[Completion, Completion]] = {}
    for row in jsonl_rows(path):
        prompt = row_instruction(row, prompt_field)  # the prompt loader's own checks and messages
        texts = []
        for field, flag in ((chosen_field, "--chosen_field"), (rejected_field, "--rejected_field")):
            text = row.value.get(field)
            if not isinstance(text, str) or not text.strip():
                raise PromptFormatError(
                    f"{row.where}: field {field!r} must be a non-empty response string (got "
                    f"{type(text).__name__ if text is not None else 'nothing'}); add it, or set {flag} to the "
                    "key that holds it")
            texts.append(text)
        if texts[0] == texts[1]:
            raise PromptFormatError(f"{row.where}: the chosen and the rejected response are the same text; "
                                    "a pair of identical responses carries no preference")
        out[prompt] = tuple(Completion(token_ids=tokenizer.encode(t, add_special_tokens=False) + [eos], text=t,
                                       finish_reason="stop", source=DATASET) for t in texts)
    return out

"""Prompt sets: loading (the packaged default, JSONL files, `datasets` directories), chat formatting
with a hard token budget, and the endless seeded stream of prompt batches the online loop draws from.

Loading never guesses silently: a bad row fails with its file and line (or row) unless the caller asks
to skip bad rows, and then the skipped rows are both logged and returned on the result, so a run can
record how much of its data it actually used.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .config import DEFAULT_PROMPTS
from .types import Prompt

log = logging.getLogger(__name__)

DEFAULT_FILE = "prompts.jsonl"
DEFAULT_SPLITS = ("train", "heldout")
BAD_ROW_MODES = ("fail", "skip")
LONG_MODES = ("truncate", "drop")


class PromptDataError(Exception):
    """Any problem with a prompt source; the message names the source and, for rows, where."""


class PromptFormatError(PromptDataError, ValueError):
    """The source exists but its content (a row, a split, the whole file) is unusable."""


class PromptSourceNotFoundError(PromptDataError, FileNotFoundError):
    """The prompt source does not exist."""


class PromptList(list):
    """The loaded instructions (a plain list of str) plus their ids and the rows skipped on the way.

    ids: one per instruction (the row's "id" when it has one, else "<source name>:<line or row>");
    skipped: one "<where>: <why>" message per bad row dropped in on_bad_row="skip" mode.
    """

    def __init__(self, instructions: Iterable[str], ids: Sequence[str], skipped: Sequence[str] = ()):
        super().__init__(instructions)
        if len(ids) != len(self):
            raise ValueError(f"{len(ids)} ids for {len(self)} instructions")
        self.ids = list(ids)
        self.skipped = list(skipped)


class FormattedPrompts(list):
    """The formatted prompts (a plain list of Prompt) plus how many were truncated or dropped."""

    def __init__(self, prompts: Iterable[Prompt], truncated: int = 0, dropped: int = 0):
        super().__init__(prompts)
        self.truncated = truncated
        self.dropped = dropped


@dataclass
class Row:
    where: str  # "file:line" or "dir[split] row i", for error messages
    value: Any
    default_id: str
    error: str | None = None  # set when the line is not even JSON


# --------------------------------------------------------------------------------------------- loading


def default_prompts_path() -> Path:
    """The packaged default set (619 written instructions, 100 of them in the "heldout" split)."""
    path = Path(str(resources.files("fastalign") / "assets" / DEFAULT_FILE))
    if not path.is_file():
        raise PromptSourceNotFoundError(f"the packaged prompt set {path} is missing: reinstall fastalign")
    return path


def load_prompts(source: str, split: str | None = None, field: str = "prompt",
                 on_bad_row: str = "fail") -> PromptList:
    """Instructions from "default", a JSONL file or a `datasets.save_to_disk` directory.

    split: for "default" one of "train"/"heldout" (None = all rows). For a JSONL file or a Dataset with
    a "split" field/column, only rows of that split (rows without the field are left out); a source
    with no split field at all is returned whole. For a DatasetDict, the split of that name (None = all
    splits in order). Asking for a split that has no rows is an error.
    field: the key holding the instruction (ignored for "default", whose key is always "prompt").
    on_bad_row: "fail" raises on the first bad row; "skip" drops bad rows, logs one warning with the
    count and lists them in the result's `skipped`.
    """
    if on_bad_row not in BAD_ROW_MODES:
        raise ValueError(f"on_bad_row must be one of {BAD_ROW_MODES}, got {on_bad_row!r}")
    if source == DEFAULT_PROMPTS:
        if split not in (None, *DEFAULT_SPLITS):
            raise PromptFormatError(f"the default prompt set has splits {DEFAULT_SPLITS}, not {split!r}")
        source, field = str(default_prompts_path()), "prompt"
        rows = jsonl_rows(Path(source))
    else:
        path = Path(source)
        if path.is_file():
            rows = jsonl_rows(path)
        elif path.is_dir():
            rows, split = _dataset_rows(path, split)
        else:
            raise PromptSourceNotFoundError(
                f"prompt source {source!r} does not exist: give a JSONL file, a directory written by "
                f"datasets' save_to_disk, or {DEFAULT_PROMPTS!r}")
    return _collect(rows, source, split, field, on_bad_row)


def _collect(rows: list[Row], source: str, split: str | None, field: str, on_bad_row: str) -> PromptList:
    if not rows:
        raise PromptFormatError(f"{source}: empty, no rows at all; give one object per row with a {field!r} field")
    has_split = any(isinstance(r.value, dict) and "split" in r.value for r in rows)
    if split is not None and not has_split:
        log.info("%s has no 'split' field: split %r ignored, using all rows", source, split)
    instructions, ids, skipped = [], [], []
    for row in rows:
        try:
            text = row_instruction(row, field)
        except PromptFormatError as err:
            if on_bad_row == "fail":
                raise
            skipped.append(str(err))
            continue
        if split is not None and has_split and row.value.get("split") != split:
            continue
        row_id = row.value.get("id")
        instructions.append(text)
        ids.append(str(row_id) if isinstance(row_id, (str, int)) and str(row_id) else row.default_id)
    if skipped:
        log.warning("%s: skipped %d bad row(s) of %d; first: %s", source, len(skipped), len(rows), skipped[0])
    if not instructions:
        if split is not None and has_split:
            present = sorted({str(r.value["split"]) for r in rows if isinstance(r.value, dict) and "split" in r.value})
            raise PromptFormatError(f"{source}: no rows in split {split!r}; splits present: {present}")
        raise PromptFormatError(f"{source}: no usable rows ({len(skipped)} bad row(s) skipped)")
    return PromptList(instructions, ids, skipped)


def row_instruction(row: Row, field: str) -> str:
    if row.error is not None:
        raise PromptFormatError(row.error)
    if not isinstance(row.value, dict):
        raise PromptFormatError(f"{row.where}: expected a JSON object, got {type(row.value).__name__}")
    if field not in row.value:
        raise PromptFormatError(f"{row.where}: missing field {field!r} (keys: {sorted(row.value)[:8]}); "
                                "set prompt_field to the key holding the instruction")
    text = row.value[field]
    if not isinstance(text, str):
        raise PromptFormatError(f"{row.where}: field {field!r} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise PromptFormatError(f"{row.where}: field {field!r} is empty")
    return text


def jsonl_rows(path: Path) -> list[Row]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            row = Row(f"{path}:{number}", None, f"{path.name}:{number}")
            try:
                row.value = json.loads(line)
            except json.JSONDecodeError as err:
                row.error = f"{row.where}: malformed JSON ({err.msg} at column {err.colno})"
            rows.append(row)
    return rows


def _dataset_rows(path: Path, split: str | None) -> tuple[list[Row], str | None]:
    """Rows of a saved Dataset or DatasetDict, and the split still to filter on (a "split" column)."""
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise PromptFormatError(f"{path}: not a directory written by datasets' save_to_disk ({err})") from err
    if isinstance(data, datasets.DatasetDict):
        if split is not None and split not in data:
            raise PromptFormatError(f"{path}: no split {split!r}; splits present: {sorted(data)}")
        parts = [(split, data[split])] if split is not None else list(data.items())
        remaining = None
    else:
        parts, remaining = [(None, data)], split
    rows = []
    for name, part in parts:
        label, prefix = (f"{path}[{name}]", f"{path.name}:{name}") if name is not None else (str(path), path.name)
        rows.extend(Row(f"{label} row {i}", dict(record), f"{prefix}:{i}") for i, record in enumerate(part))
    return rows, remaining


# ------------------------------------------------------------------------------------------ formatting


def format_prompts(tokenizer, instructions: Sequence[str], max_prompt_tokens: int,
                   system_prompt: str | None = None, on_long: str = "truncate",
                   ids: Sequence[str] | None = None) -> FormattedPrompts:
    """Prompts as the model will see them, each at most `max_prompt_tokens` tokens.

    With a chat template: one user turn (after `system_prompt` if given), add_generation_prompt=True,
    token ids from the rendered text without adding special tokens again (the template carries them).
    Without one: the plain instruction (system prompt first, if given) with the tokenizer's own
    special tokens. A too-long prompt loses the end of its instruction, never the template's tail
    (so the model still sees where its answer starts), or is dropped with on_long="drop".
    ids: defaults to `instructions.ids` (a PromptList), else a hash of the instruction text.
    """
    if on_long not in LONG_MODES:
        raise ValueError(f"on_long must be one of {LONG_MODES}, got {on_long!r}")
    if max_prompt_tokens < 1:
        raise ValueError(f"max_prompt_tokens must be ≥ 1, got {max_prompt_tokens}")
    ids = list(ids if ids is not None else getattr(instructions, "ids", None) or map(_text_id, instructions))
    if len(ids) != len(instructions):
        raise ValueError(f"{len(ids)} ids for {len(instructions)} instructions")
    overhead = len(_encode(tokenizer, "", system_prompt))
    if overhead >= max_prompt_tokens:
        raise ValueError(f"max_prompt_tokens={max_prompt_tokens} leaves no room for the instruction: the "
                         f"template{' and system prompt' if system_prompt else ''} alone take {overhead} "
                         "tokens; raise max_prompt_tokens or shorten the system prompt")
    out, truncated, dropped = [], 0, 0
    for prompt_id, instruction in zip(ids, instructions):
        text, token_ids = _render(tokenizer, instruction, system_prompt)
        if len(token_ids) > max_prompt_tokens:
            if on_long == "drop":
                dropped += 1
                continue
            text, token_ids = _truncate(tokenizer, instruction, system_prompt, max_prompt_tokens)
            truncated += 1
        out.append(Prompt(id=prompt_id, instruction=instruction, text=text, token_ids=token_ids))
    if truncated or dropped:
        log.warning("prompts over %d tokens: %d truncated, %d dropped (of %d)",
                    max_prompt_tokens, truncated, dropped, len(instructions))
    return FormattedPrompts(out, truncated, dropped)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _render(tokenizer, instruction: str, system_prompt: str | None) -> tuple[str, list[int]]:
    if has_chat_template(tokenizer):
        messages = [{"role": "user", "content": instruction}]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": system_prompt})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        token_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        text = f"{system_prompt}\n\n{instruction}" if system_prompt else instruction
        token_ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    return text, _dedupe_bos(tokenizer, list(token_ids))


def _encode(tokenizer, instruction: str, system_prompt: str | None) -> list[int]:
    return _render(tokenizer, instruction, system_prompt)[1]


def _dedupe_bos(tokenizer, token_ids: list[int]) -> list[int]:
    """A template that writes BOS plus a tokenizer that adds it would start the prompt with two."""
    bos = getattr(tokenizer, "bos_token_id", None)
    while bos is not None and len(token_ids) >= 2 and token_ids[0] == bos and token_ids[1] == bos:
        token_ids = token_ids[1:]
    return token_ids


def _truncate(tokenizer, instruction: str, system_prompt: str | None,
              budget: int) -> tuple[str, list[int]]:
    """Cut the instruction's tokens until the rendered prompt fits; re-render so the template stays whole."""
    pieces = tokenizer(instruction, add_special_tokens=False)["input_ids"]
    keep = min(len(pieces), budget - len(_encode(tokenizer, "", system_prompt)))
    while keep > 0:
        text, token_ids = _render(tokenizer, tokenizer.decode(pieces[:keep]).rstrip(), system_prompt)
        if len(token_ids) <= budget:
            return text, token_ids
        keep -= 1
    return _render(tokenizer, "", system_prompt)


def _text_id(instruction: str) -> str:
    return "h" + hashlib.sha1(instruction.encode("utf-8")).hexdigest()[:12]


# --------------------------------------------------------------------------------------------- stream


class PromptStream:
    """Endless batches of prompts: every epoch is a fresh permutation drawn from (seed, epoch).

    Because each epoch's order is a pure function of (seed, epoch), the state is three integers and a
    resumed run continues at exactly the prompt where it stopped. A batch that crosses an epoch boundary
    takes the rest of one epoch and the start of the next.
    """

    def __init__(self, prompts: Sequence[Prompt], seed: int = 0):
        if len(prompts) == 0:
            raise ValueError("PromptStream needs at least one prompt")
        self.prompts = list(prompts)
        self.seed = int(seed)
        self.epoch = 0
        self.position = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.prompts))

    def next_batch(self, batch_size: int) -> list[Prompt]:
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        batch = []
        while len(batch) < batch_size:
            if self.position == len(self.prompts):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            take = min(batch_size - len(batch), len(self.prompts) - self.position)
            batch.extend(self.prompts[i] for i in self._order[self.position:self.position + take])
            self.position += take
        return batch

    def __iter__(self) -> Iterator[Prompt]:
        while True:
            yield self.next_batch(1)[0]

    def fingerprint(self) -> str:
        """Identifies the prompt list, so a resume against a different set fails instead of drifting."""
        return hashlib.sha1("\n".join(p.id for p in self.prompts).encode("utf-8")).hexdigest()[:16]

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position,
                "num_prompts": len(self.prompts), "fingerprint": self.fingerprint()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"seed", "epoch", "position"} - set(state)
        if missing:
            raise ValueError(f"prompt stream state lacks {sorted(missing)}")
        if state.get("fingerprint", self.fingerprint()) != self.fingerprint():
            raise ValueError("prompt stream state was saved for a different prompt set (ids differ): resume "
                             "with the same prompts, prompt_field and max_prompt_tokens")
        if not 0 <= int(state["position"]) <= len(self.prompts) or int(state["epoch"]) < 0:
            raise ValueError(f"prompt stream state out of range: epoch={state['epoch']}, "
                             f"position={state['position']} for {len(self.prompts)} prompts")
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)

"""A trained reward model as the oracle: any HF sequence-classification directory with one output."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..data import has_chat_template
from ..models import load_tokenizer, torch_dtype
from .base import RewardOracle
from .hf import length_sorted_chunks


def _check_seq_classification_dir(model_dir: Path) -> dict:
    """Refuse a causal LM here: HF would silently bolt a random score head onto it."""
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"reward model {str(model_dir)!r} is not a Hugging Face model directory "
                                "(no config.json)")
    config = json.loads(config_path.read_text())
    archs = config.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise ValueError(f"{str(model_dir)!r} is not a sequence-classification model (architectures: {archs}); "
                         "a reward model needs e.g. LlamaForSequenceClassification with num_labels=1 "
                         "(for an instruct causal LM use --oracle judge)")
    labels = config.get("num_labels", len(config.get("id2label") or {}) or 2)
    if labels != 1:
        raise ValueError(f"reward model {str(model_dir)!r} has {labels} output labels; a scalar reward "
                         "model needs num_labels=1")
    return config


class RewardModelOracle(RewardOracle):
    """Reward = the single logit of a sequence-classification model on (prompt, response).

    With a chat template the pair is formatted as a user turn and an assistant turn (how chat reward
    models are trained); otherwise it is passed as the tokenizer's text pair.
    """

    def __init__(self, model_dir: str | os.PathLike, *, batch_size: int = 16, max_length: int = 1024,
                 dtype: str = "fp32", **kwargs) -> None:
        super().__init__(**kwargs)
        from transformers import AutoModelForSequenceClassification

        model_dir = Path(model_dir)
        _check_seq_classification_dir(model_dir)
        if batch_size <= 0 or max_length <= 0:
            raise ValueError(f"batch_size and max_length must be > 0, got {batch_size}, {max_length}")
        self.name = f"reward model {model_dir.name!r}"
        self.batch_size, self.max_length = batch_size, max_length
        self.tokenizer = load_tokenizer(model_dir)
        self.tokenizer.padding_side = "right"  # position ids stay 0.. for every architecture
        self.model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch_dtype(dtype))
        self.model.eval()
        if self.model.config.pad_token_id is None:  # needed to find each row's last token in a batch
            self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def encode(self, prompts: list[str], responses: list[str]) -> list[list[int]]:
        """Token ids of each (prompt, response) exactly as the model scores them."""
        tok = self.tokenizer
        if has_chat_template(tok):
            texts = [tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                                             tokenize=False) for p, r in zip(prompts, responses)]
            enc = tok(texts, add_special_tokens=False, truncation=True, max_length=self.max_length)
        else:
            enc = tok(list(prompts), list(responses), truncation=True, max_length=self.max_length)
        return enc["input_ids"]

    @torch.inference_mode()
    def score(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        seqs = self.encode(prompts, responses)
        rewards = np.empty(len(seqs), dtype=np.float64)
        for chunk in length_sorted_chunks([len(s) for s in seqs], self.batch_size):
            batch = self.tokenizer.pad({"input_ids": [seqs[i] for i in chunk]}, return_tensors="pt")
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            rewards[chunk] = logits[:, 0].float().numpy()
        return rewards

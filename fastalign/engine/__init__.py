"""Generation engines with one interface: vLLM colocated in-process, or transformers `generate`.

`VLLMEngine` is imported lazily so that importing fastalign never imports vLLM (which patches torch).
"""
from .base import GenerationEngine
from .factory import ENGINE_KINDS, build_engine, engine_for_run, engine_kind, vllm_available
from .hf_engine import HFEngine


def __getattr__(name: str):
    if name == "VLLMEngine":
        from .vllm_engine import VLLMEngine

        return VLLMEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ENGINE_KINDS", "GenerationEngine", "HFEngine", "VLLMEngine", "build_engine", "engine_for_run",
           "engine_kind", "vllm_available"]

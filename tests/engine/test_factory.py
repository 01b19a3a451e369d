"""build_engine: the engine choice and its errors."""
from __future__ import annotations

import pytest

from fastalign import engine as engine_pkg
from fastalign.engine import HFEngine, build_engine, factory


def test_hf_engine_is_built(tiny_model_dir):
    eng = build_engine("hf", tiny_model_dir, dtype="fp32", threads=1)
    assert isinstance(eng, HFEngine)
    assert eng.greedy([[1, 2, 3]], 3)[0].finish_reason in ("stop", "length")


def test_auto_falls_back_to_hf_with_a_notice(tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr(factory, "vllm_available", lambda: False)
    assert isinstance(build_engine("auto", tiny_model_dir, dtype="fp32"), HFEngine)
    assert "vLLM is not installed" in capsys.readouterr().err
    build_engine("auto", tiny_model_dir, dtype="fp32", compile=True)
    assert "--engine_compile only applies to vLLM" in capsys.readouterr().err


def test_vllm_requested_but_missing(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(factory, "vllm_available", lambda: False)
    with pytest.raises(ImportError, match="engine hf"):
        build_engine("vllm", tiny_model_dir)


def test_bad_choices(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown engine"):
        build_engine("tgi", tiny_model_dir)
    with pytest.raises(ValueError, match="engine dtype"):
        build_engine("hf", tiny_model_dir, dtype="fp16")
    with pytest.raises(FileNotFoundError, match="config.json"):
        build_engine("hf", tmp_path)


def test_vllm_engine_is_lazy():
    assert "VLLMEngine" in engine_pkg.__all__

"""Shared fixtures: everything runs on CPU, offline, with tiny models built from a config.

Hermetic: every test runs in its own temporary working directory (so a default `output_dir` such as
runs/default lands there, never in the repository), and every cache a library might write under the
user's home goes to the repository's own `.cache/` (what `make setup` and the tests build: converted
models, compiled extensions), never to ~/.cache.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
os.environ["FASTALIGN_CACHE"] = str(CACHE)
for name, sub in (("TORCH_EXTENSIONS_DIR", "torch_extensions"), ("XDG_CACHE_HOME", "xdg"), ("HF_HOME", "huggingface"),
                  ("TRITON_CACHE_DIR", "triton"), ("MPLCONFIGDIR", "matplotlib"), ("VLLM_CONFIG_ROOT", "vllm-config")):
    os.environ[name] = str(CACHE / sub)
os.environ["VLLM_NO_USAGE_STATS"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _own_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A 2-layer Llama (hidden 64, head_dim 32) with the default model's tokenizer, built once."""
    from fastalign.models import build_tiny_model, cache_dir

    return build_tiny_model(cache_dir() / "models" / "tiny-llama-h64-l2")


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from fastalign.models import load_tokenizer

    return load_tokenizer(tiny_model_dir)


# ------------------------------------------------------------------------------------- Triton's interpreter
# Triton's interpreter must be chosen before triton is first imported. In a full test run torch.compile or
# vLLM have usually imported triton (compiled mode) long before, and TRITON_INTERPRET=1 for the whole
# process would change every other library's kernels. So tests marked `triton` run in a child pytest with
# TRITON_INTERPRET=1 (one child for all of them, on first use), and each parent test reports its own
# child's outcome. When this process already interprets (`TRITON_INTERPRET=1 pytest ...`), they run here.
_CHILD_RESULTS: dict[tuple[str, str], tuple[str, str]] | None = None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "triton: runs Triton kernels in the interpreter (TRITON_INTERPRET=1)")


def _interpreting_here() -> bool:
    from fastalign.kernels.triton_runtime import interpreting

    return interpreting()


def _junit_key(nodeid: str) -> tuple[str, str]:
    """(classname, name) as pytest's junit report spells them for a module-level test function."""
    path, _, name = nodeid.partition("::")
    return path.removesuffix(".py").replace("/", "."), name


def _run_child(nodeids: list[str]) -> dict[tuple[str, str], tuple[str, str]]:
    """Run the selected triton tests in one child pytest; {(classname, name): (outcome, message)}."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        proc = subprocess.run([sys.executable, "-m", "pytest", *nodeids, "-q", "-p", "no:cacheprovider",
                               f"--junitxml={report}"], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=900)
        if not report.exists():
            pytest.fail(f"child pytest produced no report:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
        results = {}
        for case in ET.parse(report).getroot().iter("testcase"):
            outcome, message = "passed", ""
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    outcome = "skipped" if child.tag == "skipped" else "failed"
                    message = (child.get("message") or "") + "\n" + (child.text or "")
            results[(case.get("classname"), case.get("name"))] = (outcome, message)
    return results


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function):
    global _CHILD_RESULTS
    if pyfuncitem.get_closest_marker("triton") is None or _interpreting_here():
        return None
    if _CHILD_RESULTS is None:  # one child for every selected triton test of the session
        _CHILD_RESULTS = _run_child([it.nodeid for it in pyfuncitem.session.items
                                     if it.get_closest_marker("triton") is not None])
    outcome, message = _CHILD_RESULTS.get(_junit_key(pyfuncitem.nodeid), ("failed", "the child pytest did not run it"))
    if outcome == "failed":
        pytest.fail(f"[in TRITON_INTERPRET=1 child] {message}", pytrace=False)
    if outcome == "skipped":
        pytest.skip(message)
    return True

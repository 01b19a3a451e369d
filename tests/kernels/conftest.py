"""Kernel tests run the torch paths eager; tests marked `triton` run in Triton's interpreter (tests/conftest.py)."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def eager_cpu_path(monkeypatch):
    """Compiling the torch path's chunk functions costs ~10 s each on a cold cache and tests nothing about
    the maths; tests run eager unless they set FASTALIGN_COMPILE=1 themselves (see test_compiled_*)."""
    monkeypatch.setenv("FASTALIGN_COMPILE", "0")

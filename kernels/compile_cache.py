"""Optional, cached torch.compile of the torch paths' elementwise pieces.

Compiling the chunk-wise log-sum-exp / softmax-gradient fuses several passes over a [tokens × vocab]
chunk into one (measured ≈5× faster than eager on this CPU). Compilation is lazy, happens once per
function, and any failure (no compiler, unsupported platform) falls back to eager with a warning, so
the torch path never depends on a working toolchain. FASTALIGN_COMPILE=0 turns it off.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable

import torch


def compile_enabled() -> bool:
    """Compile unless FASTALIGN_COMPILE is set to 0/false/no."""
    return os.environ.get("FASTALIGN_COMPILE", "1").lower() not in ("0", "false", "no")


class MaybeCompiled:
    """Wraps `fn`; the first call tries the compiled version, later calls reuse whichever worked."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self._compiled: Callable | None = None
        self._failed = False

    def __call__(self, *args, **kwargs):
        if self._failed or not compile_enabled():
            return self.fn(*args, **kwargs)
        if self._compiled is None:
            self._compiled = torch.compile(self.fn, dynamic=True)
        try:
            return self._compiled(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any compiler failure means: use eager
            self._failed = True
            warnings.warn(f"torch.compile of {self.fn.__name__} failed ({type(exc).__name__}: {exc}); "
                          "using eager torch", RuntimeWarning, stacklevel=2)
            return self.fn(*args, **kwargs)


def maybe_compiled(fn: Callable) -> MaybeCompiled:
    """Decorator form of MaybeCompiled."""
    return MaybeCompiled(fn)

"""How fastalign's Triton kernels are built: compiled for a GPU, or run by Triton's interpreter.

Triton fixes the mode of its own language helpers (tl.sum, tl.zeros, … are themselves jit functions)
when `triton.language` is first imported, from TRITON_INTERPRET. Kernels built in the other mode
cannot call them, so `jit` follows whatever mode the language was imported in, and `check_device`
explains what to do when the tensors do not fit that mode (CPU tensors need the interpreter: set
TRITON_INTERPRET=1 before anything imports triton — torch.compile and vLLM do).
"""
from __future__ import annotations

from typing import Callable

import torch

try:
    import triton
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    TRITON_ERROR: Exception | None = None
except Exception as exc:  # noqa: BLE001 - any import failure means: no Triton path
    triton = tl = InterpretedFunction = None  # type: ignore[assignment]
    TRITON_ERROR = exc

__all__ = ["triton", "tl", "jit", "dot", "interpreting", "require_triton", "check_device"]


def interpreting() -> bool:
    """True when triton.language was imported in interpreter mode (TRITON_INTERPRET=1)."""
    return TRITON_ERROR is None and isinstance(tl.zeros, InterpretedFunction)


def require_triton() -> None:
    """Raise a clear error when the Triton path is asked for but Triton cannot be imported."""
    if TRITON_ERROR is not None:
        raise RuntimeError(f"impl='triton' needs the triton package, which failed to import ({TRITON_ERROR}); "
                           "install fastalign[triton] or use impl='torch'")


def jit(fn: Callable) -> Callable:
    """Build a kernel (or device function) in the same mode as triton.language; identity without Triton."""
    if TRITON_ERROR is not None:
        return fn
    return InterpretedFunction(fn) if interpreting() else triton.jit(fn)


def check_device(*tensors: torch.Tensor | None) -> None:
    """Compiled kernels need CUDA tensors, the interpreter CPU tensors; say which and how to fix it."""
    want = "cpu" if interpreting() else "cuda"
    for t in tensors:
        if t is None or t.device.type == want:
            continue
        if want == "cuda":
            raise ValueError(f"impl='triton' got {t.device} tensors: compiled Triton kernels need CUDA tensors; "
                             "for CPU tensors use impl='torch', or set TRITON_INTERPRET=1 before triton is first "
                             "imported to run the kernels in Triton's interpreter")
        raise ValueError(f"Triton runs in interpreter mode (TRITON_INTERPRET=1), which takes CPU tensors, "
                         f"got one on {t.device}; unset TRITON_INTERPRET or move the inputs to the CPU")


@jit
def dot(a, b, acc, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a·b. UPCAST: Triton 3.9's interpreter computes bf16 tl.dot wrongly (measured: errors of 1e10),
    so interpreted kernels multiply in fp32; IEEE: exact fp32 products instead of tf32."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    return tl.dot(a, b, acc)

"""Batched ensemble MLP: torch path (and Triton in the interpreter) vs the per-head reference loop."""
from __future__ import annotations

import pytest
import torch

from fastalign.kernels.ensemble_mlp import ensemble_mlp_torch, ensemble_mlp_reference

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-4), torch.bfloat16: dict(atol=6e-2, rtol=3e-2)}


def make_ensemble(e: int, m: int, d: int, h: int, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(m, d), (e, d, h), (e, h), (e, h, h), (e, h), (e, h), (e,)]
    scales = [1.0, d ** -0.5, 0.1, h ** -0.5, 0.1, h ** -0.5, 0.1]
    return [(torch.randn(s, generator=g) * c).to(dtype).requires_grad_() for s, c in zip(shapes, scales)]


def values_and_grads(fn, tensors, seed: int = 1):
    for t in tensors:
        t.grad = None
    r = fn(*tensors)
    up = torch.randn(r.shape, generator=torch.Generator().manual_seed(seed))
    (r * up).sum().backward()
    return [r.detach()] + [t.grad.clone() for t in tensors]


def check(fn, e, m, d, h, dtype):
    tensors = make_ensemble(e, m, d, h, dtype)
    want = values_and_grads(ensemble_mlp_reference, tensors)
    got = values_and_grads(fn, tensors)
    assert got[0].shape == (e, m) and got[0].dtype == torch.float32
    for a, b in zip(got, want):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a.float(), b.float(), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_matches_reference(dtype):
    check(ensemble_mlp_torch, 4, 13, 24, 16, dtype)


def test_cpu_single_row_single_head():
    check(ensemble_mlp_torch, 1, 1, 5, 3, torch.float32)


def test_heads_are_independent():
    """Changing head 0's parameters changes only row 0 of the rewards."""
    x, *params = make_ensemble(3, 7, 6, 4)
    before = ensemble_mlp_torch(x, *params).detach()
    with torch.no_grad():
        params[0][0] += 1.0
    after = ensemble_mlp_torch(x, *params).detach()
    assert not torch.allclose(before[0], after[0]) and torch.equal(before[1:], after[1:])


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_matches_reference(dtype):
    """M=19 and d=40 cross the interpreter blocks (M 16, d 32); h=12 is padded to 16."""
    from fastalign.kernels.ensemble_mlp_triton import ensemble_mlp_triton

    check(ensemble_mlp_triton, 2, 19, 40, 12, dtype)

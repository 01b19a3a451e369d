"""torch path of the fused linear log-prob against the full-logits reference: values and gradients."""
from __future__ import annotations

import pytest
import torch

from fastalign.kernels import compile_cache
from fastalign.kernels.linear_logprobs import linear_logprobs_torch, linear_logprobs_reference

TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.bfloat16: dict(atol=3e-2, rtol=2e-2)}


def make_inputs(n: int, h: int, v: int, dtype=torch.float32, bias: bool = True, ignore=(), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g) / h ** 0.5 * 3).to(dtype).requires_grad_()
    b = (torch.randn(v, generator=g)).to(dtype).requires_grad_() if bias else None
    targets = torch.randint(0, v, (n,), generator=g)
    targets[list(ignore)] = -100
    return hidden, weight, b, targets


def run(fn, hidden, weight, bias, targets, temperature=1.0, entropy=True, seed=1, **kw):
    """Values and gradients of Σ g₁·logp + g₂·entropy for random upstream g (fixed seed)."""
    g = torch.Generator().manual_seed(seed)
    g_lp, g_ent = torch.randn(targets.shape[0], generator=g), torch.randn(targets.shape[0], generator=g)
    for t in (hidden, weight, bias):
        if t is not None:
            t.grad = None
    logp, ent = fn(hidden, weight, targets, bias, temperature, -100, **kw)
    obj = (logp * g_lp).sum() + ((ent * g_ent).sum() if entropy else 0)
    obj.backward()
    grads = [t.grad.clone() for t in (hidden, weight, bias) if t is not None]
    return [logp.detach(), ent.detach() if entropy else None] + grads


def assert_close(got, want, dtype):
    for a, b in zip(got, want):
        if a is None or b is None:
            continue
        torch.testing.assert_close(a.float(), b.float(), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_cpu_matches_reference(dtype, temperature):
    inputs = make_inputs(11, 24, 67, dtype, ignore=(0, 5))
    want = run(linear_logprobs_reference, *inputs, temperature=temperature)
    got = run(linear_logprobs_torch, *inputs, temperature=temperature, with_entropy=True, chunk=4)
    assert got[0].dtype == torch.float32 and got[2].dtype == dtype
    assert_close(got, want, dtype)


def test_ignored_rows_are_zero_and_get_no_gradient():
    hidden, weight, bias, targets = make_inputs(6, 8, 13, ignore=(1, 4))
    logp, ent = linear_logprobs_torch(hidden, weight, targets, bias, with_entropy=True)
    assert logp[[1, 4]].eq(0).all() and ent[[1, 4]].eq(0).all()
    assert (logp[[0, 2, 3, 5]] < 0).all() and (ent[[0, 2, 3, 5]] > 0).all()
    (logp.sum() + ent.sum()).backward()
    assert hidden.grad[[1, 4]].eq(0).all() and hidden.grad[0].abs().sum() > 0


def test_all_ignored_and_single_row():
    hidden, weight, bias, targets = make_inputs(3, 8, 13, ignore=(0, 1, 2))
    logp, _ = linear_logprobs_torch(hidden, weight, targets, bias)
    logp.sum().backward()
    assert logp.eq(0).all() and hidden.grad.eq(0).all() and weight.grad.eq(0).all() and bias.grad.eq(0).all()
    inputs = make_inputs(1, 8, 13, bias=False)
    assert_close(run(linear_logprobs_torch, *inputs, with_entropy=True), run(linear_logprobs_reference, *inputs),
                 torch.float32)


def test_logprobs_without_entropy_and_chunking_do_not_change_values():
    inputs = make_inputs(9, 16, 31)
    want = run(linear_logprobs_reference, *inputs, entropy=False)
    for chunk in (1, 2, 9, 100):
        assert_close(run(linear_logprobs_torch, *inputs, entropy=False, chunk=chunk), want, torch.float32)


def test_log_probs_normalise():
    """Summing exp(log-prob) over every possible target gives 1: the op is a real log-softmax."""
    hidden, weight, bias, _ = make_inputs(1, 8, 17)
    every = torch.arange(17)
    logp, _ = linear_logprobs_torch(hidden.detach().expand(17, 8), weight.detach(), every, bias.detach())
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-5)


def test_compiled_matches_eager(monkeypatch):
    """The other tests run eager (conftest); here the torch.compile'd chunk functions are checked."""
    inputs = make_inputs(7, 16, 29, ignore=(3,))
    eager = run(linear_logprobs_torch, *inputs, with_entropy=True)
    monkeypatch.setenv("FASTALIGN_COMPILE", "1")
    assert compile_cache.compile_enabled()
    assert_close(run(linear_logprobs_torch, *inputs, with_entropy=True), eager, torch.float32)
    assert_close(run(linear_logprobs_torch, *inputs, with_entropy=True), run(linear_logprobs_reference, *inputs),
                 torch.float32)


def test_compile_failure_falls_back_to_eager(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler")

    wrapped = compile_cache.MaybeCompiled(lambda x: x + 1)
    monkeypatch.setenv("FASTALIGN_COMPILE", "1")
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: broken)
    with pytest.warns(RuntimeWarning, match="no compiler"):
        assert wrapped(torch.ones(2)).tolist() == [2.0, 2.0]
    assert wrapped(torch.ones(1)).tolist() == [2.0]  # stays on eager, no second warning needed

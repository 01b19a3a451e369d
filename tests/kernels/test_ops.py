"""The public fused-op API: dispatch between implementations and input validation before any kernel."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from fastalign import ops

from .test_ensemble_mlp import make_ensemble
from .test_linear_logprobs import make_inputs
from .test_sequence_loss import make_batch, pair_loss_of_sums


def test_auto_picks_the_torch_path_on_the_cpu_and_rejects_unknown_impl():
    x = torch.zeros(1)
    assert ops.resolve_impl("auto", x) == "torch"
    assert ops.resolve_impl("auto", x, op="ensemble") == "torch"
    assert ops.resolve_impl("reference", x) == "reference"
    with pytest.raises(ValueError, match="impl must be one of"):
        ops.resolve_impl("fast", x)


def test_auto_on_cuda_is_each_ops_measured_choice(monkeypatch):
    """LM-head ops: the torch path (5-6x faster than the Triton kernels on an H200); the ensemble: Triton."""
    monkeypatch.setattr(ops, "_triton_available", lambda: True)
    on_cuda = SimpleNamespace(is_cuda=True)  # resolve_impl reads only the device flag
    assert ops.resolve_impl("auto", on_cuda, None) == "torch"
    assert ops.resolve_impl("auto", on_cuda, op="ensemble") == "triton"
    monkeypatch.setattr(ops, "_triton_available", lambda: False)
    assert ops.resolve_impl("auto", on_cuda, op="ensemble") == "torch"


def test_linear_logprobs_keeps_leading_shape_and_impls_agree():
    hidden, weight, bias, targets = make_inputs(12, 16, 37, ignore=(3,))
    hidden, targets = hidden.detach().view(3, 4, 16), targets.view(3, 4)
    cpu, cpu_ent = ops.linear_logprobs(hidden, weight, targets, bias, 0.5, return_entropy=True)
    ref, ref_ent = ops.linear_logprobs(hidden, weight, targets, bias, 0.5, impl="reference", return_entropy=True)
    assert cpu.shape == targets.shape and cpu_ent.shape == targets.shape
    torch.testing.assert_close(cpu, ref)
    torch.testing.assert_close(cpu_ent, ref_ent, atol=1e-4, rtol=1e-4)


def test_sequence_loss_impls_agree():
    hidden, weight, bias, targets, seq_index, lengths, ref_c, ref_r = make_batch(seed=7)
    loss_fn = pair_loss_of_sums("cdpo", lengths, ref_c, ref_r)
    cpu, sums = ops.sequence_loss(hidden, weight, targets, seq_index, 6, loss_fn, bias=bias)
    ref, ref_sums = ops.sequence_loss(hidden, weight, targets, seq_index, 6, loss_fn, bias=bias, impl="reference")
    torch.testing.assert_close(cpu, ref)
    torch.testing.assert_close(sums, ref_sums)


def test_ensemble_mlp_impls_agree():
    tensors = make_ensemble(3, 5, 4, 6)
    torch.testing.assert_close(ops.ensemble_mlp(*tensors), ops.ensemble_mlp(*tensors, impl="reference"))


@pytest.mark.parametrize("mutate, error, match", [
    (lambda a: a.update(weight=a["weight"][:, :-1]), ValueError, r"weight must be \[vocab, 16\]"),
    (lambda a: a.update(weight=a["weight"].double()), TypeError, "float32 or bfloat16"),
    (lambda a: a.update(weight=a["weight"].bfloat16()), TypeError, "use one dtype"),
    (lambda a: a.update(bias=a["bias"][:-1]), ValueError, r"bias must be \[37\]"),
    (lambda a: a.update(targets=a["targets"][:-1]), ValueError, "targets has shape"),
    (lambda a: a.update(targets=a["targets"].float()), TypeError, "int64/int32"),
    (lambda a: a["targets"].__setitem__(3, 37), ValueError, r"outside \[0, 37\)"),
    (lambda a: a["targets"].__setitem__(3, -5), ValueError, r"outside \[0, 37\)"),
    (lambda a: a.update(temperature=0.0), ValueError, "temperature"),
    (lambda a: a.update(bias=a["bias"].to("meta")), ValueError, "one device"),
    (lambda a: a.update(impl="gpu"), ValueError, "impl must be one of"),
])
def test_linear_logprobs_rejects_bad_input(mutate, error, match):
    hidden, weight, bias, targets = make_inputs(8, 16, 37)
    args = dict(hidden=hidden, weight=weight, targets=targets.clone(), bias=bias, temperature=1.0, impl="torch")
    mutate(args)
    with pytest.raises(error, match=match):
        ops.linear_logprobs(**args)


def test_sequence_loss_rejects_bad_input():
    hidden, weight, bias, targets, seq_index, lengths, ref_c, ref_r = make_batch()
    loss_fn = pair_loss_of_sums("dpo", lengths, ref_c, ref_r)
    with pytest.raises(ValueError, match="only the positions that predict response tokens"):
        ops.sequence_loss(hidden, weight, torch.where(targets == targets[0], -100, targets), seq_index, 6, loss_fn)
    with pytest.raises(ValueError, match=r"seq_index holds ids outside \[0, 5\)"):
        ops.sequence_loss(hidden, weight, targets, seq_index, 5, loss_fn)
    with pytest.raises(ValueError, match="seq_index must be an int64 tensor"):
        ops.sequence_loss(hidden, weight, targets, seq_index.int(), 6, loss_fn)
    with pytest.raises(ValueError, match=r"hidden must be \[positions, hidden\]"):
        ops.sequence_loss(hidden[None], weight, targets[None], seq_index[None], 6, loss_fn)
    with pytest.raises(TypeError, match="loss_of_sums must be a function"):
        ops.sequence_loss(hidden, weight, targets, seq_index, 6, 1.0)

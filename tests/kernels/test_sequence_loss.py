"""The learner's hidden-states-to-loss path (fastalign.kernels.sequence_loss): the torch path and the Triton
composition against the definition (full logits, log_softmax, gather, sums, the loss), in value and in the
gradients of hidden, weight and bias, for losses of every kind (per pair, batch-coupled, stateful)."""
from __future__ import annotations

import pytest
import torch

from fastalign.kernels import sequence_loss as sl
from fastalign.losses import LOSSES, LossParams, SequenceLogps, make_pair_loss

PARAMS = LossParams(beta=0.5, label_smoothing=0.1)


def make_batch(pairs: int = 3, h: int = 16, v: int = 37, dtype=torch.float32, seed: int = 0, empty: bool = True):
    """Positions of 2·pairs sequences (chosen first) of 1–5 response tokens; optionally one empty response."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 6, (2 * pairs,), generator=g)
    if empty:
        lengths[1] = 0
    seq_index = torch.repeat_interleave(torch.arange(2 * pairs), lengths)
    n = int(lengths.sum())
    hidden = torch.randn(n, h, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(v, h, generator=g) / h ** 0.5 * 2).to(dtype).requires_grad_()
    bias = torch.randn(v, generator=g).to(dtype).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    ref = torch.randn(2, pairs, generator=g) * 2 - 10
    return hidden, weight, bias, targets, seq_index, lengths.float(), ref[0], ref[1]


def pair_loss_of_sums(name: str, lengths, ref_c, ref_r, calls: list | None = None):
    """loss_of_sums for a loss of the family on the batch's pairs (mean over pairs)."""
    fn = make_pair_loss(name, PARAMS if LOSSES[name].smoothing != "unused" else LossParams(beta=0.5))
    b = ref_c.shape[0]

    def loss_of_sums(sums):
        if calls is not None:
            calls.append(1)
        s = SequenceLogps(sums[:b], sums[b:], ref_c, ref_r, lengths[:b], lengths[b:])
        return fn(s).mean()
    return loss_of_sums


def definition(hidden, weight, bias, targets, seq_index, n_seq, loss_of_sums, temperature=1.0):
    logps = torch.log_softmax((hidden.float() @ weight.float().T + bias.float()) / temperature, -1)
    token = logps.gather(1, targets[:, None]).squeeze(1)
    sums = torch.zeros(n_seq).index_add(0, seq_index, token)
    return loss_of_sums(sums), sums.detach()


def grads_of(loss, tensors):
    for t in tensors:
        t.grad = None
    loss.backward()
    return [t.grad.clone() for t in tensors]


def compare(fn, name: str = "dpo", temperature: float = 0.9, atol=1e-5, rtol=1e-4, **batch_kw):
    hidden, weight, bias, targets, seq_index, lengths, ref_c, ref_r = make_batch(**batch_kw)
    n_seq, leaves = lengths.shape[0], (hidden, weight, bias)
    want, want_sums = definition(hidden, weight, bias, targets, seq_index, n_seq,
                                 pair_loss_of_sums(name, lengths, ref_c, ref_r), temperature)
    want_g = grads_of(want, leaves)
    calls = []
    got, got_sums = fn(hidden, weight, bias, targets, seq_index, n_seq,
                       pair_loss_of_sums(name, lengths, ref_c, ref_r, calls), temperature)
    assert len(calls) == 1  # the loss (with its draws or state) is evaluated once per forward
    torch.testing.assert_close(got_sums, want_sums, atol=atol, rtol=rtol)
    torch.testing.assert_close(got.detach(), want.detach(), atol=atol, rtol=rtol)
    for a, b in zip(grads_of(got, leaves), want_g):
        torch.testing.assert_close(a.float(), b.float(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("name", list(LOSSES))
def test_cpu_path_equals_the_definition_for_every_loss(name):
    compare(sl.sequence_loss_torch, name)


@pytest.mark.parametrize("keep", [0, 37 * 4, sl.KEEP_ELEMENTS])
def test_recomputed_partly_kept_and_kept_logits_agree(keep):
    """keep 0: every chunk recomputed (four matmuls); 4 rows' worth: partly; default: all kept (three)."""
    compare(lambda *a: sl.sequence_loss_torch(*a[:7], temperature=a[7], chunk=3, keep_elements=keep), "ipo")


def test_chunks_that_split_a_sequence_and_an_upstream_gradient():
    hidden, weight, bias, targets, seq_index, lengths, ref_c, ref_r = make_batch(seed=3, empty=False)
    loss_fn = pair_loss_of_sums("simpo", lengths, ref_c, ref_r)
    want, _ = definition(hidden, weight, bias, targets, seq_index, 6, loss_fn)
    want_g = grads_of(3 * want, (hidden, weight))
    got, _ = sl.sequence_loss_torch(hidden, weight, bias, targets, seq_index, 6, loss_fn, chunk=2)
    for a, b in zip(grads_of(3 * got, (hidden, weight)), want_g):  # backward multiplies by grad_output
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_bf16_inputs_are_close_to_fp32_and_keep_their_dtype():
    hidden, weight, bias, targets, seq_index, lengths, ref_c, ref_r = make_batch(dtype=torch.bfloat16, seed=4)
    loss_fn = pair_loss_of_sums("dpo", lengths, ref_c, ref_r)
    want, _ = definition(hidden, weight, bias, targets, seq_index, 6, loss_fn)
    want_g = grads_of(want, (hidden, weight))
    got, _ = sl.sequence_loss_torch(hidden, weight, bias, targets, seq_index, 6, loss_fn)
    got_g = grads_of(got, (hidden, weight))
    assert got.dtype == torch.float32 and got_g[0].dtype == torch.bfloat16
    torch.testing.assert_close(got, want.detach(), atol=1e-3, rtol=1e-3)
    for a, b in zip(got_g, want_g):
        torch.testing.assert_close(a.float(), b.float(), atol=2e-2, rtol=2e-2)


def test_no_grad_forward_returns_the_loss():
    hidden, weight, bias, targets, seq_index, lengths, ref_c, ref_r = make_batch(seed=5)
    loss_fn = pair_loss_of_sums("slic", lengths, ref_c, ref_r)
    want, _ = definition(hidden, weight, bias, targets, seq_index, 6, loss_fn)
    with torch.no_grad():
        got, _ = sl.sequence_loss_torch(hidden, weight, bias, targets, seq_index, 6, loss_fn)
    torch.testing.assert_close(got, want.detach())


@pytest.mark.triton
@pytest.mark.parametrize("name", ["dpo", "aot"])
def test_triton_composition_equals_the_definition(name):
    from fastalign.kernels.linear_logprobs_triton import linear_logprobs_triton

    def triton_path(hidden, weight, bias, targets, seq_index, n_seq, loss_of_sums, temperature):
        return sl.sequence_loss_composed(linear_logprobs_triton, hidden, weight, bias, targets, seq_index, n_seq,
                                         loss_of_sums, temperature)
    compare(triton_path, name, pairs=2, seed=6)

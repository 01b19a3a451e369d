"""One path from hidden states to the loss: the learner and bench/kernels.py call the same function, the
kernels sit below the learner, and a learner step through the Triton kernels equals the torch path."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastalign.config import RunConfig
from fastalign.learner import logprobs
from fastalign.learner.distributed import init_distributed
from fastalign.learner.learner import PolicyLearner
from fastalign.types import PreferencePair

REPO = Path(__file__).resolve().parents[2]


def pairs(n: int = 3, vocab: int = 5000) -> list[PreferencePair]:
    g = torch.Generator().manual_seed(0)
    rand = lambda k: torch.randint(10, vocab, (k,), generator=g).tolist()  # noqa: E731
    return [PreferencePair(prompt_ids=rand(4 + i), chosen_ids=rand(2 + i), rejected_ids=rand(4 - i)) for i in range(n)]


def test_the_learner_and_the_kernel_bench_call_the_same_function(tiny_model_dir, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_kernels", REPO / "bench" / "kernels.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.LEARNER_LOSS is logprobs.loss_from_hidden
    calls = []
    original = logprobs.loss_from_hidden
    monkeypatch.setattr(logprobs, "loss_from_hidden", lambda *a, **k: calls.append(k["impl"]) or original(*a, **k))
    init_distributed()
    learner = PolicyLearner(RunConfig(model=str(tiny_model_dir), dtype="fp32", batch_size=3, micro_batch_size=3),
                            tiny_model_dir, pad_id=0)
    learner.step(pairs())
    assert calls == ["auto"]


def test_the_kernel_bench_runs_the_learners_function_and_on_cuda_also_its_triton_path():
    spec = importlib.util.spec_from_file_location("bench_kernels", REPO / "bench" / "kernels.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = dict(tokens=8, pairs=2, hidden=16, vocab=64, threads=1, repeats=1, warmup=0, device="cpu", dtype="fp32")
    losses = {m: bench.worker(dict(cfg, method=m))["loss"] for m in ("naive", "fastalign")}
    assert losses["fastalign"] == pytest.approx(losses["naive"], rel=1e-5)
    assert bench.parse_args(["--quick"]).methods == list(bench.CPU_METHODS)
    assert bench.parse_args(["--device", "cuda", "--quick"]).methods == list(bench.METHODS)


def test_the_kernels_import_nothing_above_them():
    code = ("import sys, fastalign.kernels, fastalign.kernels.sequence_loss, fastalign.kernels.linear_logprobs, "
            "fastalign.kernels.ensemble_mlp; print(sorted(m for m in sys.modules if m.startswith('fastalign') "
            "and not m.startswith('fastalign.kernels')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['fastalign']"


@pytest.fixture(scope="module")
def small_vocab_model(tmp_path_factory) -> Path:
    """A 2-layer Llama with a 300-token vocabulary: Triton's interpreter walks the vocabulary in Python."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=32, tie_word_embeddings=True,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    out = tmp_path_factory.mktemp("small-vocab")
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    return out


@pytest.mark.triton
@pytest.mark.parametrize("algorithm, loss", [("online-dpo", "dpo"), ("online-dpo", "aot"), ("sail-pr", "dpo")])
def test_a_learner_step_through_triton_equals_the_cpu_path(small_vocab_model, algorithm, loss):
    """Loss, metrics and every parameter's gradient of one micro-batch, Triton kernels (interpreted) vs CPU."""
    init_distributed()
    results = {}
    for impl in ("torch", "triton"):
        cfg = RunConfig(model=str(small_vocab_model), dtype="fp32", batch_size=3, micro_batch_size=3,
                        algorithm=algorithm, loss=loss, logprob_impl=impl,
                        sail_share=1.0 if algorithm == "sail-pr" else None).validate()
        learner = PolicyLearner(cfg, small_vocab_model, pad_id=0)
        batch = pairs(vocab=300)
        learner.fill_reference_logps(batch)
        value, metrics = learner._micro_loss(batch)
        grads = torch.autograd.grad(value, [p for p in learner.policy.parameters()])
        results[impl] = (value.detach(), metrics, grads)
    torch.testing.assert_close(results["triton"][0], results["torch"][0], rtol=1e-5, atol=1e-5)
    # (rewards/accuracy counts margins > 0, and the policy starts as the reference: margins are ±rounding)
    drop = lambda m: {k: v for k, v in m.items() if k != "rewards/accuracy"}  # noqa: E731
    assert drop(results["triton"][1]) == pytest.approx(drop(results["torch"][1]), rel=1e-4, abs=1e-5)
    for got, want in zip(results["triton"][2], results["torch"][2]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)

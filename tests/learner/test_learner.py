"""The DeepSpeed learner on a tiny model: log-probs, cached reference, a real DPO step, HF output."""
import pytest
import torch

from fastalign.config import RunConfig
from fastalign.learner.distributed import init_distributed
from fastalign.learner.learner import PolicyLearner, deepspeed_config
from fastalign.learner.logprobs import build_batch, sequence_logps
from fastalign.models import load_causal_lm
from fastalign.types import PreferencePair


def make_pairs(n: int = 4) -> list[PreferencePair]:
    g = torch.Generator().manual_seed(0)
    rand = lambda k: torch.randint(10, 5000, (k,), generator=g).tolist()  # noqa: E731
    return [PreferencePair(prompt_ids=rand(5 + i), chosen_ids=rand(3 + i), rejected_ids=rand(6 - i)) for i in range(n)]


@pytest.fixture(scope="module")
def learner(tiny_model_dir):
    init_distributed()
    cfg = RunConfig(model=str(tiny_model_dir), dtype="fp32", learning_rate=5e-3, batch_size=4, micro_batch_size=2)
    return PolicyLearner(cfg, tiny_model_dir, pad_id=0)


def test_sequence_logps_match_full_logits(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir).eval()
    prompts, responses = [[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14, 15]]
    batch = build_batch(prompts, responses, pad_id=0)
    got = sequence_logps(model, batch)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids = torch.tensor([p + r])
        logp = torch.log_softmax(model(ids).logits[0].double(), -1)
        want = sum(logp[len(p) - 1 + t, tok] for t, tok in enumerate(r))
        assert got[i].item() == pytest.approx(want.item(), abs=1e-4)


def test_fused_and_naive_paths_agree_in_value_and_gradient(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir)
    batch = build_batch([[5, 6, 7], [8, 9], [3]], [[10, 11], [12, 13, 14, 15], [16]], pad_id=0)
    results = {}
    for impl in ("naive", "torch"):
        model.zero_grad()
        logps = sequence_logps(model, batch, impl=impl)
        (logps * torch.tensor([1.0, -2.0, 0.5])).sum().backward()
        results[impl] = (logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(results["torch"][0], results["naive"][0], rtol=1e-5, atol=1e-5)
    for name, grad in results["naive"][1].items():
        torch.testing.assert_close(results["torch"][1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_build_batch_masks_only_the_response():
    batch = build_batch([[1, 2, 3]], [[4, 5]], pad_id=0)
    assert batch.targets.tolist() == [[-100, -100, 4, 5, -100]]
    assert batch.lengths.tolist() == [2]


def test_reference_logps_are_computed_once(learner):
    pairs = make_pairs()
    calls = []
    handle = learner.reference.get_decoder().register_forward_hook(lambda *a: calls.append(1))
    try:
        learner.fill_reference_logps(pairs)
        first = [(p.ref_chosen_logprob, p.ref_rejected_logprob) for p in pairs]
        n_calls = len(calls)
        learner.fill_reference_logps(pairs)
    finally:
        handle.remove()
    per_batch = 2 if learner.cfg.share_prompt else 1  # a shared prompt runs the decoder once, then the responses
    assert n_calls == 2 * per_batch and len(calls) == n_calls  # two micro-batches, then nothing
    assert all(c is not None and c < 0 for c, _ in first)


def test_dpo_steps_raise_the_margin(learner):
    pairs = make_pairs()
    history = [learner.step(pairs) for _ in range(6)]
    assert history[-1]["loss"] < history[0]["loss"] - 0.05
    assert history[-1]["rewards/margin"] > history[0]["rewards/margin"]
    assert history[-1]["rewards/accuracy"] == 1.0


def test_a_step_without_pairs_leaves_the_policy_and_the_optimizer_alone(learner):
    before = {n: p.detach().clone() for n, p in learner.policy.named_parameters()}
    steps = learner.steps
    assert learner.step([]) == {} and learner.steps == steps
    for name, param in learner.policy.named_parameters():
        assert torch.equal(param, before[name]), name


def test_the_zero_loss_of_a_rank_without_pairs_adds_nothing_to_any_gradient(learner):
    learner.engine.zero_grad()
    learner._zero_loss().backward()
    grads = [p.grad for p in learner.policy.parameters()]
    assert all(g is not None for g in grads)  # every parameter's gradient hook fired (the collective runs)
    assert all(bool((g == 0).all()) for g in grads)
    learner.engine.zero_grad()


def test_save_pretrained_round_trips(learner, tokenizer, tmp_path):
    out = learner.save_pretrained(tmp_path / "final", tokenizer)
    loaded = load_causal_lm(out)
    for name, param in learner.policy.named_parameters():
        assert torch.equal(dict(loaded.named_parameters())[name], param.detach())
    assert (out / "tokenizer.json").is_file() and not list(tmp_path.glob("final.tmp*"))


def test_deepspeed_config_from_flags_and_json(tmp_path):
    cfg = RunConfig(batch_size=8, micro_batch_size=4, zero_stage=2, dtype="bf16")
    ds = deepspeed_config(cfg, world_size=2)
    assert ds["train_batch_size"] == 16 and ds["gradient_accumulation_steps"] == 2
    assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"]["enabled"]
    path = tmp_path / "ds.json"
    path.write_text('{"zero_optimization": {"stage": 1}}')
    cfg.deepspeed_config = str(path)
    assert deepspeed_config(cfg, 1)["zero_optimization"]["stage"] == 1

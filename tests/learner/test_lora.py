"""The LoRA learner on a tiny model: the reference is the base with the adapter off (no second model, scored
once per pair), only the adapter trains, the engine gets merged tensors, checkpoints hold the adapter and
its optimizer, and the outputs are a peft adapter directory and (by flag) the merged model."""
import pytest
import torch

from fastalign.config import RunConfig
from fastalign.explore.features import PolicyHiddenFeatures
from fastalign.learner.distributed import init_distributed
from fastalign.learner.learner import PolicyLearner
from fastalign.learner.logprobs import pair_logps
from fastalign.models import load_causal_lm
from fastalign.types import PreferencePair

from .test_learner import make_pairs

TARGETS = "q_proj,v_proj,down_proj"


def lora_cfg(model_dir, **extra) -> RunConfig:
    options = dict(model=str(model_dir), dtype="fp32", learning_rate=5e-3, batch_size=4, micro_batch_size=2,
                   lora_r=4, lora_alpha=8, lora_target_modules=TARGETS)
    return RunConfig(**{**options, **extra}).validate()


@pytest.fixture(scope="module")
def trained(tiny_model_dir):
    """A LoRA learner after three DPO steps (its adapter is no longer zero)."""
    init_distributed()
    learner = PolicyLearner(lora_cfg(tiny_model_dir), tiny_model_dir, pad_id=0)
    for _ in range(3):
        learner.learn(make_pairs())
    return learner


def fresh(pairs: list[PreferencePair]) -> list[PreferencePair]:
    return [PreferencePair(p.prompt_ids, p.chosen_ids, p.rejected_ids) for p in pairs]


def test_reference_with_the_adapter_off_equals_a_separately_loaded_base_model(trained, tiny_model_dir):
    assert trained.reference is None  # no second model in memory
    pairs, base = fresh(make_pairs()), load_causal_lm(tiny_model_dir).eval()
    calls = []
    handle = trained.policy.get_decoder().register_forward_hook(lambda *a: calls.append(1))
    try:
        trained.fill_reference_logps(pairs)
        n_calls = len(calls)
        trained.fill_reference_logps(pairs)  # every pair has its reference log-probs: nothing runs
    finally:
        handle.remove()
    assert n_calls == 2 * 2 and len(calls) == n_calls  # two micro-batches of a shared prompt + responses, once
    ids = ([p.prompt_ids for p in pairs], [p.chosen_ids for p in pairs], [p.rejected_ids for p in pairs])
    with torch.no_grad():
        want = pair_logps(base, *ids, pad_id=0)
    got = torch.tensor([p.ref_chosen_logprob for p in pairs] + [p.ref_rejected_logprob for p in pairs])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    policy = trained.policy_logps(pairs)  # the adapter is on again afterwards, and it has moved the policy
    assert (policy - want).abs().max() > 1e-3


def test_only_the_adapter_trains(trained, tiny_model_dir):
    base = dict(load_causal_lm(tiny_model_dir).named_parameters())
    for name, param in trained.reference_weights():
        assert torch.equal(param, base[name]), name
    trainable = [n for n, p in trained.policy.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert sum(len(g["params"]) for g in trained.engine.optimizer.param_groups) == len(trainable)


def test_engine_weights_are_merged_adapted_tensors_under_hf_names(trained, tiny_model_dir):
    names = trained.trained_weight_names()
    assert names == {f"model.layers.{i}.{m}.weight" for i in (0, 1)
                     for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")}
    merged = dict(trained.named_weights(names))
    base = dict(trained.reference_weights(names))
    assert merged.keys() == base.keys() == names
    for name in names:
        module = trained.policy.get_base_model().get_submodule(name.removesuffix(".weight"))
        delta = module.scaling["default"] * module.lora_B["default"].weight @ module.lora_A["default"].weight
        torch.testing.assert_close(merged[name], base[name] + delta, rtol=0, atol=1e-7)
        assert (merged[name] - base[name]).abs().max() > 0
    every = dict(trained.named_weights())  # no names: the whole model, merged (what --save_merged writes)
    assert every.keys() == dict(load_causal_lm(tiny_model_dir).named_parameters()).keys()


def test_checkpoint_holds_the_adapter_and_its_optimizer_and_resumes_exactly(trained, tiny_model_dir, tmp_path):
    trained.save_state(tmp_path / "ck")
    size = sum(f.stat().st_size for f in (tmp_path / "ck").rglob("*") if f.is_file())
    adapter = sum(p.numel() * 4 for p in trained.policy.parameters() if p.requires_grad)
    assert size < 3 * adapter + 200_000  # weights + two Adam moments + DeepSpeed's bookkeeping, no base model
    other = PolicyLearner(lora_cfg(tiny_model_dir), tiny_model_dir, pad_id=0)
    other.load_state(tmp_path / "ck")
    assert other.steps == trained.steps
    pairs = make_pairs()
    a, b = trained.learn(fresh(pairs)), other.learn(fresh(pairs))
    assert a["loss"] == b["loss"]
    for (name, p), (_, q) in zip(trained.policy.named_parameters(), other.policy.named_parameters()):
        assert torch.equal(p, q), name


def test_final_adapter_and_merged_directories_load_as_the_policy(trained, tiny_model_dir, tokenizer, tmp_path):
    from peft import PeftModel

    adapter = trained.save_pretrained(tmp_path / "final", tokenizer)
    merged = trained.save_merged(tmp_path / "final_merged", tokenizer)
    assert (adapter / "adapter_config.json").is_file() and not (adapter / "config.json").exists()
    assert (adapter / "tokenizer.json").is_file() and (merged / "tokenizer.json").is_file()
    assert (adapter / "adapter_model.safetensors").stat().st_size < 100_000
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        want = trained.policy.eval()(ids).logits
        peft_model = PeftModel.from_pretrained(load_causal_lm(tiny_model_dir), str(adapter)).eval()
        torch.testing.assert_close(peft_model(ids).logits, want, rtol=0, atol=1e-5)
        torch.testing.assert_close(load_causal_lm(merged).eval()(ids).logits, want, rtol=0, atol=1e-5)


def test_policy_features_read_the_frozen_base(trained, tiny_model_dir):
    """--erm_features policy: the frozen initial policy's hidden states, here the policy with its adapter off."""
    prompts, responses = [[5, 6, 7], [8, 9]], [[10, 11], []]
    got = PolicyHiddenFeatures(trained.reference_decoder())(prompts, responses)
    want = PolicyHiddenFeatures(load_causal_lm(tiny_model_dir))(prompts, responses)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    adapted = PolicyHiddenFeatures(trained.policy.get_decoder())(prompts, responses)
    assert (adapted - want).abs().max() > 1e-4  # the adapter changes the hidden states the features must not see


def test_targets_the_model_lacks_are_refused_with_its_layer_names(tiny_model_dir):
    from fastalign.config import ConfigError

    with pytest.raises(ConfigError, match=r"do not fit this model.*named .*down_proj.*q_proj"):
        PolicyLearner(lora_cfg(tiny_model_dir, lora_target_modules="c_attn"), tiny_model_dir, pad_id=0)


def test_behaviour_reference_bpo_with_lora(tiny_model_dir):
    """BPO keeps no frozen reference: π_ref is the adapter policy that sampled the batch; a batch's updates
    move it away from h = 0."""
    cfg = lora_cfg(tiny_model_dir, algorithm="bpo")
    learner = PolicyLearner(cfg, tiny_model_dir, pad_id=0)
    assert learner.trained_weight_names() and learner.reference_decoder() is None
    with pytest.raises(RuntimeError, match="keeps no frozen reference"):
        next(learner.reference_weights())
    out = learner.learn(make_pairs())
    assert learner.steps == 4 and out["rewards/margin"] > 0


def test_the_adapter_starts_from_the_run_seed(tiny_model_dir):
    """A's initial values come from the run's own seeded stream (not torch's global RNG): every rank and every
    run with the same seed starts from the same adapter, another seed from another."""
    from fastalign.learner.lora import lora_policy

    def initial(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed + 123)  # whatever the global RNG holds
        model = lora_policy(load_causal_lm(tiny_model_dir), lora_cfg(tiny_model_dir, seed=seed))
        return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}

    a, b, c = initial(0), initial(0), initial(1)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a if ".lora_A." in n)

"""LoRA's in-place sync: only the adapted tensors go to the engine, merged (W + (α/r)·B·A), or back to the
base W for the reference; either way the engine then decodes exactly like transformers with those weights."""
from __future__ import annotations

import copy

import pytest
import torch

from fastalign.learner.lora import AdaptedWeights
from fastalign.models import load_causal_lm

from .conftest import hf_greedy

PROMPTS = [[1, 2, 3, 4], [9, 8], [100, 200, 300, 400, 500]]


def adapted_model(model_dir, targets: list[str], seed: int = 3):
    """The tiny model with a LoRA adapter whose B is random (peft starts it at zero: no change at all)."""
    from peft import LoraConfig, get_peft_model

    with torch.random.fork_rng(devices=[]):  # peft draws A from the global RNG: leave the process's alone
        torch.manual_seed(seed)
        model = get_peft_model(load_causal_lm(model_dir, "fp32"),
                               LoraConfig(r=4, lora_alpha=16, target_modules=targets, task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    return model.eval()


@pytest.mark.parametrize("targets", [["q_proj", "v_proj", "down_proj"], ["gate_proj", "o_proj"]])
def test_merged_partial_sync_equals_transformers_greedy_and_back(engine, tiny_model_dir, base_model, targets):
    model = adapted_model(tiny_model_dir, targets)
    weights = AdaptedWeights(model)
    names = engine.names_to_update(weights.trained_names())
    assert weights.trained_names() <= names
    before = [c.token_ids for c in engine.greedy(PROMPTS, 12)]
    engine.update_weights(weights.merged(names), partial=True)
    got = [c.token_ids for c in engine.greedy(PROMPTS, 12)]
    merged = copy.deepcopy(model).merge_and_unload()  # peft's own merge (in place, hence the copy)
    assert got == hf_greedy(merged, PROMPTS, 12) and got != before
    engine.update_weights(weights.base(names), partial=True)  # the reference: the adapted layers' base W
    assert [c.token_ids for c in engine.greedy(PROMPTS, 12)] == before == hf_greedy(base_model, PROMPTS, 12)


def test_vllm_completes_fused_layers_and_refuses_half_of_one(vllm_engine, tiny_model_dir):
    """vLLM fuses q/k/v into one layer: a LoRA on q and v still sends k (from the base), else the layer would
    be rebuilt with garbage for k; the engine refuses such an update before touching anything."""
    names = vllm_engine.names_to_update({"model.layers.0.self_attn.q_proj.weight"})
    assert names == {f"model.layers.0.self_attn.{m}_proj.weight" for m in "qkv"}
    assert vllm_engine.names_to_update({"model.layers.1.mlp.up_proj.weight"}) == {
        "model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.gate_proj.weight"}
    weights = AdaptedWeights(adapted_model(tiny_model_dir, ["q_proj", "v_proj"]))
    before = [c.token_ids for c in vllm_engine.greedy(PROMPTS, 6)]
    with pytest.raises(ValueError, match=r"every tensor of each layer.*missing: model\.layers\.0\.self_attn\.k_proj"):
        vllm_engine.update_weights(weights.merged(weights.trained_names()), partial=True)
    with pytest.raises(ValueError, match="missing"):  # a full update still needs every parameter
        vllm_engine.update_weights(weights.merged(weights.trained_names()))
    assert [c.token_ids for c in vllm_engine.greedy(PROMPTS, 6)] == before

"""Data parallelism for real: 2 ranks under torchrun with DeepSpeed ZeRO-2 over gloo.

After one step both ranks hold identical parameters, and they equal a single process's step on the
union of both ranks' pairs (the step's loss is the mean over every rank's pairs). A NaN gradient on one
rank before that makes both ranks skip the step and leaves no trace in the next one. A rank without any
pair (every response identical) still takes part in every collective of the step.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastalign.config import RunConfig
from fastalign.learner.distributed import _free_port, init_distributed
from fastalign.learner.learner import PolicyLearner
from fastalign.models import load_causal_lm

sys.path.insert(0, str(Path(__file__).parent))
from torchrun_step import LORA, UNEVEN, adapter_state, pairs_for  # noqa: E402


def two_ranks(tiny_model_dir, tmp_path, mode: str) -> dict[str, torch.Tensor]:
    """Run torchrun_step.py on 2 ranks; both ranks' parameters must be equal; returns rank 0's."""
    script = Path(__file__).with_name("torchrun_step.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FASTALIGN_SHM_ALLREDUCE": "0"}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None), env.pop("LOCAL_RANK", None), env.pop("MASTER_PORT", None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
                           str(script), str(tiny_model_dir), str(tmp_path), "2", mode],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert r0.keys() == r1.keys()
    for name in r0:
        assert torch.equal(r0[name], r1[name]), name
    return r0


@pytest.mark.timeout(400)
def test_a_rank_without_pairs_takes_part_in_the_step(tiny_model_dir, tmp_path):
    r0 = two_ranks(tiny_model_dir, tmp_path, "uneven")
    init_distributed()
    single = PolicyLearner(RunConfig(model=str(tiny_model_dir), zero_stage=2, **UNEVEN), tiny_model_dir, pad_id=0)
    metrics = single.learn(pairs_for(0, 3))
    # the gradient norm (before clipping) pins the scale: the mean over the 3 pairs of both ranks together
    assert r0.pop("grad_norm").item() == pytest.approx(metrics["grad_norm"], rel=1e-4)
    for name, param in single.policy.named_parameters():  # Adam's first step, up to reduction-order noise
        assert torch.allclose(param.detach(), r0[name], atol=1e-4), name


@pytest.mark.timeout(400)
def test_two_rank_zero2_step_equals_single_process(tiny_model_dir, tmp_path):
    r0 = two_ranks(tiny_model_dir, tmp_path, "nan")

    init_distributed()
    cfg = RunConfig(model=str(tiny_model_dir), dtype="fp32", learning_rate=1e-2, batch_size=4, micro_batch_size=4)
    single = PolicyLearner(cfg, tiny_model_dir, pad_id=0)
    single.step(pairs_for(0) + pairs_for(1))
    initial = dict(load_causal_lm(tiny_model_dir).named_parameters())
    for name, param in single.policy.named_parameters():
        assert torch.allclose(param.detach(), r0[name], atol=1e-5), name
    assert max((r0[n] - initial[n].detach()).abs().max().item() for n in r0) > 1e-3  # a real step was taken


@pytest.mark.timeout(400)
def test_two_rank_lora_steps_equal_one_process_on_the_union_of_pairs(tiny_model_dir, tmp_path):
    """LoRA under data parallelism: DeepSpeed averages the adapter's gradients only; two steps on 2 ranks
    (each its own pairs) equal one process taking the same steps on both ranks' pairs together."""
    r0 = two_ranks(tiny_model_dir, tmp_path, "lora")
    init_distributed()
    single = PolicyLearner(RunConfig(model=str(tiny_model_dir), zero_stage=2, **{**LORA, "batch_size": 4}),
                           tiny_model_dir, pad_id=0)
    initial = adapter_state(single)
    single.learn(pairs_for(0) + pairs_for(1))
    single.learn(pairs_for(2) + pairs_for(3))
    state = adapter_state(single)
    assert state.keys() == r0.keys() and any(".lora_B." in n for n in state)
    for name, value in state.items():
        assert torch.allclose(value, r0[name], atol=1e-5), name
    assert max((state[n] - initial[n]).abs().max().item() for n in state) > 1e-3  # real steps were taken

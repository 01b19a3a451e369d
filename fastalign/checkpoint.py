"""Checkpoints of the whole online state, written so that a kill at any instant leaves a usable one.

A checkpoint is one directory, `output_dir/checkpoints/checkpoint-<round>/`:
  learner/         the DeepSpeed checkpoint (policy, optimizer, engine counters; collective save)
  rank-<r>.pt      every other component's `state_dict()` on rank r (loop counters, prompt stream,
                   explorer incl. the epistemic reward model and its replay buffer, oracle counters and
                   label streams, process RNGs): each rank draws its own prompts and samples
  metrics.jsonl    the metrics rows written so far (restored on resume, so no row is duplicated)
  run.json         round, queries, world size and the run's config (a resume must match it)
  manifest.json    size and SHA-256 of every file above, written last
It is assembled in a hidden `.checkpoint-<round>.partial/` directory and renamed into place, so a
checkpoint directory exists only complete; the manifest also catches later damage (a truncated or
edited file), and resuming then falls back to the previous checkpoint. The newest `keep` are kept.

The frozen reference model is not saved: it is the run's starting model, reloaded from `model`.

Loading a checkpoint runs no code from it. Every `rank-<r>.pt` holds only plain values and tensors
(checked when it is written) and is read with `torch.load(weights_only=True)`. DeepSpeed reads its own
files with `weights_only=False`, so before it does, each `learner/**/*.pt` is opened with
`weights_only=True` and an allowlist of the few DeepSpeed classes those files hold (`DEEPSPEED_GLOBALS`);
a file that needs anything else is refused, so DeepSpeed's unpickling can only rebuild those.
"""
from __future__ import annotations

import collections
import hashlib
import importlib
import json
import logging
import os
import pickle
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .config import ConfigError, RunConfig

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^checkpoint-(\d+)$")
# options a resumed run may change: they end or schedule the run, they do not shape its trajectory
RESUME_MAY_CHANGE = frozenset({
    "rounds", "max_queries", "time_budget_minutes", "eval_every", "save_final", "tensorboard", "progress",
    "checkpoint_every", "keep_checkpoints", "resume", "max_nonfinite_steps", "oracle_retries",
    "oracle_timeout", "oracle_backoff", "threads", "output_dir", "dry_run",
    "judge_url", "reward_url", "oracle_concurrency", "oracle_api_key_env"})  # where a served oracle is reached


# The classes DeepSpeed 0.19 pickles into its checkpoint files (loss scalers, the ZeRO stage, fragment
# addresses of ZeRO-1/2 optimizer states); nothing else is let through when they are loaded.
DEEPSPEED_GLOBALS = ("deepspeed.runtime.fp16.loss_scaler.LossScaler",
                     "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
                     "deepspeed.runtime.zero.config.ZeroStageEnum",
                     "deepspeed.utils.tensor_fragment.fragment_address")
_PLAIN = (str, int, float, bool, type(None))  # exact types: np.float64 subclasses float yet is pickled as numpy


class CheckpointError(Exception):
    """No usable checkpoint where one was asked for, or one that does not fit this run."""


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class ProcessRng:
    """The process-wide RNGs (python, numpy, torch): anything a component draws without its own seed.
    numpy's Mersenne Twister key is kept as a list of ints, so the state loads with weights_only=True."""

    def state_dict(self) -> dict[str, Any]:
        numpy_state = np.random.get_state(legacy=False)
        numpy_state["state"] = {"key": numpy_state["state"]["key"].tolist(), "pos": int(numpy_state["state"]["pos"])}
        return {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        random.setstate(state["python"])
        numpy_state = dict(state["numpy"])
        numpy_state["state"] = {"key": np.asarray(numpy_state["state"]["key"], dtype=np.uint32),
                                "pos": int(numpy_state["state"]["pos"])}
        np.random.set_state(numpy_state)
        torch.set_rng_state(state["torch"])


def check_plain(value: Any, where: str) -> None:
    """Refuse a state that `torch.load(weights_only=True)` could not read back (e.g. a numpy array):
    found when the checkpoint is written, not when a resume needs it."""
    if type(value) in (dict, collections.OrderedDict):
        for key, item in value.items():
            if type(key) not in (str, int):
                raise CheckpointError(f"{where}: key {key!r} is a {type(key).__name__}; state keys must be str or int")
            check_plain(item, f"{where}/{key}")
    elif type(value) in (list, tuple):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
    elif type(value) not in _PLAIN and not isinstance(value, torch.Tensor):
        raise CheckpointError(f"{where} is a {type(value).__module__}.{type(value).__qualname__}: checkpoint state "
                              "must be plain Python values and tensors (it is loaded with weights_only=True); "
                              "convert it in the component's state_dict()")


def load_trusted(path: Path, allow: tuple[str, ...] = ()) -> Any:
    """torch.load with weights_only=True (plus the `allow`ed classes): a file that needs any other Python
    object is refused, since unpickling it could run code."""
    classes = [getattr(importlib.import_module(name.rpartition(".")[0]), name.rpartition(".")[2]) for name in allow]
    try:
        with torch.serialization.safe_globals(classes):
            return torch.load(path, weights_only=True, map_location="cpu", mmap=bool(allow))
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, ValueError, EOFError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} holds more than plain values and tensors ({reason[:300]}): it was not "
                              "written by fastalign or was tampered with, and is not loaded (unpickling it could "
                              "run code); resume from a checkpoint you trust") from None


# ------------------------------------------------------------------------------------ finding / checking


@dataclass
class Found:
    path: Path
    round: int
    rejected: list[tuple[Path, str]]  # newer checkpoints that failed verification, and why


def checkpoint_dirs(root: Path) -> list[tuple[int, Path]]:
    """(round, path) of every complete-named checkpoint under root, newest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return sorted(found, reverse=True)


def verify(path: Path) -> str | None:
    """None if every file listed in the manifest is there with its size and checksum, else why not."""
    manifest = path / "manifest.json"
    try:
        files = json.loads(manifest.read_text())["files"]
    except FileNotFoundError:
        return "no manifest.json (an incomplete checkpoint)"
    except (ValueError, KeyError, TypeError) as exc:
        return f"unreadable manifest.json ({exc})"
    for rel, (size, digest) in files.items():
        f = path / rel
        if not f.is_file():
            return f"{rel} is missing"
        if f.stat().st_size != size:
            return f"{rel} has {f.stat().st_size} bytes, the manifest says {size}"
        if _sha256(f, sync=False) != digest:
            return f"{rel} does not match its checksum"
    return None


def find_checkpoint(resume: str, output_dir: str | Path) -> Found | None:
    """The checkpoint `--resume` names: "auto" = output_dir's newest valid one (None if there is none
    yet: a fresh start); a checkpoint directory; or a directory of checkpoints (its newest valid one)."""
    if resume == "auto":
        root = Path(output_dir) / CHECKPOINTS
    else:
        root = Path(resume)
        if _NAME.match(root.name) or (root / "manifest.json").exists():
            problem = verify(root)
            if problem:
                raise CheckpointError(f"checkpoint {root} is unusable: {problem}; resume from another one "
                                      f"(or its parent directory to take the newest valid one)")
            return Found(root, _round_of(root), [])
    candidates = checkpoint_dirs(root)
    if not candidates:
        if resume == "auto":
            return None
        raise CheckpointError(f"--resume {resume}: no checkpoint-<round> directories in it")
    rejected = []
    for rnd, path in candidates:
        problem = verify(path)
        if problem is None:
            for bad, why in rejected:
                log.warning("checkpoint %s is unusable (%s): using %s instead", bad, why, path)
            return Found(path, rnd, rejected)
        rejected.append((path, problem))
    details = "; ".join(f"{p.name}: {why}" for p, why in rejected)
    raise CheckpointError(f"no usable checkpoint in {root} ({details}); start afresh without --resume "
                          f"or point --resume at an intact checkpoint")


def _round_of(path: Path) -> int:
    return int(json.loads((path / "run.json").read_text())["round"])


def check_compatible(path: Path, cfg: RunConfig, world_size: int | None = None) -> dict:
    """Refuse to resume with options that would change the run's trajectory; returns run.json."""
    meta = json.loads((path / "run.json").read_text())
    saved, current = meta["config"], _comparable(cfg.to_dict())
    saved = _comparable(saved)
    diffs = [f"{k}: {saved.get(k)!r} → {current.get(k)!r}" for k in sorted(set(saved) | set(current))
             if k not in RESUME_MAY_CHANGE and saved.get(k) != current.get(k)]
    if diffs:
        raise ConfigError(f"cannot resume from {path} with a different config ({'; '.join(diffs)}); only "
                          f"{', '.join(sorted(RESUME_MAY_CHANGE - {'resume'}))} may change on resume; to start "
                          "another run with these options, give a new --output_dir")
    if world_size is not None and meta["world_size"] != world_size:
        raise ConfigError(f"cannot resume from {path}: it was written by {meta['world_size']} rank(s), this run "
                          f"has {world_size}; launch with --nproc_per_node={meta['world_size']}")
    return meta


def _comparable(config: dict) -> dict:
    from .models import resolve_dtype

    out = dict(config)
    for key in ("dtype", "engine_dtype"):
        if out.get(key) is not None:
            out[key] = resolve_dtype(out[key])
    return out


# ------------------------------------------------------------------------------------------- writing


def _sha256(path: Path, sync: bool) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
        if sync:
            os.fsync(f.fileno())
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Checkpointer:
    """Saves and restores the learner plus named components; call `save` on every rank (collective)."""

    def __init__(self, cfg: RunConfig, learner, components: dict[str, Stateful], *, rank: int = 0,
                 world_size: int = 1, metrics_path: Path | None = None):
        self.cfg, self.learner, self.components = cfg, learner, components
        self.rank, self.world_size = rank, world_size
        self.root = Path(cfg.output_dir) / CHECKPOINTS
        self.metrics_path = metrics_path
        self.last_saved: Path | None = None

    def states(self) -> dict[str, Any]:
        return {name: c.state_dict() for name, c in self.components.items()}

    def save(self, round_: int, queries: int, states: dict[str, Any] | None = None) -> Path:
        """Write checkpoint-<round_>; `states` replaces the components' current states (a fault rolls
        back to the start of the failed round, where the learner still is)."""
        final = self.root / f"checkpoint-{round_:06d}"
        tmp = self.root / f".checkpoint-{round_:06d}.partial"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        self.learner.save_state(tmp / "learner")
        rank_file = tmp / f"rank-{self.rank}.pt"
        states = states if states is not None else self.states()
        check_plain(states, "state")
        torch.save(states, rank_file)
        _barrier()
        if self.rank == 0:
            if self.metrics_path is not None and self.metrics_path.exists():
                shutil.copyfile(self.metrics_path, tmp / "metrics.jsonl")
            meta = {"round": round_, "queries": queries, "world_size": self.world_size,
                    "config": self.cfg.to_dict()}
            (tmp / "run.json").write_text(json.dumps(meta, indent=2) + "\n")
            files = {str(f.relative_to(tmp)): [f.stat().st_size, _sha256(f, sync=True)]
                     for f in sorted(tmp.rglob("*")) if f.is_file()}
            with (tmp / "manifest.json").open("w") as f:
                json.dump({"round": round_, "files": files}, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            for d in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
                _fsync_dir(d)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(self.root)
            self._prune()
        _barrier()
        self.last_saved = final
        return final

    def _prune(self) -> None:
        for _, path in checkpoint_dirs(self.root)[self.cfg.keep_checkpoints:]:
            shutil.rmtree(path, ignore_errors=True)
        for stale in self.root.glob(".checkpoint-*.partial"):  # left by a run killed while saving
            shutil.rmtree(stale, ignore_errors=True)

    def restore(self, path: Path) -> dict:
        """Load the learner and every component from `path`; returns run.json."""
        meta = json.loads((path / "run.json").read_text())
        rank_file = path / f"rank-{self.rank}.pt"
        if not rank_file.is_file():
            raise CheckpointError(f"{path} has no state for rank {self.rank} (written by {meta['world_size']} ranks)")
        states = load_trusted(rank_file)
        if not isinstance(states, dict):
            raise CheckpointError(f"{rank_file} holds a {type(states).__name__}, not fastalign's component states")
        missing = sorted(set(self.components) - set(states))
        if missing:
            raise CheckpointError(f"{path} lacks the state of {', '.join(missing)}: it was written by a run with "
                                  "other components (e.g. another --explore)")
        for learner_file in sorted((path / "learner").rglob("*.pt")):  # DeepSpeed unpickles them fully
            load_trusted(learner_file, allow=DEEPSPEED_GLOBALS)
        self.learner.load_state(path / "learner")
        for name, component in self.components.items():
            try:
                component.load_state_dict(states[name])
            except (KeyError, ValueError) as exc:
                raise CheckpointError(f"{path}: cannot restore {name}: {exc}") from exc
        self.last_saved = path
        return meta


def restore_metrics(checkpoint: Path, metrics_path: Path) -> None:
    """Put back the metrics rows as they were at the checkpoint (rows of re-run rounds would repeat)."""
    saved = checkpoint / "metrics.jsonl"
    if saved.is_file():
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(saved, metrics_path)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()

"""Resuming runs no code from a checkpoint: fastalign's states load with weights_only=True, DeepSpeed's files are
opened the same way (with an allowlist) before DeepSpeed unpickles them, and a planted payload is refused."""
from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from fastalign.checkpoint import CheckpointError, Checkpointer, ProcessRng, check_plain, load_trusted
from fastalign.config import RunConfig

TESTS = Path(__file__).parent


class Payload:
    """Unpickling this creates the directory `marker`: what a malicious checkpoint would do, harmlessly."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


class Counter:
    def __init__(self, value=0):
        self.value = value

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = int(state["value"])


class StubLearner:
    """Writes one tensor file where DeepSpeed writes its own; records whether it was asked to load."""

    loaded = False

    def save_state(self, directory: Path) -> None:
        Path(directory, "learner").mkdir(parents=True)
        torch.save({"module": {"w": torch.ones(2)}}, Path(directory, "learner", "mp_rank_00_model_states.pt"))

    def load_state(self, directory: Path) -> None:
        self.loaded = True


def replant(checkpoint: Path, rel: str, obj) -> None:
    """Replace one file and re-sign the manifest, as someone handing over a checkpoint could."""
    torch.save(obj, checkpoint / rel)
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    data = (checkpoint / rel).read_bytes()
    manifest["files"][rel] = [len(data), hashlib.sha256(data).hexdigest()]
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))


def saved(tmp_path) -> tuple[Checkpointer, Path]:
    cfg = RunConfig(output_dir=str(tmp_path / "run"))
    cp = Checkpointer(cfg, StubLearner(), {"counter": Counter(7), "rng": ProcessRng()})
    return cp, cp.save(1, 0)


def test_process_rng_state_is_plain_and_resumes_every_stream(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # a cached gaussian is part of numpy's state
    state = ProcessRng().state_dict()
    check_plain(state, "rng")
    torch.save(state, tmp_path / "rng.pt")
    want = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    ProcessRng().load_state_dict(load_trusted(tmp_path / "rng.pt"))
    assert (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist()) == want


def test_a_state_that_would_need_unpickling_is_refused_when_written(tmp_path):
    cfg = RunConfig(output_dir=str(tmp_path / "run"))
    cp = Checkpointer(cfg, StubLearner(), {"loop": Counter(np.float64(0.5))})
    with pytest.raises(CheckpointError, match=r"state/loop/value is a numpy.float64: checkpoint state must be plain"):
        cp.save(1, 0)


def test_a_clean_checkpoint_restores(tmp_path):
    cp, path = saved(tmp_path)
    cp.components["counter"].value = 0
    cp.restore(path)
    assert cp.components["counter"].value == 7 and cp.learner.loaded


def test_a_planted_payload_in_a_rank_state_file_is_refused_without_running(tmp_path):
    cp, path = saved(tmp_path)
    marker = tmp_path / "pwned"
    replant(path, "rank-0.pt", {"counter": Payload(marker), "rng": {}})
    with pytest.raises(CheckpointError, match=r"rank-0.pt holds more than plain values and tensors .*not written by "
                                              r"fastalign or was tampered with"):
        cp.restore(path)
    assert not marker.exists() and not cp.learner.loaded


def test_a_planted_payload_in_a_deepspeed_file_is_refused_before_deepspeed_loads_it(tmp_path):
    cp, path = saved(tmp_path)
    marker = tmp_path / "pwned"
    replant(path, "learner/mp_rank_00_model_states.pt", {"module": {}, "extra": Payload(marker)})
    with pytest.raises(CheckpointError, match=r"mp_rank_00_model_states.pt holds more than plain values"):
        cp.restore(path)
    assert not marker.exists() and not cp.learner.loaded


@pytest.mark.timeout(300)
def test_resume_refuses_a_planted_payload_with_a_clear_message(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """End to end through `fastalign train`: a real ZeRO-2 run (DeepSpeed's own files pass the allowlist on
    resume), then the same run resumed from a checkpoint whose rank state was replaced."""
    from fastalign.train import main

    monkeypatch.syspath_prepend(str(TESTS))
    out = tmp_path / "run"
    argv = ["--model", str(tiny_model_dir), "--output_dir", str(out), "--oracle", "callable",
            "--oracle_path", "loop_rewards:letter_e_share", "--engine", "hf", "--dtype", "fp32", "--engine_dtype",
            "fp32", "--logprob_impl", "naive", "--batch_size", "2", "--micro_batch_size", "2", "--max_new_tokens",
            "6", "--eval_every", "2", "--num_eval_prompts", "2", "--checkpoint_every", "1", "--threads", "2",
            "--progress", "false", "--tensorboard", "false", "--zero_stage", "2"]
    assert main(argv + ["--rounds", "1"]) == 0
    assert main(argv + ["--rounds", "2", "--resume", "auto"]) == 0  # DeepSpeed's real files pass the allowlist
    newest = out / "checkpoints" / "checkpoint-000002"
    marker = tmp_path / "pwned"
    replant(newest, "rank-0.pt", {"loop": Payload(marker)})
    capsys.readouterr()
    assert main(argv + ["--rounds", "3", "--resume", "auto"]) == 2
    err = capsys.readouterr().err
    assert "rank-0.pt holds more than plain values and tensors" in err and "tampered with" in err
    assert not marker.exists()

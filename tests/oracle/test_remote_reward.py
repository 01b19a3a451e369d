"""The remote reward oracle (OpenRLHF's remote reward JSON) against a small local HTTP server: the request
shape, an online run through it, and its failures (server down, slow, 500 then success, malformed replies)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_service import FakeService, reward_reply  # noqa: E402

from fastalign.config import ConfigError, RunConfig  # noqa: E402
from fastalign.oracle import RemoteRewardOracle  # noqa: E402
from fastalign.oracle.durable import DurableOracle, OracleFailure  # noqa: E402
from fastalign.oracle.remote_reward import chat_prompt_renderer  # noqa: E402

PROMPTS, A, B = ["p1", "p2"], ["eeee", "xyz"], ["abc", "see me"]


@pytest.fixture
def serve():
    started = []

    def start(reply=reward_reply, **kwargs) -> FakeService:
        started.append(FakeService(reply, **kwargs))
        return started[-1]

    yield start
    for service in started:
        service.stop()


def durable(tmp_path, service, retries=1, timeout=None) -> DurableOracle:
    inner = RemoteRewardOracle(service.url + "/get_reward", timeout=timeout, preference="bt", seed=1)
    return DurableOracle(inner, tmp_path / "log.jsonl", retries=retries, backoff=0.0, timeout=timeout)


def test_one_post_per_batch_in_openrlhfs_shape(serve, tokenizer):
    service = serve()
    render = chat_prompt_renderer(tokenizer)
    oracle = RemoteRewardOracle(service.url + "/get_reward", render_prompt=render)
    pref = oracle.compare(PROMPTS, A, B)
    (body,) = service.posts("/get_reward")
    rendered = [render(p) for p in PROMPTS]
    assert rendered[0].startswith("<|im_start|>") and rendered[0].endswith("<|im_start|>assistant\n")
    assert body == {"query": [p + r for p, r in zip(rendered * 2, A + B)], "prompts": rendered * 2,
                    "labels": [""] * 4}
    np.testing.assert_allclose(pref.scores_a, [1.0, 0.0])
    np.testing.assert_allclose(pref.scores_b, [0.0, 0.5])
    assert list(pref.a_wins) == [True, False]


def test_server_down_names_the_url(serve, tmp_path):
    service = serve()
    service.stop()
    with pytest.raises(OracleFailure, match=rf"failed 2 time\(s\).*{service.url}/get_reward is not reachable"):
        durable(tmp_path, service).compare(PROMPTS, A, B)


def test_slow_server_times_out(serve, tmp_path):
    service = serve(faults=["slow"] * 3, slow_seconds=2.0)
    started = time.perf_counter()
    with pytest.raises(OracleFailure, match=r"failed 1 time\(s\).*within (oracle_timeout=)?0.3s"):
        durable(tmp_path, service, retries=0, timeout=0.3).compare(PROMPTS, A, B)
    assert time.perf_counter() - started < 1.5


def test_500_then_success(serve, tmp_path):
    service = serve(faults=["500", "503"])
    oracle = durable(tmp_path, service, retries=2)
    assert oracle.compare(PROMPTS, A, B).prob_a.shape == (2,)
    assert len(service.posts()) == 3 and oracle.paid_queries == 2


@pytest.mark.parametrize("reply, message", [
    (None, r"replied with something that is not JSON"),
    (lambda path, body: {"scores": [1.0]}, r"must reply \{\"rewards\": \[one number per query\]\} for 4 queries; "
                                           r"got \{'scores': \[1.0\]\}"),
    (lambda path, body: {"rewards": [1.0, 2.0]}, r"for 4 queries; got 2 rewards"),
    (lambda path, body: {"rewards": ["high", 1, 2, 3]}, r"rewards must be numbers"),
])
def test_malformed_replies_are_retried_then_reported(serve, tmp_path, reply, message):
    service = serve(reply or reward_reply, faults=["garbage"] * 2 if reply is None else [])
    with pytest.raises(OracleFailure, match=rf"failed 2 time\(s\).*{message}"):
        durable(tmp_path, service).compare(PROMPTS, A, B)
    assert not (tmp_path / "log.jsonl").read_text()


def test_config_refuses_missing_or_misplaced_urls():
    with pytest.raises(ConfigError, match="--oracle remote-reward needs --reward_url"):
        RunConfig(oracle="remote-reward").validate()
    with pytest.raises(ConfigError, match="--reward_url applies to --oracle remote-reward"):
        RunConfig(reward_url="http://127.0.0.1:1/r").validate()
    with pytest.raises(ConfigError, match="is not an http:// or https:// URL"):
        RunConfig(oracle="remote-reward", reward_url="file:///etc/passwd").validate()


@pytest.mark.timeout(300)
def test_an_online_run_scores_every_pair_through_the_server(serve, tiny_model_dir, tmp_path):
    from fastalign.train import run

    service = serve()
    rounds, batch, evals = 2, 2, 2
    out = tmp_path / "run"
    summary = run(RunConfig(model=str(tiny_model_dir), output_dir=str(out), oracle="remote-reward",
                            reward_url=service.url + "/get_reward", engine="hf", dtype="fp32", engine_dtype="fp32",
                            logprob_impl="naive", batch_size=batch, micro_batch_size=batch, max_new_tokens=6,
                            rounds=rounds, eval_every=rounds, num_eval_prompts=evals, threads=2, progress=False,
                            tensorboard=False, seed=3))
    assert summary["queries"] == summary["oracle_paid_queries"] == rounds * batch
    log_rows = [json.loads(line) for line in (out / "oracle_log-rank0.jsonl").read_text().splitlines()]
    assert len(log_rows) == summary["oracle_paid_queries"] + summary["oracle_paid_eval_queries"]
    assert all("sa" in r and "sb" in r for r in log_rows)  # the server's rewards are kept as scores
    posts = service.posts("/get_reward")
    # one per round and one per evaluation (rounds 0 and 2), unless an evaluation's pairs are all in the log
    assert rounds + 1 <= len(posts) <= rounds + 2
    assert sum(len(p["query"]) for p in posts) == 2 * len(log_rows)
    assert all(q.startswith(p) for body in posts for q, p in zip(body["query"], body["prompts"]))

"""The served judge against a local fake OpenAI-compatible server: the question it asks, how it reads the
answer's log-probabilities, its fallback, concurrency, and every failure a user meets."""
from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_service import FakeService, fake_p_first, judge_reply, responses_in  # noqa: E402

from fastalign.config import ConfigError  # noqa: E402
from fastalign.oracle import HttpJudgeOracle  # noqa: E402
from fastalign.oracle.durable import DurableOracle, OracleFailure  # noqa: E402
from fastalign.oracle.pairwise import DEFAULT_INSTRUCTION, pair_question  # noqa: E402

PROMPTS = ["What is 2+2?", "Name a colour.", "Say hi."]
A = ["4", "Blue, the colour of the sky.", "hi"]
B = ["It is five, I think.", "Red", "hello there"]


@pytest.fixture
def serve():
    """Start fake services; every one is stopped when the test ends."""
    started = []

    def start(reply, **kwargs) -> FakeService:
        started.append(FakeService(reply, **kwargs))
        return started[-1]

    yield start
    for service in started:
        service.stop()


def judge(service: FakeService, **kwargs) -> HttpJudgeOracle:
    kwargs.setdefault("model", "judge-model")
    return HttpJudgeOracle(service.url + "/v1", **kwargs)


def durable(tmp_path, oracle, **kwargs) -> DurableOracle:
    return DurableOracle(oracle, tmp_path / "log.jsonl", backoff=0.0, **kwargs)


def expected_prob_a(prompts, a, b) -> np.ndarray:
    """P(a ≻ b) from the fake's P(A) (renormalised over the letters: the 0.1 on 'The' drops out)."""
    return np.array([0.5 + 0.5 * (fake_p_first(x, y) - fake_p_first(y, x)) for x, y in zip(a, b)])


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_asks_the_local_judges_question_in_both_orders_and_reads_the_letters(serve, endpoint):
    service = serve(judge_reply())
    oracle = judge(service, endpoint=endpoint)
    pref = oracle.compare(PROMPTS, A, B)
    np.testing.assert_allclose(pref.prob_a, expected_prob_a(PROMPTS, A, B), rtol=0, atol=1e-12)
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    bodies = service.posts(path)
    assert len(bodies) == 2 * len(PROMPTS) and oracle.requests == 6
    asked = {(b["messages"][0]["content"] if endpoint == "chat" else b["prompt"]) for b in bodies}
    questions = {pair_question(DEFAULT_INSTRUCTION, p, x, y) for p, a, b in zip(PROMPTS, A, B)
                 for x, y in ((a, b), (b, a))}
    assert asked == (questions if endpoint == "chat" else {q + "\nAnswer:" for q in questions})
    body = bodies[0]
    assert body["model"] == "judge-model" and body["max_tokens"] == 1 and body["temperature"] == 0
    if endpoint == "chat":
        assert body["logprobs"] is True and body["top_logprobs"] == 20
    else:
        assert body["logprobs"] == 20


def test_probabilities_are_symmetric_and_identical_responses_tie_with_one_request(serve):
    service = serve(judge_reply())
    oracle = judge(service)
    forward, backward = oracle.compare(PROMPTS, A, B).prob_a, oracle.compare(PROMPTS, B, A).prob_a
    np.testing.assert_allclose(forward + backward, 1.0, atol=1e-12)
    before = len(service.posts())
    assert np.all(oracle.compare(PROMPTS[:1], A[:1], A[:1]).prob_a == 0.5)
    assert len(service.posts()) - before == 1  # (a, a) is one question in both orders


def test_the_instruction_reaches_the_server(serve):
    service = serve(judge_reply())
    judge(service, instruction="Prefer the shorter answer.").compare(PROMPTS[:1], A[:1], B[:1])
    assert all(b["messages"][0]["content"].startswith("Prefer the shorter answer.\n\n") for b in service.posts())


def test_requests_go_out_concurrently_up_to_the_bound(serve):
    service = serve(judge_reply(), delay=0.3)
    oracle = judge(service, concurrency=4)
    started = time.perf_counter()
    oracle.compare(PROMPTS + ["p4"], A + ["x"], B + ["yy"])  # 8 questions
    assert service.peak_in_flight == 4
    assert time.perf_counter() - started < 8 * 0.3 * 0.75


def test_no_logprobs_falls_back_to_the_answer_letter_with_one_warning(serve, caplog):
    service = serve(judge_reply(logprobs=False))
    oracle = judge(service)
    with caplog.at_level(logging.WARNING):
        pref = oracle.compare(PROMPTS, A, B)
    letter = {(x, y): 1.0 if fake_p_first(x, y) >= 0.5 else 0.0 for x, y in zip(A + B, B + A)}
    want = [0.5 + 0.5 * (letter[(x, y)] - letter[(y, x)]) for x, y in zip(A, B)]
    np.testing.assert_array_equal(pref.prob_a, want)
    warnings = [r for r in caplog.records if "returned no log-probabilities" in r.getMessage()]
    assert len(warnings) == 1 and oracle.fallback_answers == 6


def test_a_letter_missing_from_the_top_tokens_counts_as_zero(serve):
    def only_a(path, body):
        reply = judge_reply()(path, body)
        if "choices" in reply:
            top = reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"] = [t for t in top if "B" not in t["token"]]
        return reply

    assert np.all(judge(serve(only_a)).compare(PROMPTS, A, B).prob_a == 0.5)  # P_A = 1 in both orders


def test_neither_letter_is_a_malformed_reply(serve, tmp_path):
    def no_letters(path, body):
        reply = judge_reply()(path, body)
        if "choices" in reply:
            reply["choices"][0]["message"]["content"] = "The"
            reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"] = [{"token": "The", "logprob": -0.1},
                                                                             {"token": "Response", "logprob": -2.5}]
        return reply

    oracle = durable(tmp_path, judge(serve(no_letters)), retries=1)
    with pytest.raises(OracleFailure, match=r"failed 2 time\(s\).*answered 'The' and neither A nor B is among its "
                                            r"top 2 answer tokens \('The', 'Response'"):
        oracle.compare(PROMPTS, A, B)


def test_unknown_model_is_refused_before_the_run_with_the_servers_models(serve):
    service = serve(judge_reply("smollm2"))
    with pytest.raises(ConfigError, match=r"does not serve model 'gpt-judge'; it serves 'smollm2': pass one of them "
                                          r"as --judge_model"):
        judge(service, model="gpt-judge")


def test_a_model_unknown_mid_run_fails_fast_naming_the_model(serve, tmp_path):
    service = serve(judge_reply("smollm2"))
    oracle = durable(tmp_path, judge(service, model="gone", check_model=False), retries=3)
    with pytest.raises(OracleFailure, match=r"retrying cannot help: HTTP 404 .*The model `gone` does not exist.*"
                                            r"does not serve model 'gone'; it serves 'smollm2'"):
        oracle.compare(PROMPTS[:1], A[:1], B[:1])
    assert len(service.posts()) == 2  # both orders once, no retries


def test_server_not_reachable_names_the_url(serve, tmp_path):
    service = serve(judge_reply())
    url = service.url + "/v1"
    service.stop()
    with pytest.raises(ConfigError, match=rf"cannot reach the judge server: {url}/models is not reachable"):
        HttpJudgeOracle(url, "judge-model")
    oracle = durable(tmp_path, HttpJudgeOracle(url, "judge-model", check_model=False), retries=1)
    with pytest.raises(OracleFailure, match=rf"failed 2 time\(s\).*{url}/chat/completions is not reachable"):
        oracle.compare(PROMPTS, A, B)


def test_a_slow_server_times_out(serve, tmp_path):
    service = serve(judge_reply(), faults=[None] + ["slow"] * 6, slow_seconds=2.0)  # models, then slow
    oracle = durable(tmp_path, judge(service, timeout=0.3), retries=0, timeout=0.3)
    started = time.perf_counter()
    with pytest.raises(OracleFailure, match=r"no answer within oracle_timeout=0.3s|within 0.3s"):
        oracle.compare(PROMPTS, A, B)
    assert time.perf_counter() - started < 1.5


@pytest.mark.parametrize("fault", ["500", "429"])
def test_server_errors_are_retried_and_answered_questions_are_not_asked_again(serve, tmp_path, fault):
    service = serve(judge_reply(), faults=[None, fault, fault])  # models, then 2 requests fail
    oracle = durable(tmp_path, judge(service, concurrency=1), retries=2)
    pref = oracle.compare(PROMPTS, A, B)
    np.testing.assert_allclose(pref.prob_a, expected_prob_a(PROMPTS, A, B), atol=1e-12)
    assert len(service.posts()) == 6 + 2  # each failed request re-sent once per retry, the answered one never
    assert oracle.paid_queries == 3


def test_malformed_json_is_retried_then_reported(serve, tmp_path):
    service = serve(judge_reply(), faults=[None] + ["garbage"] * 20)  # models, then garbage
    oracle = durable(tmp_path, judge(service), retries=1)
    with pytest.raises(OracleFailure, match=r"failed 2 time\(s\).*replied with something that is not JSON: "
                                            r"'<html>proxy error</html>'"):
        oracle.compare(PROMPTS, A, B)
    assert oracle.paid_queries == 0 and not (tmp_path / "log.jsonl").read_text()


def test_the_api_key_goes_in_a_header_from_the_environment_and_nowhere_else(serve, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test-0123456789")
    service = serve(judge_reply())
    oracle = judge(service, api_key_env="MY_JUDGE_KEY")
    oracle.compare(PROMPTS[:1], A[:1], B[:1])
    assert all(h.get("Authorization") == "Bearer sk-test-0123456789" for h in service.headers)
    assert "sk-test" not in repr(oracle.service) and "sk-test" not in oracle.name


def test_a_refused_key_fails_fast_without_showing_it(serve, monkeypatch, tmp_path):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-wrong-0123456789")

    def refuse(path, body):
        return 401, {"error": {"message": "invalid api key"}}

    service = serve(refuse)
    with pytest.raises(ConfigError, match=r"HTTP 401 .*invalid api key.*refused the API key \(\$MY_JUDGE_KEY is set\)"
                       ) as err:
        judge(service, api_key_env="MY_JUDGE_KEY")
    assert "sk-wrong" not in str(err.value)


def test_letter_probability_sums_every_spelling():
    from fastalign.oracle.http_judge import letter_probability

    top = [("A", math.log(0.5)), (" A", math.log(0.1)), ("\nB", math.log(0.2)), ("The", math.log(0.2)),
           ("a", math.log(0.3))]  # lower-case 'a' is not the letter asked for
    assert letter_probability(top, "A") == pytest.approx(0.6 / 0.8)
    assert responses_in(pair_question("i", "p", "x", "y")) == ("x", "y")


@pytest.mark.parametrize("options, message", [
    (dict(oracle="judge", oracle_path="some/dir", judge_url="http://127.0.0.1:8000/v1", judge_model="m"),
     r"either --oracle_path DIR \(a local judge model\) or --judge_url URL \(a served judge\), not both"),
    (dict(oracle="judge", judge_url="http://127.0.0.1:8000/v1"), r"needs both --judge_url .* and --judge_model"),
    (dict(oracle="judge"), r"--oracle judge needs --oracle_path"),
    (dict(oracle="vader", judge_url="http://127.0.0.1:8000/v1", judge_model="m"), r"--judge_url applies to --oracle judge"),
    (dict(oracle="judge", judge_url="http://user:sk-123@host/v1", judge_model="m"), r"holds credentials"),
    (dict(oracle="judge", judge_url="127.0.0.1:8000/v1", judge_model="m"), r"is not an http:// or https:// URL"),
    (dict(oracle="judge", judge_url="http://h/v1", judge_model="m", judge_endpoint="responses"),
     r"unknown judge_endpoint 'responses'"),
    (dict(oracle="judge", judge_url="http://h/v1", judge_model="m", oracle_api_key_env="sk-abc123"),
     r"takes the NAME of an environment variable .* not the key itself"),
    (dict(oracle="judge", judge_url="http://h/v1", judge_model="m", oracle_concurrency=0), r"oracle_concurrency must be ≥ 1"),
])
def test_config_refuses_bad_served_judge_options(options, message):
    from fastalign.config import RunConfig

    with pytest.raises(ConfigError, match=message):
        RunConfig(**options).validate()


def test_config_builds_the_served_judge_from_cli_flags(serve, monkeypatch):
    from fastalign.config import parse_args
    from fastalign.oracle import build_oracle

    service = serve(judge_reply("smollm2"))
    cfg = parse_args(["--oracle", "judge", "--judge_url", service.url + "/v1", "--judge_model", "smollm2",
                      "--judge_endpoint", "completions", "--oracle_concurrency", "3", "--oracle_timeout", "5",
                      "--judge_instruction", "Prefer brevity."])
    oracle = build_oracle(cfg)
    assert isinstance(oracle, HttpJudgeOracle) and oracle.endpoint == "completions"
    assert (oracle.pool._max_workers, oracle.service.timeout, oracle.instruction) == (3, 5.0, "Prefer brevity.")

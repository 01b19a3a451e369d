"""DurableOracle: answers logged (fsync'd) before use, never paid twice, labels as the wrapped oracle's,
failures retried then reported, a torn log line survived."""
import json
import time

import numpy as np
import pytest

from fastalign.oracle import CallableOracle
from fastalign.oracle.durable import DurableOracle, OracleFailure


class Counting:
    """A reward f(prompts, responses) that counts how many responses it scored, and can fail or hang."""

    def __init__(self, fail_times: int = 0, sleep: float = 0.0):
        self.scored, self.fail_times, self.sleep = 0, fail_times, sleep

    def __call__(self, prompts, responses):
        if self.fail_times:
            self.fail_times -= 1
            raise ConnectionError("service unavailable")
        time.sleep(self.sleep)
        self.scored += len(responses)
        return [len(r) % 7 / 7 for r in responses]


PROMPTS, A, B = ["p1", "p2", "p3"], ["short", "a longer one", "x"], ["much longer text", "b", "xx"]


def durable(tmp_path, fn, **kwargs):
    return DurableOracle(CallableOracle(fn, preference="bt", seed=3), tmp_path / "log.jsonl", backoff=0.0, **kwargs)


def test_same_labels_as_the_wrapped_oracle_and_each_answer_logged_once(tmp_path):
    fn = Counting()
    oracle = durable(tmp_path, fn)
    plain = CallableOracle(Counting(), preference="bt", seed=3)
    for _ in range(2):  # the second batch is all repeats: answered from the log, labels still drawn
        got, want = oracle.compare(PROMPTS, A, B), plain.compare(PROMPTS, A, B)
        np.testing.assert_array_equal(got.a_wins, want.a_wins)
        np.testing.assert_array_equal(got.prob_a, want.prob_a)
    assert oracle.queries == 6 and oracle.paid_queries == 3 and oracle.replayed_queries == 3
    assert fn.scored == 6  # 3 pairs × 2 responses, once
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["kind"] == "train" for r in rows)


def test_evaluation_queries_are_paid_and_counted_apart(tmp_path):
    oracle = durable(tmp_path, Counting())
    oracle.compare(PROMPTS, A, B)
    oracle.compare(PROMPTS[:2], B[:2], A[:2], count=False)
    assert (oracle.paid_queries, oracle.paid_eval_queries) == (3, 2)
    oracle.close()
    again = durable(tmp_path, Counting())  # read back from the log's "kind" field
    assert (again.paid_queries, again.paid_eval_queries) == (3, 2)


def test_a_new_process_answers_from_the_log_and_resumes_the_label_stream(tmp_path):
    first = durable(tmp_path, Counting())
    first.compare(PROMPTS[:1], A[:1], B[:1])
    state = first.state_dict()
    expected = first.compare(PROMPTS, A, B)
    first.close()
    fn = Counting()
    second = durable(tmp_path, fn)  # e.g. after kill -9: the log is the cache
    second.load_state_dict(state)
    got = second.compare(PROMPTS, A, B)
    np.testing.assert_array_equal(got.a_wins, expected.a_wins)
    assert fn.scored == 0 and second.paid_queries == 3 and second.queries == 4


def test_torn_last_line_is_dropped_and_rewritten(tmp_path):
    oracle = durable(tmp_path, Counting())
    oracle.compare(PROMPTS, A, B)
    oracle.close()
    path = tmp_path / "log.jsonl"
    path.write_bytes(path.read_bytes()[:-7])  # killed mid-write
    fn = Counting()
    again = durable(tmp_path, fn)
    assert again.paid_queries == 2
    again.compare(PROMPTS, A, B)
    assert fn.scored == 2 and len(path.read_text().splitlines()) == 3


def test_damage_inside_the_log_is_refused(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"k": "a", "p": 1.0}\nnot json\n{"k": "b", "p": 0.0}\n')
    with pytest.raises(OracleFailure, match="corrupted"):
        durable(tmp_path, Counting())


def test_failures_are_retried_then_reported(tmp_path):
    fn = Counting(fail_times=2)
    oracle = durable(tmp_path, fn, retries=2)
    assert oracle.compare(PROMPTS, A, B).prob_a.shape == (3,)  # third attempt succeeds
    fn.fail_times = 5
    with pytest.raises(OracleFailure, match=r"failed 3 time\(s\).*ConnectionError: service unavailable"):
        oracle.compare(["new"], ["a"], ["b"])
    assert oracle.queries == 3 and oracle.paid_queries == 3  # nothing counted or logged for the failed batch


def test_timeout_is_a_failure(tmp_path):
    oracle = durable(tmp_path, Counting(sleep=2.0), retries=0, timeout=0.2)
    t = time.perf_counter()
    with pytest.raises(OracleFailure, match="no answer within oracle_timeout=0.2s"):
        oracle.compare(PROMPTS, A, B)
    assert time.perf_counter() - t < 1.5
    oracle.close()

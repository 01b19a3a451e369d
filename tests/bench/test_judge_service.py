"""The judge-service bench against a local fake OpenAI server and the tiny model as the in-process judge:
it samples its pairs from the server, sends both orders of each, and reports what it measured."""
import argparse
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "oracle"))
from fake_service import FakeService, judge_reply  # noqa: E402


def load_bench():
    spec = importlib.util.spec_from_file_location("judge_service", REPO / "bench" / "judge_service.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sampler_and_judge(path, body):
    """Sampling requests (n=2) get two different texts; judge requests the fake judge's answer."""
    if body is not None and body.get("n") == 2:
        seed = body["seed"]
        return {"choices": [{"index": k, "message": {"role": "assistant", "content": "x" * (seed % 5 + 3 * k + 1)}}
                            for k in range(2)]}
    return judge_reply("smollm2")(path, body)


def test_report_on_fake_server(tiny_model_dir):
    bench = load_bench()
    service = FakeService(sampler_and_judge)
    try:
        args = argparse.Namespace(judge_url=service.url + "/v1", judge_model="smollm2", api_key_env="UNSET_KEY_VAR",
                                  local_model=str(tiny_model_dir), pairs=3, max_new_tokens=8, concurrency=[1, 4],
                                  local_threads=[1], seed=0)
        report = bench.run(args)
    finally:
        service.stop()
    assert [r["judge"] for r in report["results"]] == ["served over HTTP, 1 concurrent", "served over HTTP, 4 concurrent",
                                                       "in-process, 1 thread(s)"]
    assert all(r["requests"] == 6 and r["queries_per_s"] > 0 for r in report["results"])
    assert len(service.posts("/v1/chat/completions")) == 3 + 2 * 6  # 3 samplings, then 6 questions per served pass
    assert report["pairs"] == 3 and 0 <= report["agreement"]["same_label_share"] <= 1

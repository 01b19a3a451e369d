"""Small local HTTP servers standing in for an OpenAI-compatible judge and a remote reward model.

Each binds 127.0.0.1 on a port the OS picks, serves from a thread, records every request, and can be
scripted to fail: `faults` is a list consumed one request at a time ("500", "429", "garbage" for a
body that is not JSON, "slow" to sleep past the client's timeout, None to answer normally).
"""
from __future__ import annotations

import json
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

Reply = Callable[[str, dict], Any]


class FakeService:
    """A JSON service: `reply(path, body)` answers; requests, headers and the peak concurrency are recorded."""

    def __init__(self, reply: Reply, *, faults: list[str | None] | None = None, delay: float = 0.0,
                 slow_seconds: float = 3.0) -> None:
        self.reply, self.faults, self.delay, self.slow_seconds = reply, list(faults or []), delay, slow_seconds
        self.requests: list[tuple[str, str, dict | None]] = []  # (method, path, body)
        self.headers: list[dict[str, str]] = []
        self.in_flight = self.peak_in_flight = 0
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def posts(self, path: str | None = None) -> list[dict]:
        return [body for method, p, body in self.requests if method == "POST" and (path is None or p == path)]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _next_fault(self) -> str | None:
        with self._lock:
            return self.faults.pop(0) if self.faults else None

    def _handler(self):
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _send(self, status: int, payload: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with service._lock:
                    service.requests.append((method, self.path, body))
                    service.headers.append(dict(self.headers))
                    service.in_flight += 1
                    service.peak_in_flight = max(service.peak_in_flight, service.in_flight)
                try:
                    time.sleep(service.delay)
                    fault = service._next_fault()
                    if fault == "slow":
                        time.sleep(service.slow_seconds)
                    if fault in ("500", "429", "503"):
                        return self._send(int(fault), json.dumps({"error": {"message": f"scripted {fault}"}}).encode())
                    if fault == "garbage":
                        return self._send(200, b"<html>proxy error</html>", "text/html")
                    status, payload = 200, service.reply(self.path, body)
                    if isinstance(payload, tuple):
                        status, payload = payload
                    self._send(status, json.dumps(payload).encode())
                finally:
                    with service._lock:
                        service.in_flight -= 1

            def do_GET(self):
                self._serve("GET")

            def do_POST(self):
                self._serve("POST")

        return Handler


def responses_in(question: str) -> tuple[str, str]:
    """(Response A, Response B) of a pairwise judge question."""
    match = re.search(r"\[Response A\]\n(.*)\n\n\[Response B\]\n(.*)\n\nWhich response", question, re.S)
    assert match, question
    return match.group(1), match.group(2)


def fake_p_first(first: str, second: str) -> float:
    """The fake judge's P(A): prefers the longer response, with a position bias towards A."""
    return 1.0 / (1.0 + math.exp(-(0.3 * (len(first) - len(second)) + 0.4)))


def judge_reply(model: str = "judge-model", *, logprobs: bool = True, extra_tokens: float = 0.1) -> Reply:
    """An OpenAI-compatible judge serving `model`: P(A) = fake_p_first, spread over 'A'/' A' and 'B'/' B',
    plus `extra_tokens` of probability on a non-letter token."""

    def reply(path: str, body: dict | None):
        if path.endswith("/models"):
            return {"object": "list", "data": [{"id": model, "object": "model"}]}
        if body.get("model") != model:
            return 404, {"error": {"message": f"The model `{body.get('model')}` does not exist.", "code": 404}}
        chat = path.endswith("/chat/completions")
        question = body["messages"][0]["content"] if chat else body["prompt"]
        p_a = fake_p_first(*responses_in(question))
        keep = 1.0 - extra_tokens
        top = {"A": 0.7 * p_a * keep, " A": 0.3 * p_a * keep, "B": 0.6 * (1 - p_a) * keep,
               " B": 0.4 * (1 - p_a) * keep, "The": extra_tokens}
        top = {t: math.log(p) for t, p in top.items() if p > 0}
        answer = "A" if p_a >= 0.5 else "B"
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "length",
                      "logprobs": None}
            if logprobs:
                choice["logprobs"] = {"content": [{"token": answer, "logprob": top[answer], "top_logprobs": [
                    {"token": t, "logprob": lp} for t, lp in top.items()]}]}
        else:
            choice = {"index": 0, "text": answer, "finish_reason": "length", "logprobs": None}
            if logprobs:
                choice["logprobs"] = {"tokens": [answer], "token_logprobs": [top[answer]], "top_logprobs": [top],
                                      "text_offset": [0]}
        return {"id": "x", "object": "chat.completion" if chat else "text_completion", "model": model,
                "choices": [choice]}

    return reply


def reward_reply(path: str, body: dict | None):
    """A remote reward in OpenRLHF's convention: reward = the share of 'e' in the response."""
    responses = [q[len(p):] for q, p in zip(body["query"], body["prompts"])]
    return {"rewards": [r.lower().count("e") / max(len(r), 1) for r in responses]}

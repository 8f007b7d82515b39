"""The LLM client against a local fake OpenAI-compatible server: request shape, retries on
429/5xx with backoff, cache hits on rerun, timeout and bad endpoint as clear errors. No test
reaches a real LLM."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from pipelines.interp.explainer import RANDOM, Windows
from pipelines.interp.llm import (AnswerCache, LlmClient, LlmError, ask_all, parse_answer,
                                  patterns_from_answers, unit_prompts)

ANSWER = {"explanation": "the token def", "tokens": ["def"], "after": ["·"], "next": ["("]}


class FakeServer:
    """Answers POST /v1/chat/completions; `script` is a list of (status, delay_s) consumed
    one per request (then 200 forever); every request's headers and body are recorded."""

    def __init__(self, script=()):
        self.script = list(script)
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "headers": dict(self.headers),
                                       "body": body})
                status, delay = outer.script.pop(0) if outer.script else (200, 0)
                time.sleep(delay)
                if status != 200:
                    self.send_response(status)
                    self.end_headers()
                    self.wfile.write(b'{"error": "busy"}')
                    return
                out = json.dumps({"choices": [{"message": {"role": "assistant",
                                                           "content": json.dumps(ANSWER)}}]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(out.encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


def client(server, **kw) -> LlmClient:
    waits = kw.pop("waits", [])
    return LlmClient(server.base_url, "fake-model", kw.pop("api_key", "sk-test"),
                     sleep=waits.append, **kw)


MESSAGES = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]


def test_request_shape():
    with FakeServer() as server:
        text = client(server).complete(MESSAGES)
    assert json.loads(text) == ANSWER
    (req,) = server.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sk-test"
    assert req["headers"]["Content-Type"] == "application/json"
    assert req["body"]["model"] == "fake-model" and req["body"]["messages"] == MESSAGES
    assert req["body"]["temperature"] == 0


def test_retries_429_and_5xx_with_backoff():
    waits: list[float] = []
    with FakeServer([(429, 0), (503, 0), (500, 0)]) as server:
        text = client(server, waits=waits, max_retries=4, backoff_s=0.5).complete(MESSAGES)
    assert json.loads(text) == ANSWER
    assert len(server.requests) == 4
    assert waits == [0.5, 1.0, 2.0]  # exponential backoff between the tries


def test_gives_up_after_max_retries_and_does_not_retry_4xx():
    with FakeServer([(503, 0)] * 3) as server:
        with pytest.raises(LlmError, match="gave up after 3 tries.*503"):
            client(server, max_retries=2).complete(MESSAGES)
    with FakeServer([(401, 0)]) as server:
        with pytest.raises(LlmError, match="HTTP 401"):
            client(server).complete(MESSAGES)
        assert len(server.requests) == 1


def test_timeout_is_a_clear_error_not_a_hang():
    with FakeServer([(200, 2.0)]) as server:
        t0 = time.perf_counter()
        with pytest.raises(LlmError, match=r"no answer within 0.3 s \(interp.llm_timeout_s\)"):
            client(server, timeout_s=0.3).complete(MESSAGES)
        assert time.perf_counter() - t0 < 1.5


def test_unreachable_endpoint_is_a_clear_error():
    with FakeServer() as server:
        url = server.base_url
    dead = LlmClient(url, "m", sleep=lambda s: None, max_retries=1)
    with pytest.raises(LlmError, match="cannot connect.*interp.llm_base_url"):
        dead.complete(MESSAGES)


def _windows(display):
    tokens = np.array([[1, 2, 3], [2, 3, 1], [1, 1, 1]], np.int32)
    acts = np.array([[0, 2.0, 0], [1.0, 0, 0], [0, 0, 0]], np.float32)
    return Windows(unit=np.array([0, 1, 0]), tokens=tokens, acts=acts,
                   kind=np.array([-1, -1, RANDOM], np.int8), seq_id=np.arange(3),
                   position=np.arange(3), split="train")


def test_cache_hit_on_rerun_costs_no_request(tmp_path):
    display = ["<bos>", "·", "def", "("]
    prompts = unit_prompts(_windows(display), 2, display)
    assert set(prompts) == {0, 1}
    assert "«def»=10" in prompts[0][1]["content"]  # activations on Bills' 0-10 scale
    with FakeServer() as server:
        c = client(server)
        cache = AnswerCache(tmp_path / "cache" / "sae_8")
        first, sent = ask_all(c, cache, prompts, concurrency=2)
        assert sent == 2 and len(server.requests) == 2
        again, sent = ask_all(c, cache, prompts, concurrency=2)
        assert sent == 0 and len(server.requests) == 2 and again == first
        changed = {0: prompts[0][:1] + [{"role": "user", "content": "other"}]}
        _, sent = ask_all(c, cache, changed, concurrency=1)
        assert sent == 1  # another prompt for the same unit is another key
    patterns, texts = patterns_from_answers({u: parse_answer(t) for u, t in first.items()}, 2,
                                            display)
    assert texts[0] == "the token def"
    assert patterns.token[0, 0] == 2 and patterns.weight[0, 0] == 1.0
    assert patterns.next_token[0, 0] == 3


def test_parse_answer_survives_prose_and_garbage():
    assert parse_answer('Sure!\n```json\n{"explanation": "x", "tokens": ["a"]}\n```')["tokens"] == ["a"]
    assert parse_answer("no json here") == {"explanation": "", "tokens": [], "after": [],
                                            "next": []}

"""The LLM explainer: an OpenAI-compatible chat-completions client (issue 13).

Off unless `interp.explainer = "llm"` with `interp.llm_base_url` and `interp.llm_model`
set; never called by default, by CI or by the tests (they run it against a local fake
server, `tests/test_interp_llm.py`). Works with anything that serves
`POST {base_url}/chat/completions`: a local llama.cpp (`llama-server`, base URL
`http://localhost:8080/v1`) or vLLM server, or a hosted API. The key comes from
`OPENAI_API_KEY` (sent as `Authorization: Bearer ...` when set; never stored).

- Bounded concurrency: at most `llm_concurrency` requests in flight (a thread pool).
- Retries: 429 and 5xx answers and dropped connections are retried up to `llm_max_retries`
  times with exponential backoff (1, 2, 4 ... s, or the server's `Retry-After`); other
  4xx answers fail at once with the server's message.
- Timeout: a request with no answer within `llm_timeout_s` is an `LlmError` naming the URL
  and the setting; an unreachable endpoint likewise, never a hang.
- Cache: each answer is kept under `runs/<name>/interp_cache/<dictionary>/<unit>-<hash>.json`,
  the hash covering the model, the messages and the endpoint, so rerunning the stage costs
  nothing and a changed prompt (or other windows) asks again.
Prompts: `pipelines/interp/prompts.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipelines import progress
from pipelines.errors import PipelineError
from pipelines.interp.explainer import CUR, PREV, Patterns, Windows
from pipelines.interp.prompts import explain_messages, window_line


class LlmError(PipelineError):
    """The LLM endpoint failed in a way retrying will not fix; the message names it."""


@dataclass(frozen=True)
class LlmClient:
    base_url: str
    model: str
    api_key: str = ""
    timeout_s: float = 60.0
    max_retries: int = 4
    backoff_s: float = 1.0  # first retry's wait; doubles each time
    sleep: Callable[[float], None] = time.sleep  # tests pass a recorder

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    def request_body(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        return {"model": self.model, "messages": messages, "temperature": 0,
                "max_tokens": 300}

    def complete(self, messages: list[dict[str, str]]) -> str:
        """The assistant's text for these messages (retrying as the module docstring says)."""
        data = json.dumps(self.request_body(messages)).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(self.max_retries + 1):
            req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            wait = self.backoff_s * 2 ** attempt
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    payload = json.loads(resp.read().decode("utf-8"))
                try:
                    return str(payload["choices"][0]["message"]["content"])
                except (KeyError, IndexError, TypeError):
                    raise LlmError(f"{self.url}: answer has no choices[0].message.content: "
                                   f"{str(payload)[:200]}") from None
            except urllib.error.HTTPError as err:
                body = err.read().decode("utf-8", "replace")[:200]
                if err.code != 429 and err.code < 500:
                    raise LlmError(f"{self.url}: HTTP {err.code}: {body}") from None
                retry_after = err.headers.get("Retry-After") if err.headers else None
                if retry_after and retry_after.replace(".", "", 1).isdigit():
                    wait = float(retry_after)
                last = f"HTTP {err.code}: {body}"
            except (TimeoutError, socket.timeout):
                raise LlmError(f"{self.url}: no answer within {self.timeout_s:g} s "
                               f"(interp.llm_timeout_s)") from None
            except urllib.error.URLError as err:
                if isinstance(err.reason, (TimeoutError, socket.timeout)):
                    raise LlmError(f"{self.url}: no answer within {self.timeout_s:g} s "
                                   f"(interp.llm_timeout_s)") from None
                if isinstance(err.reason, ConnectionRefusedError) or attempt == self.max_retries:
                    raise LlmError(f"{self.url}: cannot connect ({err.reason}); check "
                                   f"interp.llm_base_url") from None
                last = f"connection failed ({err.reason})"
            except (ConnectionError, json.JSONDecodeError) as err:
                last = f"{type(err).__name__}: {err}"
            if attempt < self.max_retries:
                self.sleep(wait)
        raise LlmError(f"{self.url}: gave up after {self.max_retries + 1} tries; last: {last}")


class AnswerCache:
    """One JSON file per (unit, prompt hash) under `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @staticmethod
    def key(client: LlmClient, messages: list[dict[str, str]]) -> str:
        blob = json.dumps({"model": client.model, "url": client.url, "messages": messages},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def path(self, unit: int, key: str) -> Path:
        return self.folder / f"{unit}-{key}.json"

    def get(self, unit: int, key: str) -> str | None:
        try:
            return json.loads(self.path(unit, key).read_text(encoding="utf-8"))["answer"]
        except (OSError, ValueError, KeyError):
            return None

    def put(self, unit: int, key: str, answer: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path(unit, key).with_suffix(".tmp")
        tmp.write_text(json.dumps({"answer": answer}), encoding="utf-8")
        os.replace(tmp, self.path(unit, key))


def ask_all(client: LlmClient, cache: AnswerCache, prompts: dict[int, list[dict[str, str]]],
            concurrency: int) -> tuple[dict[int, str], int]:
    """Answers for every unit's prompt, from the cache where present; (answers, requests
    sent). The first LlmError stops the stage (after the requests in flight finish)."""
    answers, todo = {}, []
    for unit, messages in prompts.items():
        key = cache.key(client, messages)
        hit = cache.get(unit, key)
        if hit is None:
            todo.append((unit, key, messages))
        else:
            answers[unit] = hit

    def one(item):
        unit, key, messages = item
        answer = client.complete(messages)
        cache.put(unit, key, answer)
        return unit, answer

    bar = progress.bar(total=len(todo), desc="interp (llm)", unit="unit")
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for unit, answer in pool.map(one, todo):
            answers[unit] = answer
            bar.update(1)
    bar.close()
    return answers, len(todo)


def parse_answer(text: str) -> dict[str, Any]:
    """The JSON object in an answer (models wrap it in prose or code fences); a bad answer
    becomes an empty explanation rather than a failed stage."""
    start, end = text.find("{"), text.rfind("}")
    try:
        data = json.loads(text[start: end + 1]) if start >= 0 < end else {}
    except json.JSONDecodeError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    lists = {k: [str(t) for t in data.get(k, []) if isinstance(t, (str, int))][:5]
             if isinstance(data.get(k), list) else [] for k in ("tokens", "after", "next")}
    return {"explanation": str(data.get("explanation", "")).strip()[:500], **lists}


def unit_prompts(windows: Windows, n_units: int, display: list[str]
                 ) -> dict[int, list[dict[str, str]]]:
    """Each unit's messages from its own explain windows (top, then intervals high to low)."""
    own = windows.kind >= -1
    prompts = {}
    for u in range(n_units):
        rows = np.flatnonzero(own & (windows.unit == u))
        if rows.size == 0 or windows.acts[rows].max() <= 0:
            continue
        rows = rows[np.lexsort((-windows.acts[rows].max(axis=1), windows.kind[rows] != -1))]
        top = float(windows.acts[rows].max())
        lines = [window_line([display[t] for t in windows.tokens[r] if t >= 0],
                             [a for t, a in zip(windows.tokens[r], windows.acts[r]) if t >= 0],
                             top) for r in rows]
        prompts[u] = explain_messages(lines)
    return prompts


def patterns_from_answers(answers: dict[int, dict[str, Any]], n_units: int,
                          display: list[str], k: int = 5) -> tuple[Patterns, list[str]]:
    """The answers' token lists as runnable patterns (weight 1 each: the answer gives no
    strengths) and the explanation texts. Tokens are matched by display form."""
    ids = {}
    for i, d in enumerate(display):
        ids.setdefault(d, i)
    T = np.full((n_units, k), -1, np.int32)
    K = np.zeros((n_units, k), np.int8)
    W = np.zeros((n_units, k), np.float32)
    NT = np.full((n_units, k), -1, np.int32)
    NW = np.zeros((n_units, k), np.float32)
    texts = ["(no answer: the unit did not fire in the explain set)"] * n_units
    for u, a in answers.items():
        slots = [(ids[t], CUR) for t in a["tokens"] if t in ids]
        slots += [(ids[t], PREV) for t in a["after"] if t in ids]
        for j, (t, kind) in enumerate(slots[:k]):
            T[u, j], K[u, j], W[u, j] = t, kind, 1.0
        for j, t in enumerate([ids[t] for t in a["next"] if t in ids][:k]):
            NT[u, j], NW[u, j] = t, 1.0
        texts[u] = a["explanation"] or "(the answer had no explanation)"
    return Patterns(T, K, W, NT, NW), texts


def explain_with_llm(cfg, dictionary: str, windows: Windows, display: list[str],
                     run_dir: Path, n_units: int) -> tuple[Patterns, list[str]]:
    """The stage's entry point for `interp.explainer = "llm"`."""
    client = LlmClient(cfg.llm_base_url, cfg.llm_model, os.environ.get("OPENAI_API_KEY", ""),
                       cfg.llm_timeout_s, cfg.llm_max_retries)
    prompts = unit_prompts(windows, n_units, display)
    cache = AnswerCache(run_dir / "interp_cache" / dictionary)
    raw, _ = ask_all(client, cache, prompts, cfg.llm_concurrency)
    return patterns_from_answers({u: parse_answer(t) for u, t in raw.items()}, n_units, display)

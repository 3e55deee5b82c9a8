"""A judge behind any OpenAI-compatible chat-completions endpoint, and robust parsing of its replies.

`ChatClient.complete` sends one user message (text + images as data URLs) and returns the reply
text. Transient failures (HTTP 429 / 408 / 5xx, timeouts, dropped connections, a garbled body)
are retried with exponential backoff and jitter, honouring `Retry-After`; other 4xx answers fail at
once. The client is thread-safe: one instance serves many concurrent judgements.

`parse_judgement` turns a reply into `{"reason", "prompt_following", "consistency"}` with integer
scores validated against 0..10. It accepts what the official MSE-Bench scorer accepts (a JSON or
Python-literal dict, optionally in a ```json fence) and more: JSON inside prose, several fenced
blocks, `<think>` sections, numeric strings. A reply it cannot use raises `ReplyError`; the caller
re-asks and finally records the judgement as failed.
"""

from __future__ import annotations

import ast
import base64
import json
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vincie_cli.utils.http import RETRY_STATUS, backoff_delay, parse_retry_after
from vincie_cli.utils.io import VincieError
from vincie_cli.utils.log import get_logger

log = get_logger(__name__)

SCORE_KEYS = ("prompt_following", "consistency")
SCORE_MIN, SCORE_MAX = 0, 10


class JudgeError(VincieError):
    """The endpoint could not give an answer (after retries, or a non-retryable HTTP error)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ReplyError(ValueError):
    """A reply that is not a usable judgement (no JSON, missing keys, scores out of range)."""


@dataclass
class JudgeConfig:
    """Where and how to ask. `api_key` is only held in memory and never logged or written."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 120.0  # seconds per HTTP request
    max_attempts: int = 6  # HTTP attempts per request (transient errors)
    reply_attempts: int = 3  # asks per judgement when the reply is unusable
    backoff: float = 1.0  # first retry delay in seconds; doubles per attempt
    max_backoff: float = 60.0
    max_retry_after: float = 300.0  # cap on a server's Retry-After
    temperature: float | None = None  # None: the server's default (some reasoning models reject it)
    max_tokens: int | None = None

    def public(self) -> dict[str, Any]:
        """The settings that may be written to a report (no key)."""
        return {
            "base_url": self.base_url,
            "model": self.model,
            "api_key_set": bool(self.api_key),
            "timeout": self.timeout,
            "max_attempts": self.max_attempts,
            "reply_attempts": self.reply_attempts,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }


# --------------------------------------------------------------------------------------------
# the HTTP client


def image_data_url(data: bytes) -> str:
    """A base64 data URL with the MIME type read from the image bytes."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        mime = "image/png"
    elif data[:3] == b"\xff\xd8\xff":
        mime = "image/jpeg"
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        mime = "image/webp"
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        mime = "image/gif"
    else:
        mime = "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def user_content(text: str, images: list[bytes]) -> list[dict[str, Any]]:
    """Chat-completions content parts: the instruction first, then the images in order."""
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": image_data_url(img)}} for img in images]
    return parts


class ChatClient:
    """A thread-safe chat-completions client with retries (httpx)."""

    def __init__(
        self,
        config: JudgeConfig,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        import httpx

        self.config = config
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        headers = {"Content-Type": "application/json"}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        self._url = config.base_url.rstrip("/") + "/chat/completions"
        self._http = httpx.Client(timeout=httpx.Timeout(config.timeout), headers=headers)
        self.requests_sent = 0
        self._count_lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        c = self.config
        with self._rng_lock:
            return backoff_delay(attempt, c.backoff, c.max_backoff, retry_after, c.max_retry_after, self._rng)

    def complete(self, content: list[dict[str, Any]]) -> str:
        """Send one user message; return the assistant's text. Raises JudgeError after the retries."""
        import httpx

        body: dict[str, Any] = {"model": self.config.model, "messages": [{"role": "user", "content": content}]}
        if self.config.temperature is not None:
            body["temperature"] = self.config.temperature
        if self.config.max_tokens is not None:
            body["max_tokens"] = self.config.max_tokens
        last = "no attempt made"
        for attempt in range(self.config.max_attempts):
            retry_after: float | None = None
            with self._count_lock:
                self.requests_sent += 1
            try:
                resp = self._http.post(self._url, json=body)
            except httpx.TimeoutException:
                last = f"timed out after {self.config.timeout:g} s"
            except httpx.TransportError as e:
                last = f"connection error: {type(e).__name__}: {e}"
            else:
                if resp.status_code == 200:
                    try:
                        return _reply_text(resp.json())
                    except (ValueError, KeyError, IndexError, TypeError) as e:
                        last = f"malformed response body ({e})"
                else:
                    last = f"HTTP {resp.status_code}: {_error_message(resp)}"
                    if resp.status_code not in RETRY_STATUS and resp.status_code < 500:
                        raise JudgeError(f"judge endpoint {self._url}: {last}", resp.status_code)
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            if attempt + 1 < self.config.max_attempts:
                delay = self._delay(attempt, retry_after)
                log.debug("judge request failed (%s); retry %d in %.2f s", last, attempt + 1, delay)
                self._sleep(delay)
        raise JudgeError(f"judge endpoint {self._url}: {last} (gave up after {self.config.max_attempts} attempts)")


def _reply_text(obj: dict[str, Any]) -> str:
    content = obj["choices"][0]["message"]["content"]
    if content is None:
        return ""
    if isinstance(content, list):  # some servers return content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise TypeError(f"message content is {type(content).__name__}")
    return content


def _error_message(resp: Any) -> str:
    try:
        obj = resp.json()
        msg = obj.get("error", {}).get("message") if isinstance(obj.get("error"), dict) else obj.get("error")
        if msg:
            return str(msg)[:200]
    except Exception:
        pass
    return (resp.text or resp.reason_phrase or "")[:200]


# --------------------------------------------------------------------------------------------
# reply parsing

_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*(.*?)```", re.DOTALL)


def _literal(text: str) -> Any:
    """json, then a Python literal (single quotes, True/False) as the official scorer allows."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, ValueError):
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _balanced_objects(text: str) -> list[str]:
    """Every top-level {...} span of `text`, with braces inside quoted strings ignored."""
    spans: list[str] = []
    depth, start, quote, escaped = 0, -1, "", False
    for i, ch in enumerate(text):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
            continue
        if ch in "\"'" and depth > 0:
            quote = ch
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append(text[start : i + 1])
    return spans


def _candidates(text: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    # 1. what the official scorer does: strip the *characters* of "```json" from both ends, then one literal
    obj = _literal(text.strip("`json"))
    if isinstance(obj, dict):
        found.append(obj)
    # 2. fenced blocks, then every balanced {...} in the text (prose around the JSON)
    cleaned = _THINK.sub(" ", text)
    for block in _FENCE.findall(cleaned):
        obj = _literal(block.strip())
        if isinstance(obj, dict):
            found.append(obj)
    for span in _balanced_objects(cleaned):
        obj = _literal(span)
        if isinstance(obj, dict):
            found.append(obj)
    # 3. one level of nesting, e.g. {"evaluation": {"prompt_following": 7, ...}}
    found += [v for obj in list(found) for v in obj.values() if isinstance(v, dict)]
    # 4. a stray quote or brace in the prose can hide the JSON from the scan above: decode from every "{"
    if not any(_has_scores(o) for o in found):
        decoder = json.JSONDecoder()
        for i, ch in enumerate(cleaned):
            if ch == "{":
                try:
                    obj, _ = decoder.raw_decode(cleaned, i)
                except json.JSONDecodeError:
                    continue
                if isinstance(obj, dict):
                    found.append(obj)
    return found


def _has_scores(obj: dict[str, Any]) -> bool:
    keys = {_norm_key(k) for k in obj}
    return all(k in keys for k in SCORE_KEYS)


def _norm_key(key: Any) -> str:
    return re.sub(r"[\s\-]+", "_", str(key).strip().lower())


def _score(value: Any, key: str) -> int:
    if isinstance(value, bool):
        raise ReplyError(f"{key}={value!r} is not a number")
    if isinstance(value, str):
        s = value.strip()
        m = re.fullmatch(r"([+-]?\d+(?:\.\d+)?)\s*(?:/\s*10)?", s)
        if not m:
            raise ReplyError(f"{key}={value!r} is not a number")
        value = float(m.group(1))
    if isinstance(value, float):
        if value != value or value != int(value):
            raise ReplyError(f"{key}={value!r} is not a whole number")
        value = int(value)
    if not isinstance(value, int):
        raise ReplyError(f"{key}={value!r} is not a number")
    if not SCORE_MIN <= value <= SCORE_MAX:
        raise ReplyError(f"{key}={value} outside {SCORE_MIN}..{SCORE_MAX}")
    return value


def validate_judgement(obj: dict[str, Any]) -> dict[str, Any]:
    """Normalise keys and check the scores: {"reason": str, "prompt_following": int, "consistency": int}."""
    norm = {_norm_key(k): v for k, v in obj.items()}
    missing = [k for k in SCORE_KEYS if k not in norm]
    if missing:
        raise ReplyError(f"reply lacks {', '.join(missing)} (keys: {', '.join(map(str, obj)) or 'none'})")
    reason = norm.get("reason", "")
    return {
        "reason": reason if isinstance(reason, str) else json.dumps(reason, ensure_ascii=False),
        "prompt_following": _score(norm["prompt_following"], "prompt_following"),
        "consistency": _score(norm["consistency"], "consistency"),
    }


def parse_judgement(text: str | None) -> dict[str, Any]:
    """The judgement in a reply. Raises ReplyError naming what is wrong.

    Among several JSON objects (e.g. an example and the answer) the last one holding both scores
    wins; if that one is invalid (e.g. a score of 11) the error is raised rather than falling back.
    """
    if text is None or not text.strip():
        raise ReplyError("empty reply")
    objects = _candidates(text)
    if not objects:
        raise ReplyError(f"no JSON object in reply: {_short(text)}")
    scored = [o for o in objects if _has_scores(o)]
    return validate_judgement(scored[-1] if scored else objects[-1])


def _short(text: str, n: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."

"""Any OpenAI-compatible chat-completions endpoint (vLLM, SGLang, TGI, hosted APIs), over httpx.

One pooled, thread-safe httpx client serves all runner threads. Transport trouble (timeouts,
dropped connections, 408/409/429/5xx) is retried with exponential backoff and jitter, honouring
Retry-After; 400/422 fail the one request; 401/403/404 stop the run (the key, model or URL is
wrong, so every other request would fail the same way). The API key is read from an environment
variable whose *name* is an option; it travels only in the Authorization header and is scrubbed from
every message this module produces.
"""

from __future__ import annotations

import base64
import collections
import os
import random
import threading
from typing import Any

from vincie_cli.annotate.backends.base import (
    Backend,
    FatalBackendError,
    PairRequest,
    Reply,
    encode_image,
    fit_image,
    load_image,
)
from vincie_cli.annotate.prompt import build_messages
from vincie_cli.utils.http import RETRY_STATUS, backoff_delay, parse_retry_after
from vincie_cli.utils.io import UsageError
from vincie_cli.utils.log import get_logger

log = get_logger(__name__)

FATAL_STATUS = {401: "the server rejected the API key", 403: "access denied", 404: "endpoint or model not found"}
MAX_RETRY_AFTER = 600.0


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        require_key: bool = False,
        concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        max_tokens: int = 1024,
        json_mode: bool = False,
        image_size: int = 512,
        image_format: str = "jpeg",
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        import httpx

        if not model:
            raise UsageError("--model is required with --backend openai (the model name the server serves)")
        if not base_url.startswith(("http://", "https://")):
            raise UsageError(f"--base-url {base_url!r}: expected an http(s) URL such as http://127.0.0.1:8000/v1")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self._key = os.environ.get(api_key_env) or None
        if self._key is None:
            if require_key:
                raise UsageError(f"environment variable {api_key_env} is not set (it should hold the API key)")
            log.info("no API key in $%s: sending requests without an Authorization header", api_key_env)
        self.concurrency = max(1, int(concurrency))
        self.timeout = float(timeout)
        self.max_retries = max(0, int(max_retries))
        self.backoff = float(backoff)
        self.backoff_max = float(backoff_max)
        self.max_tokens = int(max_tokens)
        self.json_mode = json_mode
        self.image_size = int(image_size)
        self.image_format = image_format
        self.extra_body = dict(extra_body or {})
        self._stop = threading.Event()
        self._rng = random.Random()
        self._cache: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._cache_lock = threading.Lock()
        # room for every frame of the clips in flight (the runner keeps about 2 x concurrency clips)
        self._cache_size = max(256, 48 * self.concurrency)
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        self._client = httpx.Client(
            timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 30.0)),
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
            headers=headers,
        )
        self.url = f"{self.base_url}/chat/completions"

    # ----------------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "max_tokens": self.max_tokens,
            "json_mode": self.json_mode,
            "image_size": self.image_size,
            "image_format": self.image_format,
        }

    def close(self) -> None:
        self._stop.set()
        self._client.close()

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _encode(self, im: Any) -> str:
        data, mime = encode_image(fit_image(im, self.image_size), self.image_format)
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"

    def _remember(self, key: str, url: str) -> None:
        with self._cache_lock:
            self._cache[key] = url
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def preload(self, path: Any, image: Any) -> None:
        self._remember(str(path), self._encode(image))

    def _data_url(self, path: Any) -> str:
        """The image as a data URL. Cached: frames arrive preloaded from the decoder, inner frames take
        part in two pairs, and retries resend both."""
        key = str(path)
        with self._cache_lock:
            url = self._cache.get(key)
            if url is not None:
                self._cache.move_to_end(key)
                return url
        url = self._encode(load_image(path, self.image_size))
        self._remember(key, url)
        return url

    def build_body(self, req: PairRequest) -> dict[str, Any]:
        """The chat-completions request body for one pair (images inlined as data URLs)."""
        messages = []
        for msg in build_messages(req.caption, req.retry_reason):
            content = msg["content"]
            if isinstance(content, list):
                parts = []
                for part in content:
                    if part["type"] == "image":
                        parts.append(
                            {"type": "image_url", "image_url": {"url": self._data_url(req.images[part["index"]])}}
                        )
                    else:
                        parts.append(part)
                content = parts
            messages.append({"role": msg["role"], "content": content})
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": req.temperature,
            "max_tokens": self.max_tokens,
        }
        if self.json_mode:
            body["response_format"] = {"type": "json_object"}
        body.update(self.extra_body)
        return body

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        return backoff_delay(attempt, self.backoff, self.backoff_max, retry_after, MAX_RETRY_AFTER, self._rng)

    def _post(self, body: dict[str, Any]) -> Reply:
        import httpx

        last = "no request made"
        for attempt in range(self.max_retries + 1):
            if self._stop.is_set():
                return Reply(error="stopped", requests=attempt)
            retry_after = None
            try:
                resp = self._client.post(self.url, json=body)
            except httpx.TimeoutException:
                last = f"timed out after {self.timeout:g} s"
            except httpx.TransportError as e:
                last = f"connection error ({type(e).__name__}: {self._scrub(str(e))})"
                if isinstance(e, httpx.ConnectError) and attempt == self.max_retries:
                    raise FatalBackendError(f"cannot reach {self.base_url}: {self._scrub(str(e))}") from None
            else:
                if resp.status_code == 200:
                    return self._reply(resp, attempt + 1)
                detail = self._error_detail(resp)
                last = f"HTTP {resp.status_code}{': ' + detail if detail else ''}"
                if resp.status_code in FATAL_STATUS:
                    hint = f" (check ${self.api_key_env})" if resp.status_code in (401, 403) else ""
                    raise FatalBackendError(
                        f"{self.url}: {FATAL_STATUS[resp.status_code]} (HTTP {resp.status_code}){hint}: {detail}"
                    )
                if resp.status_code not in RETRY_STATUS:
                    return Reply(error=last, requests=attempt + 1)
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            if attempt < self.max_retries:
                delay = self._delay(attempt, retry_after)
                log.debug("request failed (%s); retry %d/%d in %.2f s", last, attempt + 1, self.max_retries, delay)
                if self._stop.wait(delay):
                    return Reply(error="stopped", requests=attempt + 1)
        return Reply(error=f"{last} ({self.max_retries + 1} tries)", requests=self.max_retries + 1)

    def _error_detail(self, resp: Any) -> str:
        try:
            obj = resp.json()
            msg = obj.get("error", obj) if isinstance(obj, dict) else obj
            msg = msg.get("message", msg) if isinstance(msg, dict) else msg
            text = str(msg)
        except Exception:
            text = resp.text
        return self._scrub(" ".join(text.split()))[:300]

    def _reply(self, resp: Any, requests: int) -> Reply:
        try:
            obj = resp.json()
            message = obj["choices"][0]["message"]
        except Exception:
            return Reply(error=f"malformed response: {self._scrub(resp.text[:200])!r}", requests=requests)
        content = message.get("content")
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        usage = obj.get("usage") or {}
        usage = {k: int(v) for k, v in usage.items() if isinstance(v, int)}
        return Reply(text=content if isinstance(content, str) else None, requests=requests, usage=usage)

    def generate(self, requests: list[PairRequest]) -> list[Reply]:
        return [self._post(self.build_body(r)) for r in requests]

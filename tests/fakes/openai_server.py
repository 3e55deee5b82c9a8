"""A real HTTP server on 127.0.0.1 that speaks the OpenAI chat-completions protocol, for tests.

Each request is answered by the next scripted reply (or by `handler(request_json)` when the
script is empty). A reply is a dict:

    {"content": "..."}                       200 with that assistant message
    {"status": 429, "retry_after": 0.05}     an error status (optional Retry-After header)
    {"status": 500}
    {"hang": 5.0}                            sleep before answering (to test client timeouts)
    {"content": "...", "delay": 0.1}         answer after a delay

Every request body is kept in `server.requests` (parsed JSON) for assertions.

    with FakeOpenAI(script=[{"status": 429}, {"content": "{...}"}]) as srv:
        client(base_url=srv.base_url) ...
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeOpenAI:
    def __init__(
        self,
        script: list[dict[str, Any]] | None = None,
        handler: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        model: str = "fake-vlm",
    ) -> None:
        self.script = list(script or [])
        self.handler = handler
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------------------------------
    def _next_reply(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.requests.append(body)
            if self.script:
                return self.script.pop(0)
        if self.handler is not None:
            return self.handler(body)
        return {"status": 500, "content": "no scripted reply left"}

    def _make_handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    self._send(400, {"error": {"message": "bad json"}})
                    return
                with fake._lock:
                    fake.headers.append(dict(self.headers))
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                reply = fake._next_reply(body)
                if "hang" in reply:
                    time.sleep(float(reply["hang"]))
                if "delay" in reply:
                    time.sleep(float(reply["delay"]))
                status = int(reply.get("status", 200))
                if status != 200:
                    headers = {}
                    if "retry_after" in reply:
                        headers["Retry-After"] = str(reply["retry_after"])
                    self._send(status, {"error": {"message": reply.get("content", "error")}}, headers)
                    return
                self._send(
                    200,
                    {
                        "id": f"chatcmpl-{len(fake.requests)}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", fake.model),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": reply.get("content", "")},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    },
                )

            def _send(self, status: int, obj: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(obj).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

        return Handler

    # ----------------------------------------------------------------------------------------
    def start(self) -> FakeOpenAI:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._make_handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

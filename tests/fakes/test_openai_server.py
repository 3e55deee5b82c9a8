import json

import httpx

from tests.fakes.openai_server import FakeOpenAI


def test_scripted_replies_in_order():
    with FakeOpenAI(script=[{"status": 429, "retry_after": 0}, {"content": '{"a": 1}'}]) as srv:
        url = srv.base_url + "/chat/completions"
        r1 = httpx.post(url, json={"model": "m", "messages": []})
        assert r1.status_code == 429 and r1.headers["retry-after"] == "0"
        r2 = httpx.post(url, json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert r2.status_code == 200
        assert json.loads(r2.json()["choices"][0]["message"]["content"]) == {"a": 1}
        assert srv.requests[1]["messages"][0]["content"] == "hi"

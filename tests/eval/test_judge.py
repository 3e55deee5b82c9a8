import base64
import json
import time

import pytest

from tests.eval.helpers import png_bytes, reply
from tests.fakes.openai_server import FakeOpenAI
from vincie_cli.eval.judge import (
    ChatClient,
    JudgeConfig,
    JudgeError,
    ReplyError,
    image_data_url,
    parse_judgement,
    user_content,
)

# --------------------------------------------------------------------------------------------
# reply parsing


@pytest.mark.parametrize(
    "text, pf, c",
    [
        ('{"reason": "ok", "prompt_following": 8, "consistency": 7}', 8, 7),
        ('```json\n{"reason": "ok", "prompt_following": 9, "consistency": 3}\n```', 9, 3),
        # what the official scorer accepts through ast.literal_eval: a Python dict
        ("{'reason': 'ok', 'prompt_following': 7, 'consistency': 10}", 7, 10),
        ('Here is my judgement.\n{"reason": "the hat is red", "prompt_following": 6, "consistency": 9}\nThanks!', 6, 9),
        (
            '<think>maybe {"prompt_following": 1, "consistency": 1}</think>\n'
            '```json\n{"prompt_following": 4, "consistency": 5}\n```',
            4,
            5,
        ),
        ('{"reason": "x", "prompt_following": "7", "consistency": "8/10"}', 7, 8),
        ('{"reason": "x", "Prompt Following": 7.0, "consistency": 0}', 7, 0),
        (
            'Format: {"reason": "...", "prompt_following": 0}. '
            'Answer: {"reason": "good", "prompt_following": 10, "consistency": 2}',
            10,
            2,
        ),
        ('{"evaluation": {"prompt_following": 5, "consistency": 6, "reason": "nested"}}', 5, 6),
        ('{"reason": "braces } and { in text", "prompt_following": 3, "consistency": 4}', 3, 4),
        ('The {cat\'s} hat. {"reason": "ok", "prompt_following": 2, "consistency": 8}', 2, 8),  # stray quote in braces
    ],
)
def test_parse_judgement_accepts(text, pf, c):
    got = parse_judgement(text)
    assert (got["prompt_following"], got["consistency"]) == (pf, c)
    assert isinstance(got["reason"], str)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty reply"),
        ("I think it is good, 8 out of 10.", "no JSON object"),
        ('{"reason": "x", "prompt_following": 11, "consistency": 5}', "prompt_following=11 outside 0..10"),
        ('{"reason": "x", "prompt_following": 5, "consistency": -1}', "consistency=-1 outside 0..10"),
        ('{"reason": "x", "prompt_following": 6.5, "consistency": 5}', "not a whole number"),
        ('{"reason": "x", "prompt_following": true, "consistency": 5}', "not a number"),
        ('{"reason": "x", "prompt_following": "high", "consistency": 5}', "not a number"),
        ('{"reason": "x", "prompt_following": 5}', "lacks consistency"),
        ('{"reason": "x", "prompt_following": 5, "consistency": 5', "no JSON object"),
    ],
)
def test_parse_judgement_rejects(text, message):
    with pytest.raises(ReplyError, match=message):
        parse_judgement(text)


def test_user_content_labels_real_mime_types():
    png, jpg = png_bytes((1, 2, 3)), png_bytes((1, 2, 3), fmt="JPEG")
    parts = user_content("judge this", [png, jpg])
    assert parts[0] == {"type": "text", "text": "judge this"}
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert parts[2]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert base64.b64decode(image_data_url(png).split(",", 1)[1]) == png


# --------------------------------------------------------------------------------------------
# the HTTP client against a real local server


def _client(srv, sleeps=None, **kw):
    cfg = JudgeConfig(base_url=srv.base_url, model="judge-x", api_key="sk-test-123", backoff=0.001, **kw)
    return ChatClient(cfg, sleep=(sleeps.append if sleeps is not None else time.sleep))


def test_valid_reply_and_request_shape():
    with FakeOpenAI(script=[{"content": reply(8, 9)}]) as srv, _client(srv) as client:
        text = client.complete(user_content("hello", [png_bytes((0, 0, 0))]))
        assert parse_judgement(text)["prompt_following"] == 8
        body = srv.requests[0]
        assert body["model"] == "judge-x"
        assert body["messages"][0]["role"] == "user"
        assert [p["type"] for p in body["messages"][0]["content"]] == ["text", "image_url"]
        assert "temperature" not in body and "max_tokens" not in body
        assert srv.headers[0]["Authorization"] == "Bearer sk-test-123"


def test_429_honours_retry_after_then_succeeds():
    sleeps: list[float] = []
    script = [{"status": 429, "retry_after": 0.25}, {"status": 429}, {"content": reply(7, 7)}]
    with FakeOpenAI(script=script) as srv, _client(srv, sleeps) as client:
        assert parse_judgement(client.complete(user_content("x", [])))["consistency"] == 7
    assert len(srv.requests) == 3
    assert sleeps[0] == 0.25  # the server's Retry-After
    assert 0.0005 <= sleeps[1] <= 0.002  # exponential backoff with jitter: backoff * 2**1 * [0.5, 1]


def test_500_and_hang_are_retried():
    script = [{"status": 500}, {"hang": 1.0}, {"status": 503}, {"content": reply(5, 5)}]
    with FakeOpenAI(script=script) as srv, _client(srv, timeout=0.3) as client:
        assert parse_judgement(client.complete(user_content("x", [])))["prompt_following"] == 5
        assert client.requests_sent == 4  # the 500, the hang (given up after 0.3 s), the 503, then the reply


def test_gives_up_after_max_attempts():
    with FakeOpenAI(script=[{"status": 500, "content": "boom"}] * 3) as srv, _client(srv, max_attempts=3) as client:
        with pytest.raises(JudgeError, match=r"HTTP 500: boom \(gave up after 3 attempts\)") as e:
            client.complete(user_content("x", []))
        assert len(srv.requests) == 3
        assert "sk-test-123" not in str(e.value)


def test_non_retryable_status_fails_at_once():
    with (
        FakeOpenAI(script=[{"status": 401, "content": "bad key"}, {"content": reply(1, 1)}]) as srv,
        _client(srv) as client,
    ):
        with pytest.raises(JudgeError, match="HTTP 401: bad key") as e:
            client.complete(user_content("x", []))
        assert e.value.status == 401
        assert len(srv.requests) == 1


def test_no_key_no_authorization_header():
    with FakeOpenAI(script=[{"content": "{}"}]) as srv:
        with ChatClient(JudgeConfig(base_url=srv.base_url, model="m")) as client:
            client.complete(user_content("x", []))
        assert "Authorization" not in srv.headers[0]
        assert json.loads(json.dumps(JudgeConfig(base_url="u", model="m", api_key="k").public()))["api_key_set"] is True
        assert "sk-secret-zz" not in repr(JudgeConfig(base_url="u", model="m", api_key="sk-secret-zz"))

"""Retry policy shared by every client of an OpenAI-compatible endpoint (annotate's VLM backend, eval's judge)."""

from __future__ import annotations

import email.utils
import random
import time

# Statuses worth another try: timeouts, conflicts, rate limits and server-side failures (incl. proxies').
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524})


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_delay(
    attempt: int, base: float, cap: float, retry_after: float | None, max_retry_after: float, rng: random.Random
) -> float:
    """The wait before retry `attempt` (0-based): the server's Retry-After (capped) when given, else exponential
    backoff base·2^attempt (capped) jittered within [half, full] so concurrent clients spread out."""
    if retry_after is not None:
        return min(retry_after, max_retry_after)
    return min(cap, base * (2**attempt)) * rng.uniform(0.5, 1.0)

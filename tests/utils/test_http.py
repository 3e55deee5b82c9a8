import random
import time
from email.utils import formatdate

from vincie_cli.utils.http import backoff_delay, parse_retry_after


def test_parse_retry_after():
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("-3") == 0.0
    assert 8 <= parse_retry_after(formatdate(time.time() + 10, usegmt=True)) <= 10


def test_backoff_delay_doubles_caps_and_honours_retry_after():
    rng = random.Random(0)
    delays = [backoff_delay(a, 1.0, 5.0, None, 60.0, rng) for a in range(5)]
    for a, d in enumerate(delays):
        full = min(5.0, 2.0**a)
        assert full / 2 <= d <= full
    assert backoff_delay(3, 1.0, 5.0, 2.0, 60.0, rng) == 2.0
    assert backoff_delay(3, 1.0, 5.0, 900.0, 60.0, rng) == 60.0

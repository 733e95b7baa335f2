"""Tests of features.writer.next_event_times: write-back event times that Feast will not drop."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from features.writer import next_event_times

NOW = datetime(2025, 3, 4, 5, 6, 7, 500000, tzinfo=timezone.utc)
TICK = timedelta(microseconds=1)


def test_event_time_now_without_previous() -> None:
    assert next_event_times(["a"], [None], now=NOW) == [NOW]


def test_event_time_now_after_older_previous() -> None:
    assert next_event_times(["a"], [NOW - timedelta(seconds=3)], now=NOW) == [NOW]


def test_event_time_after_equal_previous() -> None:
    assert next_event_times(["a"], [NOW], now=NOW) == [NOW + TICK]


def test_event_time_after_future_previous() -> None:
    future = NOW + timedelta(hours=2)
    assert next_event_times(["a"], [future], now=NOW) == [future + TICK]


def test_event_time_naive_previous_is_utc() -> None:
    naive = (NOW + timedelta(seconds=1)).replace(tzinfo=None)
    (moment,) = next_event_times(["a"], [naive], now=NOW)
    assert moment == NOW + timedelta(seconds=1) + TICK
    assert moment.tzinfo is timezone.utc


def test_event_time_repeated_product_increases() -> None:
    times = next_event_times(["a", "b", "a", "a"], [None, None, None, None], now=NOW)
    assert times[0] == NOW
    assert times[1] == NOW
    assert times[2] == NOW + TICK
    assert times[3] == NOW + 2 * TICK

"""Unit tests of services.common.batching.DynamicBatcher with a forward function that records its batches."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from services.common.batching import BatchingConfig, DynamicBatcher
from services.common.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    ResourceExhaustedError,
    ServiceError,
    UnavailableError,
)

WAIT_S = 10.0


class RecordingForward:
    """Forward function that multiplies each item by 10 and records every batch it receives.

    While `gate` is clear, a batch waits in the forward pass, which keeps the worker busy so that
    tests can fill the queue. Batches whose 1-based number is in `failing_batches` raise.
    """

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.failing_batches: set[int] = set()
        self.error: Exception = RuntimeError("simulated forward failure")

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.started.set()
        if not self.gate.wait(WAIT_S):
            raise RuntimeError("the test never opened the gate")
        if len(self.batches) in self.failing_batches:
            raise self.error
        return [10 * item for item in items]

    def hold(self) -> None:
        """Make the next batch wait in the forward pass until `release`."""
        self.gate.clear()
        self.started.clear()

    def release(self) -> None:
        self.gate.set()


def make_config(
    *,
    max_batch_size: int = 8,
    preferred_batch_size: int | None = None,
    max_queue_delay_s: float = 0.002,
    max_queued_items: int = 64,
) -> BatchingConfig:
    return BatchingConfig(
        max_batch_size=max_batch_size,
        preferred_batch_size=preferred_batch_size or max_batch_size,
        max_queue_delay_s=max_queue_delay_s,
        max_queued_items=max_queued_items,
    )


@pytest.fixture
def forward() -> RecordingForward:
    return RecordingForward()


@pytest.fixture
def make_batcher(forward: RecordingForward) -> Iterator:
    created: list[DynamicBatcher[int, int]] = []

    def make(**limits: Any) -> DynamicBatcher[int, int]:
        batcher: DynamicBatcher[int, int] = DynamicBatcher(
            forward, make_config(**limits), name="test encoder"
        )
        created.append(batcher)
        return batcher

    yield make
    forward.release()
    for batcher in created:
        batcher.stop(WAIT_S)


def start_blocking_batch(batcher: DynamicBatcher[int, int], forward: RecordingForward) -> Future[list[int]]:
    """Submit one item and return once its batch waits in the forward pass."""
    forward.hold()
    future = batcher.submit([0])
    assert forward.started.wait(WAIT_S)
    return future


def wait_until_queued(batcher: DynamicBatcher[int, int], item_count: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while batcher.queued_items != item_count:
        assert time.monotonic() < deadline, f"{batcher.queued_items} items queued, expected {item_count}"
        time.sleep(0.005)


def test_concurrent_results_in_order(make_batcher, forward: RecordingForward) -> None:
    batcher = make_batcher(max_batch_size=8, max_queue_delay_s=0.02)
    barrier = threading.Barrier(16)

    def client(seed: int) -> list[tuple[list[int], list[int]]]:
        rng = random.Random(seed)
        barrier.wait(WAIT_S)
        calls = []
        for _ in range(3):
            request = [rng.randrange(1000) for _ in range(rng.randint(1, 3))]
            calls.append((request, batcher.submit(request).result(WAIT_S)))
        return calls

    with ThreadPoolExecutor(max_workers=16) as pool:
        calls = [call for client_calls in pool.map(client, range(16)) for call in client_calls]

    for request, result in calls:
        assert result == [10 * item for item in request]
    assert sum(len(batch) for batch in forward.batches) == sum(len(request) for request, _ in calls)
    assert len(forward.batches) < len(calls)
    assert max(len(batch) for batch in forward.batches) <= 8


def test_queued_calls_share_forward(make_batcher, forward: RecordingForward) -> None:
    batcher = make_batcher(max_batch_size=16, preferred_batch_size=10, max_queue_delay_s=30.0)

    futures = [batcher.submit([index, index + 100]) for index in range(5)]

    for index, future in enumerate(futures):
        assert future.result(WAIT_S) == [10 * index, 10 * (index + 100)]
    assert forward.batches == [[0, 100, 1, 101, 2, 102, 3, 103, 4, 104]]


def test_batch_takes_whole_calls(make_batcher, forward: RecordingForward) -> None:
    batcher = make_batcher(max_batch_size=4, max_queue_delay_s=0.001)
    first = start_blocking_batch(batcher, forward)

    futures = [batcher.submit(items) for items in ([1, 2, 3], [4, 5], [6, 7], [8])]
    wait_until_queued(batcher, 8)
    forward.release()

    assert first.result(WAIT_S) == [0]
    assert [future.result(WAIT_S) for future in futures] == [[10, 20, 30], [40, 50], [60, 70], [80]]
    assert forward.batches == [[0], [1, 2, 3], [4, 5, 6, 7], [8]]


def test_lone_call_waits_queue_delay(make_batcher, forward: RecordingForward) -> None:
    batcher = make_batcher(max_batch_size=8, max_queue_delay_s=0.2)

    started = time.monotonic()
    assert batcher.submit([1]).result(WAIT_S) == [10]

    assert time.monotonic() - started >= 0.2


def test_expired_deadline_skips_forward(make_batcher, forward: RecordingForward) -> None:
    batcher = make_batcher(max_batch_size=4)
    first = start_blocking_batch(batcher, forward)

    expiring = batcher.submit([1, 2], deadline=time.monotonic() + 0.05)
    live_call = batcher.submit([3], deadline=time.monotonic() + WAIT_S)
    time.sleep(0.1)
    forward.release()

    with pytest.raises(DeadlineExceededError, match=r"deadline passed after .* ms in the test encoder's"):
        expiring.result(WAIT_S)
    assert live_call.result(WAIT_S) == [30]
    assert first.result(WAIT_S) == [0]
    assert forward.batches == [[0], [3]]


def test_cancelled_call_dropped(make_batcher, forward: RecordingForward) -> None:
    batcher = make_batcher(max_batch_size=4)
    start_blocking_batch(batcher, forward)

    cancelled = batcher.submit([1, 2])
    live_call = batcher.submit([3])
    assert cancelled.cancel()
    # The cancelled call leaves the queue at once and frees its room.
    assert batcher.queued_items == 1
    forward.release()

    assert live_call.result(WAIT_S) == [30]
    assert cancelled.cancelled()
    assert forward.batches == [[0], [3]]
    assert batcher.queued_items == 0


def test_full_queue_rejects_call(make_batcher, forward: RecordingForward) -> None:
    batcher = make_batcher(max_batch_size=2, max_queued_items=4)
    first = start_blocking_batch(batcher, forward)
    queued = [batcher.submit([1, 2]), batcher.submit([3, 4])]

    with pytest.raises(ResourceExhaustedError) as raised:
        batcher.submit([5])
    with pytest.raises(ResourceExhaustedError):
        batcher.check_room(1)
    batcher.check_room(0)

    assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue contains 4 of at most 4 items" in raised.value.message
    forward.release()
    assert first.result(WAIT_S) == [0]
    assert [future.result(WAIT_S) for future in queued] == [[10, 20], [30, 40]]
    assert batcher.submit([5]).result(WAIT_S) == [50]


def test_forward_error_fails_one_batch(make_batcher, forward: RecordingForward) -> None:
    batcher = make_batcher(max_batch_size=4)
    first = start_blocking_batch(batcher, forward)
    forward.failing_batches = {2}
    failing = [batcher.submit([1]), batcher.submit([2, 3])]
    wait_until_queued(batcher, 3)
    forward.release()

    assert first.result(WAIT_S) == [0]
    for future in failing:
        error = future.exception(WAIT_S)
        assert type(error) is ServiceError
        assert error.code == grpc.StatusCode.INTERNAL
        assert "forward pass failed for the batch holding this call; see the server log" in error.message
        assert isinstance(error.__cause__, RuntimeError)
    assert failing[0].exception() is not failing[1].exception()
    # The worker keeps serving after the failed batch.
    assert batcher.submit([4]).result(WAIT_S) == [40]
    assert forward.batches == [[0], [1, 2, 3], [4]]


def test_forward_service_error_kept(make_batcher, forward: RecordingForward) -> None:
    batcher = make_batcher(max_batch_size=4)
    forward.failing_batches = {1}
    forward.error = InvalidArgumentError("items[0] is invalid")

    error = batcher.submit([1]).exception(WAIT_S)

    assert type(error) is InvalidArgumentError
    assert error.message == "items[0] is invalid"


def test_wrong_result_count_fails_batch() -> None:
    batcher: DynamicBatcher[int, int] = DynamicBatcher(
        lambda items: items[:-1], make_config(), name="test encoder"
    )

    error = batcher.submit([1, 2]).exception(WAIT_S)
    batcher.stop(WAIT_S)

    assert type(error) is ServiceError
    assert isinstance(error.__cause__, RuntimeError)
    assert "returned 1 results for 2 items" in str(error.__cause__)


def test_stop_runs_queued_calls(make_batcher, forward: RecordingForward) -> None:
    batcher = make_batcher(max_batch_size=2, max_queue_delay_s=30.0)
    forward.hold()
    # A full batch starts at once, whatever the queue delay.
    first = batcher.submit([0, 0])
    assert forward.started.wait(WAIT_S)
    queued = [batcher.submit([1, 2]), batcher.submit([3])]

    stopper = threading.Thread(target=batcher.stop, args=(WAIT_S,))
    stopper.start()
    time.sleep(0.05)
    with pytest.raises(UnavailableError, match="the test encoder is stopping"):
        batcher.submit([4])
    forward.release()
    stopper.join(WAIT_S)

    assert not stopper.is_alive()
    assert first.result(0) == [0, 0]
    # The last call is alone in its batch, yet it does not wait the 30 s queue delay.
    assert [future.result(0) for future in queued] == [[10, 20], [30]]


@pytest.mark.parametrize("items", [[], list(range(9))])
def test_call_size_outside_limits(make_batcher, items: list[int]) -> None:
    batcher = make_batcher(max_batch_size=8)

    with pytest.raises(InvalidArgumentError, match="must contain from 1 to 8 items"):
        batcher.submit(items)


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"max_batch_size": 0, "preferred_batch_size": 1}, "max_batch_size must be at least 1"),
        ({"max_batch_size": 4, "preferred_batch_size": 5}, "preferred_batch_size must be from 1 to"),
        ({"max_queue_delay_s": -1.0}, "max_queue_delay_s must be at least 0"),
        ({"max_batch_size": 8, "max_queued_items": 7}, r"max_queued_items \(7\) must be at least"),
    ],
)
def test_config_invalid(limits: dict, message: str) -> None:
    values: dict[str, Any] = {
        "max_batch_size": 8,
        "preferred_batch_size": 8,
        "max_queue_delay_s": 0.0,
        "max_queued_items": 8,
    }
    values.update(limits)

    with pytest.raises(ValueError, match=message):
        BatchingConfig(**values)

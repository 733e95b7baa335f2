"""Dynamic batching: the items of concurrent calls are queued and embedded in one forward pass.

A `DynamicBatcher` owns one worker thread. gRPC handler threads decode and validate their request,
then `call()` queues its items and waits. The worker takes whole calls in arrival order until the
batch would exceed `max_batch_size`. It dispatches a batch as soon as `preferred_batch_size` items
are queued, or when the oldest queued call has waited `max_queue_delay_s`. It then runs the forward
pass once on the concatenated items and hands each call its own slice of the output, in order.

Failures, each a `ServiceError` with its gRPC status:

    queue full (max_queued_items)            ResourceExhaustedError   before anything is queued
    batcher stopped                          UnavailableError
    deadline passed while queued             DeadlineExceededError    no forward-pass time is spent
    call cancelled while queued              CallCancelledError       the items are dropped
    forward pass raised                      every call of that batch fails, the worker continues
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc

from services.common.errors import (
    CallCancelledError,
    DeadlineExceededError,
    InvalidArgumentError,
    ResourceExhaustedError,
    ServiceError,
    UnavailableError,
)

logger = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


@dataclass(frozen=True)
class BatchingConfig:
    """Limits of one dynamic batcher. Sizes count items (images or texts), not calls."""

    max_batch_size: int
    """Maximum number of items in one forward pass, and in one call."""
    preferred_batch_size: int
    """Queued items at which a batch is dispatched without waiting for `max_queue_delay_s`."""
    max_queue_delay_s: float
    """Maximum time in seconds that the oldest queued call waits for more calls to join its batch."""
    max_queued_items: int
    """Maximum number of items waiting in the queue. A call that does not fit gets RESOURCE_EXHAUSTED."""

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {self.max_batch_size}")
        if not 1 <= self.preferred_batch_size <= self.max_batch_size:
            raise ValueError(
                f"preferred_batch_size must be from 1 to max_batch_size ({self.max_batch_size}), "
                f"got {self.preferred_batch_size}"
            )
        if self.max_queue_delay_s < 0:
            raise ValueError(f"max_queue_delay_s must be at least 0, got {self.max_queue_delay_s}")
        if self.max_queued_items < self.max_batch_size:
            raise ValueError(
                f"max_queued_items ({self.max_queued_items}) must be at least max_batch_size "
                f"({self.max_batch_size}), or a call of max_batch_size items could never be queued"
            )


@dataclass(eq=False)
class _Submission(Generic[ItemT, ResultT]):
    """One call's items in the queue, with the future its handler thread waits on.

    Submissions compare by identity, so removing one from the queue never removes an equal one.
    """

    items: Sequence[ItemT]
    future: Future[list[ResultT]]
    enqueued_at: float  # time.monotonic() seconds
    deadline: float | None  # time.monotonic() seconds, or None when the call has no deadline


class DynamicBatcher(Generic[ItemT, ResultT]):
    """Queue the items of concurrent calls and run `forward` once per batch in a worker thread.

    `forward` takes the items of a batch and returns one result per item, in order. It only ever runs
    in the worker thread, so it needs no lock of its own. `name` is the service's name for logs and
    messages, for example "image encoder".
    """

    def __init__(
        self,
        forward: Callable[[list[ItemT]], Sequence[ResultT]],
        config: BatchingConfig,
        *,
        name: str,
    ) -> None:
        self._forward = forward
        self.config = config
        self._name = name
        self._queue: deque[_Submission[ItemT, ResultT]] = deque()
        self._queued_items = 0
        self._stopping = False
        self._condition = threading.Condition()
        self._worker = threading.Thread(target=self._serve, name=f"{name} batcher", daemon=True)
        self._worker.start()

    @property
    def queued_items(self) -> int:
        """Items waiting in the queue, not counting the batch whose forward pass is running."""
        with self._condition:
            return self._queued_items

    def check_room(self, item_count: int) -> None:
        """Raise ResourceExhaustedError when `item_count` more items do not fit in the queue now.

        Handlers call it before decoding, so an overloaded server rejects calls before doing any
        work for them. `submit` checks again, because other calls may be queued in between.
        """
        with self._condition:
            self._check_room_locked(item_count)

    def submit(self, items: Sequence[ItemT], *, deadline: float | None = None) -> Future[list[ResultT]]:
        """Queue `items` and return a future of their results, in the order of `items`.

        `deadline` is a time.monotonic() value. The future fails with DeadlineExceededError when the
        deadline passes before the batch holding the items starts, and cancelling the future drops
        them from the queue. Raises InvalidArgumentError for an empty or oversized list,
        ResourceExhaustedError when the queue is full and UnavailableError after `stop`.
        """
        if not 1 <= len(items) <= self.config.max_batch_size:
            raise InvalidArgumentError(
                f"a call to the {self._name} must contain from 1 to {self.config.max_batch_size} items, "
                f"got {len(items)}"
            )
        future: Future[list[ResultT]] = Future()
        submission = _Submission(items, future, time.monotonic(), deadline)
        with self._condition:
            if self._stopping:
                raise UnavailableError(f"the {self._name} is stopping; send the call to another replica")
            self._check_room_locked(len(items))
            self._queue.append(submission)
            self._queued_items += len(items)
            self._condition.notify()
        # Registered after queueing, so a cancel frees the queue space at once. The callback also
        # runs when the future gets its result, and then does nothing.
        future.add_done_callback(lambda _future: self._remove_if_cancelled(submission))
        return future

    def call(self, items: Sequence[ItemT], context: grpc.ServicerContext) -> list[ResultT]:
        """Queue `items` for the gRPC call `context` and wait for their results.

        The queued items are dropped when the call ends first, by cancellation or by its deadline.
        Raises the errors of `submit`, DeadlineExceededError, CallCancelledError, or the error of a
        failed forward pass.
        """
        remaining_s = _time_remaining_s(context)
        deadline = None if remaining_s is None else time.monotonic() + remaining_s
        future = self.submit(items, deadline=deadline)
        # gRPC runs the callbacks when the call ends for any reason. A future whose batch already
        # started ignores the cancel, and one that is queued leaves the queue without a forward pass.
        if not context.add_callback(future.cancel):
            future.cancel()

        try:
            return future.result(timeout=remaining_s)
        except TimeoutError:
            future.cancel()
            raise DeadlineExceededError(
                f"the call's deadline passed while it waited for the {self._name}'s forward pass"
            ) from None
        except CancelledError:
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceededError(
                    f"the call's deadline passed while it waited in the {self._name}'s queue"
                ) from None
            raise CallCancelledError(
                f"the call ended while it waited in the {self._name}'s queue, so its items were dropped"
            ) from None

    def stop(self, timeout_s: float | None = None) -> None:
        """Reject new calls, run the queued ones without further delay, and wait for the worker.

        Waits at most `timeout_s` seconds (None: until done) and logs a warning when the worker is
        still running then. The worker thread is a daemon, so it never keeps the process alive.
        """
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        self._worker.join(timeout_s)
        if self._worker.is_alive():
            logger.warning(
                "%s batcher still running after %.1f s; %d queued items may be lost",
                self._name,
                timeout_s,
                self.queued_items,
            )

    def _check_room_locked(self, item_count: int) -> None:
        if self._queued_items + item_count > self.config.max_queued_items:
            raise ResourceExhaustedError(
                f"the {self._name}'s queue contains {self._queued_items} of at most "
                f"{self.config.max_queued_items} items, so the {item_count} items of this call do not "
                "fit; retry after a short wait or send fewer calls at once"
            )

    def _remove_if_cancelled(self, submission: _Submission[ItemT, ResultT]) -> None:
        if not submission.future.cancelled():
            return
        with self._condition:
            try:
                self._queue.remove(submission)
            except ValueError:
                return  # The worker popped it already and accounted for its items.
            self._queued_items -= len(submission.items)

    def _serve(self) -> None:
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                if batch:
                    self._run(batch)
        finally:
            # Reached on stop with an empty queue, or when the worker dies of an error outside the
            # forward pass. Then no queued call may wait forever.
            self._fail_queued()

    def _next_batch(self) -> list[_Submission[ItemT, ResultT]] | None:
        """Wait until a batch is due and take it; None once stopped with an empty queue.

        Returns an empty list when every call it took had expired or was cancelled.
        """
        with self._condition:
            while True:
                if not self._queue:
                    if self._stopping:
                        return None
                    self._condition.wait()
                    continue
                if not self._stopping and self._queued_items < self.config.preferred_batch_size:
                    waited_s = time.monotonic() - self._queue[0].enqueued_at
                    if waited_s < self.config.max_queue_delay_s:
                        self._condition.wait(self.config.max_queue_delay_s - waited_s)
                        continue
                return self._take_batch_locked()

    def _take_batch_locked(self) -> list[_Submission[ItemT, ResultT]]:
        """Pop whole calls in arrival order while they fit in max_batch_size items."""
        now = time.monotonic()
        batch: list[_Submission[ItemT, ResultT]] = []
        batch_items = 0
        while self._queue:
            submission = self._queue[0]
            live = not submission.future.cancelled()
            if live and batch_items + len(submission.items) > self.config.max_batch_size:
                break
            self._queue.popleft()
            self._queued_items -= len(submission.items)
            # set_running_or_notify_cancel is False for a future that its call cancelled meanwhile.
            if not live or not submission.future.set_running_or_notify_cancel():
                continue
            if submission.deadline is not None and now >= submission.deadline:
                waited_ms = 1000 * (now - submission.enqueued_at)
                submission.future.set_exception(
                    DeadlineExceededError(
                        f"the call's deadline passed after {waited_ms:.1f} ms in the {self._name}'s "
                        "queue, before its forward pass started"
                    )
                )
                continue
            batch.append(submission)
            batch_items += len(submission.items)
        return batch

    def _run(self, batch: list[_Submission[ItemT, ResultT]]) -> None:
        items = [item for submission in batch for item in submission.items]
        started = time.monotonic()
        try:
            results = self._forward(items)
            if len(results) != len(items):
                raise RuntimeError(f"the forward pass returned {len(results)} results for {len(items)} items")
        except Exception as error:
            # The worker must survive a failed batch. The error is logged here with its traceback,
            # and every call of the batch gets a new error of its own to raise in its handler thread.
            logger.exception(
                "%s: forward pass of %d items from %d calls failed", self._name, len(items), len(batch)
            )
            for submission in batch:
                submission.future.set_exception(_error_for_call(error, self._name))
            return

        offset = 0
        for submission in batch:
            count = len(submission.items)
            submission.future.set_result(list(results[offset : offset + count]))
            offset += count
        logger.debug(
            "%s: batch of %d items from %d calls ran in %.1f ms; the oldest call waited %.1f ms",
            self._name,
            len(items),
            len(batch),
            1000 * (time.monotonic() - started),
            1000 * (started - batch[0].enqueued_at),
        )

    def _fail_queued(self) -> None:
        with self._condition:
            self._stopping = True
            left = list(self._queue)
            self._queue.clear()
            self._queued_items = 0
        for submission in left:
            if submission.future.set_running_or_notify_cancel():
                submission.future.set_exception(
                    UnavailableError(f"the {self._name} stopped before the call's batch ran")
                )


def _time_remaining_s(context: grpc.ServicerContext) -> float | None:
    """Return the seconds left until the call's deadline, or None when it has none.

    grpcio 1.85 reports a call without a deadline as about 9.2e18 seconds remaining, which is
    longer than the longest wait that threading accepts.
    """
    remaining_s = context.time_remaining()
    if remaining_s is None or remaining_s >= threading.TIMEOUT_MAX:
        return None
    return float(remaining_s)


def _error_for_call(error: Exception, name: str) -> ServiceError:
    if isinstance(error, ServiceError):
        copied = type(error)(error.message)
    else:
        # Internal details stay in the server log, as for any other unexpected error.
        copied = ServiceError(
            f"the {name}'s forward pass failed for the batch holding this call; see the server log"
        )
    copied.__cause__ = error
    return copied

"""Micro-batching: requests from many clients join one pipeline call, merchants served in turn.

One worker thread owns the model. It takes a waiting request, waits up to ``max_wait`` seconds for more
until ``max_images`` images are asked for, and runs them together (the condition is per sample, so
merchants mix freely). Each request belongs to a lane (its merchant); the worker takes the oldest request
of the lane served least recently, so one merchant's burst waits behind the others' requests instead of
ahead of them: a request from a quiet merchant waits at most for the batch in progress. Both bounds
refuse at once rather than leave a caller to time out: ``queue_size`` requests waiting in all
(``Busy``), ``max_pending_per_lane`` waiting or running for one merchant (``TooMany``). A request whose
caller gave up before its batch started is dropped from the batch (its future is cancelled).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable


SERVED_KEPT = 1024
LANES_KEPT = 4096  # lanes whose last turn is remembered; beyond it, those not waiting are forgotten


class Busy(Exception):
    """The queue is full: try again shortly."""


class TooMany(Exception):
    """This lane (merchant) already has its share of requests waiting or running."""


@dataclass
class _Waiting:
    job: Any
    images: int
    lane: Hashable
    future: Future = field(default_factory=Future)


class MicroBatcher:
    def __init__(self, run: Callable[[list[Any]], list[Any]], max_images: int, max_wait: float, queue_size: int,
                 max_pending_per_lane: int | None = None):
        self._run, self.max_images, self.max_wait = run, max_images, max_wait
        self.queue_size, self.max_pending_per_lane = queue_size, max_pending_per_lane
        self._lanes: dict[Hashable, deque[_Waiting]] = {}
        self._last_served: dict[Hashable, int] = {}  # lane → the turn it was last served (absent: never)
        self._turns = itertools.count(1)
        self._pending: Counter = Counter()  # lane → requests waiting or running
        self._waiting = 0  # requests in the lanes
        self._changed = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="perfusion-batcher", daemon=True)
        self.batches = self.requests = 0  # pipeline calls and the requests they ran, for /v1/info
        self.served: deque[Hashable] = deque(maxlen=SERVED_KEPT)  # lanes in the order their requests ran, latest

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._thread.join(timeout=60)

    def submit(self, job: Any, images: int, lane: Hashable = None) -> Future:
        waiting = _Waiting(job, images, lane)
        with self._changed:
            if self.waiting >= self.queue_size:
                raise Busy
            if self.max_pending_per_lane is not None and self._pending[lane] >= self.max_pending_per_lane:
                raise TooMany
            self._pending[lane] += 1
            self._lanes.setdefault(lane, deque()).append(waiting)
            self._waiting += 1
            self._changed.notify()
        waiting.future.add_done_callback(lambda _: self._settled(lane))
        return waiting.future

    @property
    def waiting(self) -> int:
        return self._waiting

    def _settled(self, lane: Hashable) -> None:
        with self._changed:
            self._pending[lane] -= 1
            if self._pending[lane] <= 0:
                del self._pending[lane]

    def _take(self) -> _Waiting:
        """The oldest request of the lane served least recently (a lane never served first); the lock is held."""
        lane = min(self._lanes, key=lambda name: self._last_served.get(name, 0))
        queue = self._lanes[lane]
        item = queue.popleft()
        self._waiting -= 1
        if not queue:
            del self._lanes[lane]
        self._last_served[lane] = next(self._turns)
        if len(self._last_served) > LANES_KEPT:  # a forgotten lane counts as never served: at most one turn early
            self._last_served = {name: turn for name, turn in self._last_served.items() if name in self._lanes}
        return item

    def _next(self, deadline: float | None) -> _Waiting | None:
        """The next request, waiting for one until ``deadline`` (None: for ever); None when it passes or on stop."""
        with self._changed:
            while not self._lanes and not self._stopping:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._changed.wait(remaining)
            return None if self._stopping else self._take()

    def _loop(self) -> None:
        while True:
            first = self._next(None)
            if first is None:
                return
            batch, images = [first], first.images
            deadline = time.monotonic() + self.max_wait
            while images < self.max_images:
                item = self._next(deadline)
                if item is None:
                    break
                batch.append(item)
                images += item.images
            live = [item for item in batch if item.future.set_running_or_notify_cancel()]
            if live:
                self.batches += 1
                self.requests += len(live)
                self.served.extend(item.lane for item in live)
                try:
                    results = self._run([item.job for item in live])
                except BaseException as exc:  # noqa: BLE001 — every waiting caller hears of it
                    for item in live:
                        item.future.set_exception(exc)
                else:
                    for item, result in zip(live, results):
                        item.future.set_result(result)

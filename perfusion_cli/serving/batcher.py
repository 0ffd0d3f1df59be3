"""Micro-batching: requests from many clients join one pipeline call.

One worker thread owns the model. It takes the oldest waiting request, waits up to ``max_wait`` seconds
for more until ``max_images`` images are asked for, and runs them together (the condition is per
sample, so merchants mix freely). The queue is bounded: a request that finds it full is refused at
once (``Busy``) rather than left to time out. A request whose caller gave up before its batch started
is dropped from the batch (its future is cancelled).
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable


class Busy(Exception):
    """The queue is full: try again shortly."""


@dataclass
class _Waiting:
    job: Any
    images: int
    future: Future = field(default_factory=Future)


class MicroBatcher:
    def __init__(self, run: Callable[[list[Any]], list[Any]], max_images: int, max_wait: float, queue_size: int):
        self._run, self.max_images, self.max_wait = run, max_images, max_wait
        self._queue: queue.Queue[_Waiting | None] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._loop, name="perfusion-batcher", daemon=True)
        self.batches: list[int] = []  # requests per pipeline call, for /v1/info and the load benchmark

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)

    def submit(self, job: Any, images: int) -> Future:
        waiting = _Waiting(job, images)
        try:
            self._queue.put_nowait(waiting)
        except queue.Full:
            raise Busy from None
        return waiting.future

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, images = [first], first.images
            deadline = time.monotonic() + self.max_wait
            stop = False
            while images < self.max_images:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
                images += item.images
            live = [item for item in batch if item.future.set_running_or_notify_cancel()]
            if live:
                self.batches.append(len(live))
                try:
                    results = self._run([item.job for item in live])
                except BaseException as exc:  # noqa: BLE001 — every waiting caller hears of it
                    for item in live:
                        item.future.set_exception(exc)
                else:
                    for item, result in zip(live, results):
                        item.future.set_result(result)
            if stop:
                return

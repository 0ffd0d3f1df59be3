"""The micro-batcher's order of service and bounds, without a model: lanes (merchants) served least recently
first, a burst behind a quiet merchant's single request, batches filled across lanes, both bounds refused."""

import threading
import time

import pytest

from perfusion_cli.serving.batcher import Busy, MicroBatcher, TooMany


def recorder(gate=None):
    runs = []

    def run(jobs):
        if gate is not None:
            gate.wait(10)
        runs.append(list(jobs))
        return [f"done {job}" for job in jobs]

    return run, runs


def test_a_burst_waits_behind_the_other_merchants_single_requests():
    run, runs = recorder()
    batcher = MicroBatcher(run, max_images=1, max_wait=0.0, queue_size=64)
    futures = [batcher.submit(f"a{i}", 1, lane="A") for i in range(5)]
    futures += [batcher.submit("b0", 1, lane="B"), batcher.submit("c0", 1, lane="C")]
    batcher.start()
    assert [f.result(10) for f in futures][-1] == "done c0"
    batcher.stop()
    assert [jobs[0] for jobs in runs] == ["a0", "b0", "c0", "a1", "a2", "a3", "a4"]
    assert list(batcher.served) == ["A", "B", "C", "A", "A", "A", "A"]
    assert (batcher.batches, batcher.requests) == (7, 7)


def test_a_merchant_that_arrives_during_a_burst_is_next():
    gate = threading.Event()
    run, runs = recorder(gate)
    batcher = MicroBatcher(run, max_images=1, max_wait=0.0, queue_size=64)
    batcher.start()
    burst = [batcher.submit(f"a{i}", 1, lane="A") for i in range(4)]  # a0 runs (held at the gate), a1..a3 wait
    wait_until(lambda: batcher.waiting == 3)
    late = batcher.submit("b0", 1, lane="B")
    gate.set()
    assert late.result(10) == "done b0" and burst[-1].result(10) == "done a3"
    batcher.stop()
    assert [jobs[0] for jobs in runs] == ["a0", "b0", "a1", "a2", "a3"]


def test_a_batch_takes_one_request_of_each_merchant_before_a_second_of_any():
    run, runs = recorder()
    batcher = MicroBatcher(run, max_images=4, max_wait=0.05, queue_size=64)
    futures = [batcher.submit(f"a{i}", 1, lane="A") for i in range(6)] + [batcher.submit("b0", 1, lane="B"),
                                                                           batcher.submit("c0", 1, lane="C")]
    batcher.start()
    [f.result(10) for f in futures]
    batcher.stop()
    assert runs[0] == ["a0", "b0", "c0", "a1"] and runs[1] == ["a2", "a3", "a4", "a5"]


def test_each_merchant_has_a_bounded_share_and_the_queue_a_bounded_size():
    gate = threading.Event()
    run, runs = recorder(gate)
    batcher = MicroBatcher(run, max_images=1, max_wait=0.0, queue_size=3, max_pending_per_lane=2)
    a = [batcher.submit("a0", 1, lane="A"), batcher.submit("a1", 1, lane="A")]
    with pytest.raises(TooMany):
        batcher.submit("a2", 1, lane="A")
    b0 = batcher.submit("b0", 1, lane="B")
    with pytest.raises(Busy):  # three waiting in all
        batcher.submit("c0", 1, lane="C")
    assert a[1].cancel()  # a caller that gave up frees its merchant's share (not yet its queue place)
    batcher.start()  # a0 runs, held at the gate: the queue has room again
    wait_until(lambda: batcher.waiting == 2)
    a.append(batcher.submit("a2", 1, lane="A"))
    gate.set()
    assert [f.result(10) for f in (a[0], b0, a[2])] == ["done a0", "done b0", "done a2"]
    again = [batcher.submit(f"a{i}", 1, lane="A") for i in (3, 4)]  # the share is free once answered
    assert [f.result(10) for f in again] == ["done a3", "done a4"]
    batcher.stop()
    assert [jobs[0] for jobs in runs] == ["a0", "b0", "a2", "a3", "a4"]  # the cancelled a1 never ran


def wait_until(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)

"""ModelQueue: one job at a time in arrival order, a hard bound on waiting jobs, errors delivered."""

import threading

import pytest

from hydra_umm.serve.queue import ModelQueue, QueueFull


def test_bounded_queue_refuses_when_full_and_runs_jobs_in_order():
    queue = ModelQueue(depth=2)
    started, gate, order = threading.Event(), threading.Event(), []

    def blocker():
        started.set()
        gate.wait()
        return "first"

    first = queue.submit(blocker)
    started.wait()  # the worker holds the first job: the queue is empty again
    waiting = [queue.submit(lambda i=i: order.append(i) or i) for i in range(2)]
    assert queue.waiting == 2
    with pytest.raises(QueueFull, match=r"full \(2 requests waiting\)"):
        queue.submit(lambda: None)
    gate.set()
    assert first.result(timeout=30) == "first" and [f.result(timeout=30) for f in waiting] == [0, 1]
    assert order == [0, 1]
    assert queue.submit(lambda: "again").result(timeout=30) == "again"  # space again after draining
    queue.close()


def test_a_failing_job_reaches_its_caller_and_the_worker_goes_on():
    queue = ModelQueue(depth=1)
    with pytest.raises(ZeroDivisionError):
        queue.submit(lambda: 1 / 0).result(timeout=30)
    assert queue.submit(lambda: 7).result(timeout=30) == 7
    queue.close()


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth"):
        ModelQueue(depth=0)


def test_stream_yields_what_a_job_emits_while_it_runs():
    q = ModelQueue(depth=2)
    release = threading.Event()

    def job(emit):
        emit("first")
        if not release.wait(10):  # only the consumer, having seen "first", can release the job
            raise TimeoutError("the first item was not delivered while the job ran")
        emit("second")

    items = q.stream(job)
    assert next(items) == "first"
    release.set()
    assert list(items) == ["second"]

    def failing(emit):
        emit(1)
        raise ValueError("decoding broke")

    items = q.stream(failing)
    assert next(items) == 1
    with pytest.raises(ValueError, match="decoding broke"):
        next(items)
    q.close()

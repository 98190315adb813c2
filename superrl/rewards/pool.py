"""A pool of reward worker processes with a per-call time-out.

Why processes and not threads: a hung Python thread cannot be stopped, so a reward function stuck
in a loop would leak a thread (and its CPU) for the rest of the run; a process can be killed and
replaced. Workers run reward functions in their main thread, so math-verify's own signal-based
time-outs keep working inside them. Calls go out in chunks (one pipe message per chunk) and results
come back one per call, so the cost per cheap call stays in the tens of microseconds while the pool
still knows which call hangs: when a worker sends nothing for ``timeout_s`` seconds, its current
call is marked ``timeout``, the worker is killed and restarted, and the rest of its chunk is
re-queued. A worker that dies (segfault, ``sys.exit``) marks its current call ``crash`` likewise.

The default start method is ``forkserver``: forking the trainer itself (torch, gloo threads) is
unsafe, and ``spawn`` re-imports the entry module (megatron) in every new worker.
"""
import multiprocessing
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait

from superrl.rewards.worker import OK, worker_main

TIMEOUT, CRASH = "timeout", "crash"


@dataclass(frozen=True)
class CallResult:
    status: str  # ok | error | invalid | timeout | crash
    score: float = 0.0
    details: dict[str, float] = field(default_factory=dict)
    message: str = ""


class _Worker:
    def __init__(self, context, specs: list[str]):
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(target=worker_main, args=(child_conn, specs), daemon=True,
                                       name="superrl-reward-worker")
        self.process.start()
        child_conn.close()
        self.inflight: deque[tuple[int, str]] = deque()  # (slot, spec) of each call sent, in order
        self.deadline = float("inf")

    def wait_ready(self, timeout_s: float) -> None:
        if not self.conn.poll(timeout_s):
            self.kill()
            raise RuntimeError(f"reward worker did not start within {timeout_s:.0f}s")
        try:
            kind, message = self.conn.recv()
        except EOFError:
            self.process.join()
            raise RuntimeError(f"reward worker died on start-up (exit code {self.process.exitcode})") from None
        if kind != "ready":
            raise RuntimeError(f"reward worker could not load its reward functions: {message}")

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass  # already dead; kill() below reaps it
        self.process.join(timeout=5)
        self.kill()


class RewardWorkerPool:
    """Runs ``(spec, solution_str, ground_truth)`` calls in worker processes; never raises for a call."""

    def __init__(self, specs: Iterable[str], *, num_workers: int = 2, timeout_s: float = 10.0,
                 chunk_size: int = 64, start_method: str = "forkserver", startup_timeout_s: float = 120.0):
        if num_workers < 1 or chunk_size < 1 or timeout_s <= 0:
            raise ValueError("reward pool needs num_workers >= 1, chunk_size >= 1 and timeout_s > 0")
        self._context = multiprocessing.get_context(start_method)
        self._specs = sorted(set(specs))
        self._timeout_s, self._chunk_size, self._startup_timeout_s = timeout_s, chunk_size, startup_timeout_s
        self._workers = [_Worker(self._context, self._specs) for _ in range(num_workers)]
        for worker in self._workers:
            worker.wait_ready(startup_timeout_s)

    def run(self, calls: Sequence[tuple[str, object, object]]) -> list[CallResult]:
        if not self._workers:
            raise RuntimeError("the reward pool is closed")
        results: list[CallResult | None] = [None] * len(calls)
        pending = deque(range(len(calls)))
        chunk = max(1, min(self._chunk_size, -(-len(calls) // len(self._workers))))  # spread small batches
        while pending or any(worker.inflight for worker in self._workers):
            self._dispatch(calls, pending, chunk)
            self._collect(results, pending)
            self._expire(results, pending)
        return results

    def close(self) -> None:
        for worker in self._workers:
            worker.stop()
        self._workers = []

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _dispatch(self, calls, pending: deque, chunk: int) -> None:
        for index, worker in enumerate(self._workers):
            if worker.inflight or not pending:
                continue
            slots = [pending.popleft() for _ in range(min(chunk, len(pending)))]
            try:
                worker.conn.send([(slot, *calls[slot]) for slot in slots])
            except OSError:  # died while idle: replace it and give the chunk to the new worker
                worker = self._replace(index)
                worker.conn.send([(slot, *calls[slot]) for slot in slots])
            worker.inflight.extend((slot, calls[slot][0]) for slot in slots)
            worker.deadline = time.monotonic() + self._timeout_s

    def _collect(self, results: list, pending: deque) -> None:
        busy = [worker for worker in self._workers if worker.inflight]
        wait_s = max(0.0, min(worker.deadline for worker in busy) - time.monotonic())
        for conn in wait([worker.conn for worker in busy], timeout=wait_s):
            worker = next(worker for worker in busy if worker.conn is conn)
            self._drain(worker, results, pending)

    def _drain(self, worker: _Worker, results: list, pending: deque) -> None:
        while worker.inflight and worker.conn.poll():
            try:
                slot, status, payload = worker.conn.recv()
            except (EOFError, OSError):  # the worker died mid-call
                worker.process.join(timeout=5)  # reap it, so the exit code is known
                self._fail_current(worker, results, pending, CRASH,
                                   f"killed its worker process (exit code {worker.process.exitcode})")
                return
            worker.inflight.popleft()
            results[slot] = (CallResult(OK, payload[0], payload[1]) if status == OK
                             else CallResult(status, message=payload))
            worker.deadline = time.monotonic() + self._timeout_s

    def _expire(self, results: list, pending: deque) -> None:
        now = time.monotonic()
        for worker in self._workers:
            # A result that landed after the wait is not a time-out; the next _collect reads it.
            if worker.inflight and now >= worker.deadline and not worker.conn.poll():
                self._fail_current(worker, results, pending, TIMEOUT,
                                   f"did not return within reward.timeout_s={self._timeout_s}s")

    def _fail_current(self, worker: _Worker, results: list, pending: deque, status: str, reason: str) -> None:
        """Record a failed ``status`` for the worker's running call, re-queue its other calls, restart it."""
        slot, spec = worker.inflight.popleft()
        results[slot] = CallResult(status, message=f"{spec} {reason}")
        pending.extendleft(queued for queued, _ in reversed(worker.inflight))
        worker.inflight.clear()
        self._replace(self._workers.index(worker))

    def _replace(self, index: int) -> _Worker:
        self._workers[index].kill()
        self._workers[index] = _Worker(self._context, self._specs)
        self._workers[index].wait_ready(self._startup_timeout_s)
        return self._workers[index]

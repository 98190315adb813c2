"""Preemption: Slurm and Kubernetes send SIGTERM (Slurm's `--signal` sends SIGUSR1 first), then
SIGKILL after a grace period. The handler only notes the time; the ranks agree, through one
all-reduce at fixed points of every step, to save a checkpoint and exit with PREEMPTED_EXIT_CODE.

Two points per step:
* after the rollout, before the update: if the update and a save would not fit in what is left of
  `trainer.preemption_grace_s`, the step is dropped, so that the checkpoint is the last completed
  step's state (the weights are untouched until the update);
* after the step: save and exit.
"""
import signal
import time
from typing import Optional

import torch
import torch.distributed as dist

from superrl.algorithms.counts import comm_device

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later", i.e. resume with trainer.resume=true


class Preempted(Exception):
    """Raised after the preemption checkpoint is written; `superrl.train` exits with the code."""

    def __init__(self, checkpoint: str, signal_seconds_ago: float, dropped_step: Optional[int] = None):
        dropped = "" if dropped_step is None else f" (step {dropped_step} would not have ended in time: dropped)"
        super().__init__(f"preempted: saved {checkpoint} {signal_seconds_ago:.1f}s after the signal{dropped}; "
                         "continue with trainer.resume=true")
        self.checkpoint = checkpoint


class PreemptionWatch:
    def __init__(self, grace_s: float):
        self.grace_s = grace_s
        self._signaled_at: Optional[float] = None
        self._previous = {sig: signal.signal(sig, self._note) for sig in PREEMPTION_SIGNALS}

    def _note(self, signum, frame) -> None:
        if self._signaled_at is None:
            self._signaled_at = time.monotonic()

    def seconds_since_signal(self) -> Optional[float]:
        """Collective over the world: seconds since the earliest signal any rank got, or None."""
        local = -1.0 if self._signaled_at is None else time.monotonic() - self._signaled_at
        elapsed = torch.tensor([local], dtype=torch.float64, device=comm_device(None))
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        return None if elapsed.item() < 0 else elapsed.item()

    def fits(self, elapsed: float, seconds_needed: Optional[float]) -> bool:
        """Whether work estimated at `seconds_needed` (None: unknown, so no) ends within the grace."""
        return seconds_needed is not None and elapsed + seconds_needed <= self.grace_s

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

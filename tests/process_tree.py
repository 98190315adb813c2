"""Which processes a test started, found after the fact: the test's environment carries a unique
tag that every process it launches inherits (torchrun, its ranks, their forked helpers), even
once reparented to init when their parent dies. `/proc/<pid>/environ` shows it to root."""
import time
import uuid

import psutil

TAG_ENV = "SUPERRL_TEST_PROCESS_TAG"
GRACE_S = 10.0  # how long a test's processes may take to go away after it ends


def new_tag() -> str:
    return uuid.uuid4().hex


def tagged_processes(tag: str) -> list:
    """Live (not zombie) processes whose environment carries `tag`."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(TAG_ENV) == tag:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def describe(proc) -> str:
    try:
        return f"pid {proc.pid} (ppid {proc.ppid()}): {' '.join(proc.cmdline())[:200]}"
    except psutil.Error:
        return f"pid {proc.pid} (gone while listing)"


def survivors_after_grace(tag: str, grace_s: float = GRACE_S) -> list:
    """Descriptions of the tagged processes still alive `grace_s` after the call; they are killed."""
    deadline = time.monotonic() + grace_s
    alive = tagged_processes(tag)
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = tagged_processes(tag)
    described = [describe(p) for p in alive]
    for proc in alive:  # leave nothing behind for the next test either
        try:
            proc.kill()
        except psutil.Error:
            pass
    return described

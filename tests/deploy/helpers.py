"""What the local-stack tests share: the supervisor's output as text, waiting for a condition, and ending a process
with everything it started."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import time


class Capture(io.TextIOBase):
    """A stdout for the supervisor that tests can read while it runs."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def lines(self) -> list[str]:
        return self.text.splitlines()


def wait_for(
    predicate, timeout: float = 60.0, what: str = "condition", output: Capture | None = None, interval: float = 0.02
):
    """Poll `predicate` every `interval` s until it returns something true, and return that; fail after `timeout` s,
    with the end of `output` in the message if given. The default is a guard against a hang, not a speed target:
    Python processes starting on 2 busy cores (load average 4) took over 10 s, which failed a passing test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    said = f"; the stack said:\n{output.text[-6000:]}" if output is not None else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}{said}")


def end_process_tree(process: subprocess.Popen, grace: float = 10.0) -> None:
    """Make sure `process` and every process below it have ended: for a test's `finally`.

    Killing the local stack's supervisor alone is not enough: it starts each service in a session of its own, so
    its services would outlive it, reparented to init. A process still running first gets SIGINT, as Ctrl-C would
    send, and `grace` s to stop what it started; whatever is left then is killed, each process below it with its
    whole process group (a service and anything that service started).
    """
    import psutil

    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(grace)
    if process.poll() is None:
        try:
            root = psutil.Process(process.pid)
            root.suspend()  # it starts nothing more while its descendants are listed
            below = root.children(recursive=True)
        except psutil.NoSuchProcess:
            below = []
        own_group = os.getpgrp()
        for child in below:
            try:
                group = os.getpgid(child.pid)
                if group != own_group:  # never the test's own group
                    os.killpg(group, signal.SIGKILL)
                child.kill()
            except (ProcessLookupError, psutil.NoSuchProcess):
                pass
        process.kill()
        psutil.wait_procs(below, timeout=5)
    process.wait()

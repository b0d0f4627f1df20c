"""A wake-up that a signal handler may send, and the stop request the servers wait on (`make stack`'s supervisor
sends its own).

threading.Event cannot be set from a signal handler. Python runs a handler on the main thread between two of its
bytecodes, and those may lie inside Event.wait() or Event.clear() while they hold the Event's own lock: set() in
the handler then waits for ever on a lock its own thread holds. A CI run's Ctrl-C to `make stack` was never acted
on, nor a second one, until the test killed the stack; a handler calling Event.set() while the main thread clears
the Event in a loop failed 3 times in 3 under 20,000 signals (tests/shared/test_wakeup.py). Here the handler writes a
byte to a pipe, a system call that takes no lock, and the waiting thread polls the pipe.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections.abc import Callable, Iterator


class Wakeup:
    """send() from anywhere (a signal handler, another thread); wait() on one thread, usually the main one."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)  # a pipe full of wake-ups already wakes the waiter: drop the byte
        # poll, not select: select() refuses a descriptor of 1024 or more, which a busy process (a test worker
        # that made many of these) reaches long before its limit of open files.
        self._poll = select.poll()
        self._poll.register(self._read, select.POLLIN)

    def send(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # full, or closed by a waiter that has finished
            os.write(self._write, b"\0")

    def wait(self, timeout: float) -> bool:
        """Wait until a send() or `timeout` seconds; whether one came. The wake-ups sent so far are used up."""
        self._poll.poll(int(timeout * 1000))
        woken = False
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 4096):
                woken = True
        return woken

    @contextlib.contextmanager
    def on_signals(self) -> Iterator[None]:
        """Within it, any signal with a Python handler wakes the waiter at once, whichever thread it lands on.

        A handler runs on the main thread only: a signal the kernel hands to another thread (one of gRPC's) was
        acted on when the main thread's timed wait next ended, up to half a second later. Python's own C handler
        writes the signal's number into the pipe from any thread (signal.set_wakeup_fd), which ends the wait; the
        handler runs as the main thread goes on. Main thread only; the previous wake-up descriptor comes back on
        leaving, before this pipe can be closed under it."""
        previous = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        try:
            yield
        finally:
            signal.set_wakeup_fd(previous)

    def __del__(self) -> None:
        # Closed only when nothing refers to it any more, a signal handler that sends to it included: a pipe closed
        # under a handler still installed would have it write into whatever file took the descriptor's number next.
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)


class StopRequest:
    """SIGTERM or SIGINT asks a server process to stop: the inference server's and its worker parent's main thread.

    Made on the main thread (it installs both handlers). wait() returns once a signal came or `until()` is true.
    Its waits are timed, never without a timeout: a signal the kernel hands to one of gRPC's threads only sets a
    flag for the main thread, and a main thread blocked with no timeout never came round to it (both workers of a
    replica once ignored Ctrl-C until they were killed); on_signals() ends the wait at once besides."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, on_received: Callable[[str], None]) -> None:
        self._on_received = on_received  # told the signal's name, in the handler: a log line, no locks of its own
        self._wakeup = Wakeup()
        self.received: list[int] = []
        for signum in self.SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self._on_received(signal.Signals(signum).name)
        self.received.append(signum)
        self._wakeup.send()

    def wait(self, check_every: float = 0.5, until: Callable[[], bool] = lambda: False) -> None:
        """Wait until a stop is asked for or `until()` (looked at every `check_every` seconds) is true."""
        with self._wakeup.on_signals():
            while not self.received and not until():
                self._wakeup.wait(check_every)

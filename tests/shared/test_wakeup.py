"""shared.wakeup: the stop request a signal handler makes must never wait on a lock its own thread holds."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from shared.wakeup import StopRequest, Wakeup

REPO_ROOT = Path(__file__).resolve().parents[2]

# The main thread waits on the wake-up in a tight loop while another thread signals the process 20,000 times, each
# handler sending a wake-up. With threading.Event in its place (set() in the handler, wait(0) then clear() in the
# loop) this program failed 3 times in 3 (stop 63): a handler waited on the Event's lock, held by the wait or clear
# it had interrupted, and each further signal nested another handler until Python's recursion limit. With a single
# signal, a Ctrl-C, such a handler waits for ever.
HAMMER = """
import os, signal, sys, threading, time
from shared.wakeup import Wakeup

wake, handled = Wakeup(), [0]

def on_signal(signum, frame):
    handled[0] += 1
    wake.send()

signal.signal(signal.SIGUSR1, on_signal)

def hammer():
    for _ in range(20000):
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.0001)
    done.set()

done = threading.Event()  # set by the signalling thread, never from a handler
threading.Thread(target=hammer, daemon=True).start()
while not done.is_set():
    wake.wait(0)
print(handled[0])
"""


def test_a_signal_handler_that_sends_a_wake_up_never_waits_on_the_waiting_threads_lock():
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(HAMMER)],
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 1000, done.stdout  # the handlers ran, many times over


def test_a_wake_up_sent_before_a_wait_ends_it_and_is_used_up():
    wake = Wakeup()
    wake.send()
    wake.send()
    started = time.monotonic()
    assert wake.wait(5) is True and time.monotonic() - started < 1
    assert wake.wait(0.05) is False  # both sends were used up by the one wait
    for _ in range(100_000):  # more than a pipe holds: a send never blocks, and the waiter still wakes
        wake.send()
    assert wake.wait(0) is True and wake.wait(0) is False


def test_a_wake_up_sent_during_a_wait_ends_it():
    wake = Wakeup()
    threading.Timer(0.2, wake.send).start()
    started = time.monotonic()
    assert wake.wait(30) is True and time.monotonic() - started < 10


def test_a_wake_up_works_whatever_its_descriptors_number():
    """select() refuses descriptors of 1024 and more; a test worker that has made many wake-ups reaches them."""
    import os

    held = [os.dup(0) for _ in range(1100)]
    try:
        wake = Wakeup()
        wake.send()
        assert wake.wait(1) is True
    finally:
        for fd in held:
            os.close(fd)


# The servers' stop request (StopRequest, as inference.server.serve and inference.workers.serve_workers wait on it).
# The main thread blocks SIGTERM, so the kernel hands it to another thread, as it may hand it to one of gRPC's.
# Python runs the handler on the main thread only, once that thread looks: without the wake-up descriptor the
# 30-second wait below ran to its end (up to half a second late in the servers, which wait 0.5 s at a time).
ANOTHER_THREAD = """
import signal, sys, threading, time
from shared.wakeup import StopRequest

told = []
stop = StopRequest(told.append)
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()  # a thread the signal can land on
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # ... and the main thread cannot take it
print("ready", flush=True)
started = time.monotonic()
stop.wait(check_every=30)
print(f"{time.monotonic() - started:.3f} {told} {stop.received}", flush=True)
"""


def test_a_signal_taken_by_another_thread_ends_the_main_threads_wait_at_once():
    import signal

    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(ANOTHER_THREAD)],
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        child.send_signal(signal.SIGTERM)
        out, _ = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0
    took, told, received = out.split(" ", 2)
    assert float(took) < 10, f"the wait ended {took} s after it began: the signal did not end it"
    assert (told, received.strip()) == ("['SIGTERM']", f"[{int(signal.SIGTERM)}]")


def test_a_stop_request_waits_until_its_condition_holds_when_no_signal_comes():
    import signal

    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop = StopRequest(lambda name: None)
        deadline = time.monotonic() + 0.3
        stop.wait(check_every=0.05, until=lambda: time.monotonic() >= deadline)
        assert time.monotonic() >= deadline
        assert stop.received == []
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_a_stop_request_takes_sigint_as_well_and_a_wait_after_it_returns_at_once():
    import os
    import signal

    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        told = []
        stop = StopRequest(told.append)
        os.kill(os.getpid(), signal.SIGINT)  # handled on this, the main, thread before kill returns to Python code
        started = time.monotonic()
        stop.wait(check_every=30)
        assert time.monotonic() - started < 5
        assert told == ["SIGINT"] and stop.received == [signal.SIGINT]
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

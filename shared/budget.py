"""A budget of bytes shared by the calls of one process: how much decoded picture may be in memory at once.

Per-picture limits (shared/decode.py's Limits) bound one picture; they do not bound a dozen at once. Each decode
reserves the bytes its decoded frame will take before decoding it, and gives them back when its array is down to
working resolution; the service then reserves the working memory of what it does with the picture the same way:
making a 28x28 digit of it (shared.image_pipeline.pipeline_bytes), reading a number in it
(shared.segment.reading_bytes), and the network's forward pass over the digits (ServedModel.forward_bytes). A
reservation that does not fit waits, first come first served, at most `wait` seconds, then fails with
BudgetExhausted: the caller answers "busy, retry" instead of the process being killed for memory with every call
in flight.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator


class BudgetExhausted(RuntimeError):
    """A reservation did not fit within the wait; the message says how much was asked and how much is in use."""


class CallerGone(BudgetExhausted):
    """The caller a reservation was made for went away (its deadline passed, or it cancelled) while it waited: the
    picture is not decoded for no one. A BudgetExhausted, so that whatever lets that through lets this through."""


# How often a reservation waiting for a caller (MemoryBudget.caller) asks whether the caller is still there.
CALLER_POLL_SECONDS = 0.05
# A surge: at least 1/SURGE_SHARE of the capacity in use at once. It is over once what is in use falls to
# 1/SURGE_SHARE of the surge's height (MemoryBudget's after_surge).
SURGE_SHARE = 4


class MemoryBudget:
    def __init__(self, capacity: int, wait: float, after_surge: Callable[[], None] | None = None) -> None:
        """`after_surge` is called (in the thread that gave back the reservation that ended it, outside the
        budget's lock) each time a surge is over: the server gives the memory the surges' pictures left free back
        to the system once they stop (inference.capacity.give_free_memory_back_soon). A surge may end every few
        calls under steady load (a full batch's forward pass holds just under a quarter of the default budget),
        and with a budget set small one call may be a surge: the hook must be cheap."""
        if capacity <= 0 or wait < 0:
            raise ValueError(f"a memory budget needs a positive capacity and a wait >= 0, got {capacity}, {wait}")
        self.capacity = capacity
        self.wait = wait
        self._after_surge = after_surge
        self._in_use = 0
        self._peak = 0
        self._surge = 0  # the most bytes in use at once since the last surge was over
        self._queue: deque[object] = deque()  # waiting reservations, oldest first
        self._changed = threading.Condition()
        self._callers = threading.local()  # .still_there: the caller of this thread's reservations (caller())

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def peak(self) -> int:
        """The most bytes reserved at once since the budget was made (for benchmarks and metrics)."""
        return self._peak

    @contextlib.contextmanager
    def caller(self, still_there: Callable[[], bool]) -> Iterator[None]:
        """Within the `with` block, this thread's reservations are made for a caller that `still_there()` says
        is still waiting for the answer (a gRPC call's context.is_active): one that must wait for room gives up
        with CallerGone, within CALLER_POLL_SECONDS, once the caller has gone. Without it, pictures whose callers
        had gone (short deadlines, a flood of large pictures) were each decoded in full when room came.

        The block's reservations also share one `wait` between them: a ReadNumber reserves to decode, to read and
        (a single digit) to decode again as Predict does, and waited `wait` for each, three times the setting."""
        before = getattr(self._callers, "still_there", None), getattr(self._callers, "waited", None)
        # A block within another is the same call: it spends what is left of the outer block's wait.
        self._callers.still_there, self._callers.waited = still_there, before[1] if before[1] is not None else [0.0]
        try:
            yield
        finally:
            self._callers.still_there, self._callers.waited = before

    @contextlib.contextmanager
    def reserve(
        self,
        nbytes: int,
        *,
        work: str = "this picture",
        to: str = "to decode",
        smaller: str | None = "a smaller picture",
        brief: bool = False,
    ) -> Iterator[None]:
        """Hold `nbytes` of the budget for the `with` block. A request larger than the whole capacity can never
        fit and fails at once; one that must wait does so in arrival order, so small requests cannot starve a
        large one, and no longer than its caller waits (caller()), nor, within one caller() block, than `wait` in
        all. The messages say "{work} needs N MiB {to}" and advise sending {smaller} (None: only to try again).

        `brief`: a hold of milliseconds (the network's forward pass) takes room as soon as there is room, ahead of
        reservations waiting their turn: a Predict of a 28x28 digit waited behind a large picture that was waiting
        for room (a review), and holds this short cannot keep a waiting picture out for long.

        A thread that holds a reservation should not wait for a second one: it would queue behind calls that wait
        for the room it holds (shared.image_pipeline.to_mnist gives back one picture's share before decoding the
        next)."""
        need = " ".join(filter(None, (f"{work} needs {_size(nbytes)}", to)))
        advice = f"send {smaller}" if smaller else ""
        if nbytes > self.capacity:
            raise BudgetExhausted(
                f"{need}, more than the server's whole decode budget (the limit is "
                f"{self.capacity / 2**20:,.0f} MiB){'; ' + advice if advice else ''}"
            )
        ticket = object()
        arrived = time.monotonic()
        still_there = getattr(self._callers, "still_there", None)
        waited = getattr(self._callers, "waited", None)  # [seconds] this caller's reservations waited so far
        deadline = arrived + self.wait - (waited[0] if waited is not None else 0.0)
        with self._changed:
            if not brief:
                self._queue.append(ticket)
            try:
                while (not brief and self._queue[0] is not ticket) or self._in_use + nbytes > self.capacity:
                    if still_there is not None and not still_there():
                        raise CallerGone(
                            "the caller went away (deadline passed or cancelled) while its picture waited for "
                            "decoding memory; it was not decoded. Give the call a longer deadline"
                        )
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise BudgetExhausted(
                            f"the server is decoding or reading other large pictures ({self._in_use / 2**20:,.0f} of "
                            f"{self.capacity / 2**20:,.0f} MiB in use; {need}); try again in a moment"
                            f"{', or ' + advice if advice else ''}"
                        )
                    self._changed.wait(remaining if still_there is None else min(remaining, CALLER_POLL_SECONDS))
            finally:
                if not brief:
                    self._queue.remove(ticket)
                self._changed.notify_all()  # the next in line may fit now, or may now be first
                if waited is not None:
                    waited[0] += time.monotonic() - arrived
            self._in_use += nbytes
            self._peak = max(self._peak, self._in_use)
            self._surge = max(self._surge, self._in_use)
        try:
            yield
        finally:
            with self._changed:
                self._in_use -= nbytes
                self._changed.notify_all()
                surge_over = self._surge * SURGE_SHARE >= self.capacity and self._in_use * SURGE_SHARE <= self._surge
                if surge_over:
                    self._surge = self._in_use
            if surge_over and self._after_surge is not None:
                self._after_surge()


def _size(nbytes: int) -> str:
    """Bytes as a message says them: MiB, or KiB under one MiB (a forward pass of one image is 387 KiB, not 0 MiB)."""
    return f"{nbytes / 2**20:,.0f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:,.0f} KiB"

"""shared/budget.py: decoded pictures in memory at once, across calls."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

from shared.budget import BudgetExhausted, CallerGone, MemoryBudget


def test_reservations_that_fit_run_together_and_give_their_bytes_back():
    budget = MemoryBudget(100, wait=0)
    with budget.reserve(60), budget.reserve(40):
        assert budget.in_use == 100
    assert budget.in_use == 0 and budget.peak == 100


def test_a_reservation_that_does_not_fit_waits_then_fails_with_a_message():
    budget = MemoryBudget(100 * 2**20, wait=0.2)
    with budget.reserve(80 * 2**20):
        started = time.monotonic()
        busy = r"80 of 100 MiB in use; this picture needs 30 MiB to decode\); try again"
        with pytest.raises(BudgetExhausted, match=busy):
            with budget.reserve(30 * 2**20):
                pass
        assert time.monotonic() - started >= 0.2
    assert budget.in_use == 0


def test_a_waiting_reservation_proceeds_when_room_is_given_back():
    budget = MemoryBudget(100, wait=10)
    held = threading.Event()
    release = threading.Event()

    def holder():
        with budget.reserve(90):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)
    threading.Timer(0.1, release.set).start()
    with budget.reserve(50):
        assert budget.in_use == 50
    thread.join()


def test_waiters_are_served_in_arrival_order_so_a_large_one_is_not_starved():
    budget = MemoryBudget(100, wait=10)
    order: list[str] = []
    first = budget.reserve(60)
    first.__enter__()

    def take(name: str, size: int) -> None:
        with budget.reserve(size):
            order.append(name)

    def queued(count: int) -> None:  # wait until `count` reservations wait in the queue (no sleep races a slow thread)
        deadline = time.monotonic() + 10
        while len(budget._queue) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(budget._queue) == count

    large = threading.Thread(target=take, args=("large", 100))
    large.start()
    queued(1)  # the large one queues first; the small one, which would fit now, must wait behind it
    small = threading.Thread(target=take, args=("small", 30))
    small.start()
    queued(2)
    time.sleep(0.05)
    assert order == []
    first.__exit__(None, None, None)
    large.join(5)
    small.join(5)
    assert order == ["large", "small"]


def test_more_than_the_whole_capacity_fails_at_once():
    budget = MemoryBudget(100, wait=10)
    started = time.monotonic()
    whole = r"more than the server.s whole decode budget \(the limit is"
    with pytest.raises(BudgetExhausted, match=whole), budget.reserve(101):
        pass
    assert time.monotonic() - started < 1


def test_a_reservation_whose_caller_goes_away_while_it_waits_gives_up_and_holds_nothing():
    """A flood of large pictures with short deadlines: each waited its turn and was decoded in full for no one."""
    budget = MemoryBudget(100, wait=10)
    gone_at = time.monotonic() + 0.2
    with budget.reserve(90):
        started = time.monotonic()
        with budget.caller(lambda: time.monotonic() < gone_at):
            with pytest.raises(CallerGone, match=r"the caller went away .* it was not decoded"):
                with budget.reserve(20):
                    pass
        assert 0.2 <= time.monotonic() - started < 0.2 + 1.0  # within a poll of its going, not the 10 s wait
        with budget.reserve(10):  # the queue holds nothing of it
            assert budget.in_use == 100
    assert budget.in_use == 0


def test_a_caller_still_there_is_served_when_room_comes_and_the_scope_is_the_threads_own():
    budget = MemoryBudget(100, wait=5)
    held = threading.Event()
    elsewhere: list[bool] = []

    def hold() -> None:
        with budget.reserve(90):
            held.set()
            time.sleep(0.2)

    def other_thread() -> None:  # no caller() here: this thread's reservations wait for no one
        elsewhere.append(getattr(budget._callers, "still_there", None) is None)

    worker = threading.Thread(target=hold)
    worker.start()
    held.wait()
    with budget.caller(lambda: True):
        probe = threading.Thread(target=other_thread)
        probe.start()
        probe.join()
        with budget.reserve(20):
            assert budget.in_use == 20
    worker.join()
    assert elsewhere == [True] and getattr(budget._callers, "still_there", None) is None


def test_the_reservations_of_one_caller_share_one_wait_and_others_wait_their_own():
    """--decode-wait is how long a call waits: a ReadNumber reserves to decode, to read and (one digit) to decode
    again, and waited the whole wait for each (1.81 s with a wait of 1 s, a review found)."""
    budget = MemoryBudget(100, wait=0.3)
    with budget.reserve(100):  # other pictures fill the budget
        with budget.caller(lambda: True):
            started = time.monotonic()
            with pytest.raises(BudgetExhausted), budget.reserve(10):
                pass
            first = time.monotonic() - started
            with pytest.raises(BudgetExhausted), budget.reserve(10):
                pass
            both = time.monotonic() - started
        assert first >= 0.3 and both < 0.3 + 0.1  # the second had no wait left
        started = time.monotonic()
        with pytest.raises(BudgetExhausted), budget.reserve(10):  # another call: a wait of its own
            pass
        assert time.monotonic() - started >= 0.3
    with budget.caller(lambda: True):
        with budget.reserve(100), pytest.raises(BudgetExhausted), budget.reserve(10):
            pass  # the caller's whole wait spent
        with budget.reserve(10):  # room at once needs no wait left
            assert budget.in_use == 10


def test_a_caller_block_within_another_spends_what_is_left_of_the_outer_wait():
    budget = MemoryBudget(100, wait=0.3)
    with budget.reserve(100), budget.caller(lambda: True):
        started = time.monotonic()
        with pytest.raises(BudgetExhausted), budget.reserve(10):
            pass
        with budget.caller(lambda: True), pytest.raises(BudgetExhausted), budget.reserve(10):
            pass
        assert time.monotonic() - started < 0.3 + 0.1


def test_a_brief_hold_takes_room_when_there_is_room_ahead_of_a_reservation_waiting_its_turn():
    """A forward pass holds its share for milliseconds: it need not wait behind a large picture that waits for
    room. A reservation of ordinary kind still waits its turn behind it."""
    budget = MemoryBudget(100 * 2**20, wait=1.0)
    with budget.reserve(60 * 2**20):
        waiting = threading.Thread(target=_try, args=(budget,))
        waiting.start()
        time.sleep(0.05)
        started = time.monotonic()
        with budget.reserve(300 * 2**10, brief=True):
            assert budget.in_use == 60 * 2**20 + 300 * 2**10
        assert time.monotonic() - started < 0.1
        with budget.caller(lambda: time.monotonic() < started + 0.2), pytest.raises(CallerGone):
            with budget.reserve(300 * 2**10):  # behind the 50 MiB that waits for room
                pass
        waiting.join()
    assert budget.in_use == 0


def _try(budget: MemoryBudget) -> None:
    with contextlib.suppress(BudgetExhausted), budget.reserve(50 * 2**20):
        pass


def test_a_reservation_under_a_mebibyte_is_told_in_kibibytes():
    budget = MemoryBudget(2**20, wait=0)
    told = r"needs 300 KiB to decode\); try again in a moment$"
    with budget.reserve(900 * 2**10), pytest.raises(BudgetExhausted, match=told):
        with budget.reserve(300 * 2**10, smaller=None):
            pass


def test_after_a_surge_of_a_quarter_of_the_capacity_the_hook_runs_once_it_is_over_and_ordinary_use_never_calls_it():
    surges: list[int] = []
    budget = MemoryBudget(100, wait=0, after_surge=lambda: surges.append(budget.in_use))
    for _ in range(5):  # ordinary use: never a quarter in use at once
        with budget.reserve(10), budget.reserve(14):
            pass
    assert surges == []
    outer = budget.reserve(12)
    outer.__enter__()
    with budget.reserve(30):  # 42 in use: a surge
        pass
    assert surges == []  # 12 still in use: more than a quarter of the surge's 42
    outer.__exit__(None, None, None)
    assert surges == [0]
    with budget.reserve(20):  # under a quarter of the capacity: the surge was reckoned anew after it ended
        pass
    assert surges == [0]


def test_the_surge_hook_runs_outside_the_budgets_lock_so_other_threads_may_reserve_meanwhile():
    """The hook may take a while (the server's starts a thread); calls in other threads must not wait for it."""
    reserved_meanwhile: list[bool] = []

    def hook() -> None:
        other = threading.Thread(target=_reserve_and_give_back, args=(budget,))
        other.start()
        other.join(2)
        reserved_meanwhile.append(not other.is_alive())

    budget = MemoryBudget(100, wait=5, after_surge=hook)
    with budget.reserve(50):
        pass
    assert reserved_meanwhile == [True]


def _reserve_and_give_back(budget: MemoryBudget) -> None:
    with budget.reserve(5):
        pass

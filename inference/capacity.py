"""How much memory one server process may use, and whether `--workers` of them fit the container's limit.

A server process's memory is bounded by three things, each a setting:
- its warm size: Python, torch, gRPC, the model, and after the first Evaluate the MNIST splits and the plotting
  libraries (WARM_PROCESS_MIB, measured below);
- the decode budget (--decode-budget-mib): decoded pictures in memory at once across its calls;
- requests in memory at once: each gRPC worker thread (--max-workers) holds at most one request of at most
  --max-message-bytes, twice over (the bytes as received and the parsed message), and each call gRPC has accepted
  beyond those (up to --max-concurrent-rpcs) waits for a thread with its whole request received.
`--workers N` runs N such processes (and a parent that watches them), so N times that must fit the memory the
container may use; the server refuses to start when it does not, rather than be killed for memory later with
every call in flight. `--workers 0` (the default) starts one per CPU core, as many as the memory holds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
import time

from shared import resources

MIB = 2**20
# VmRSS of `python -m inference` after 16 concurrent Predicts and an Evaluate of both splits: 1,054 MiB with
# PyPI's CUDA build of torch (on 2026-11-30, bench/bench_memory.py's server); the CPU-only build is smaller.
WARM_PROCESS_MIB = 1100
# With --workers N > 1, the parent that starts and watches the workers imports the server's modules: ~540 MiB.
PARENT_PROCESS_MIB = 512


def process_memory_mib(
    decode_budget_mib: int, max_workers: int, max_message_bytes: int, max_concurrent_rpcs: int | None
) -> int:
    """The most one server process is expected to hold, in MiB. Calls waiting for a thread count too: 30 of 8 MiB
    queued behind a busy thread took 260 MiB that the estimate left out (None: no limit given, none counted)."""
    waiting = max(0, (max_concurrent_rpcs or max_workers) - max_workers)
    requests = (max_workers * 2 + waiting) * max_message_bytes / MIB
    return int(WARM_PROCESS_MIB + decode_budget_mib + requests + 0.5)


def server_memory_mib(options) -> int:
    """process_memory_mib of a server's settings (inference.options.ServerOptions)."""
    return process_memory_mib(
        options.decode_budget_mib, options.max_workers, options.max_message_bytes, options.max_concurrent_rpcs
    )


def default_worker_count(cpus: int, memory_bytes: int | None, per_process_mib: int) -> int:
    """Server processes to start: one per usable CPU core (one Python thread runs at a time per process, and a
    call's work is mostly Python), but no more than `memory_bytes` holds beside the parent process that watches
    them, each taking up to `per_process_mib` (process_memory_mib). At least one; memory None (unknown): the CPU
    count decides."""
    if cpus < 1:
        raise ValueError(f"cpus must be at least 1, got {cpus}")
    if memory_bytes is None:
        return cpus
    return max(1, min(cpus, (memory_bytes // MIB - PARENT_PROCESS_MIB) // per_process_mib))


def machine_worker_count(per_process_mib: int) -> tuple[int, int, int | None]:
    """default_worker_count on this machine: (processes, usable CPU cores, usable memory in bytes or None), the two
    figures it was counted from returned for a log line to show. One count for the server's start-up and for
    `make stack`'s note of what inference will use."""
    cpus, memory = resources.usable_cpus(), resources.usable_memory_bytes()
    return default_worker_count(cpus, memory, per_process_mib), cpus, memory


# The web gateway (python -m inference.web) holds no model: its memory is its idle size plus the request bodies in
# flight, which --max-inflight-bytes bounds. Each body is held several times over while it is read, parsed (a
# multipart form copies it), sent on as a gRPC message and answered: measured RSS, 4 concurrent 32 MB uploads
# peaked at 665-902 MiB and 8 of 15.6 MB at 676-733 MiB over an idle 65 MiB, i.e. up to 6.5 times the bytes in
# flight. The deployments' memory limits are sized from web_memory_mib (tests/deploy check it).
WEB_IDLE_MIB = 65
WEB_BODY_HOLD_FACTOR = 6.5


def web_memory_mib(max_inflight_bytes: int) -> int:
    """The most one gateway process is expected to hold, in MiB, with `max_inflight_bytes` of bodies in flight."""
    return int(WEB_IDLE_MIB + WEB_BODY_HOLD_FACTOR * max_inflight_bytes / MIB + 0.5)


# Python runs one thread at a time per process, so a process per core keeps every core busy; a few more can cover
# for one waiting on I/O, but past this many each only queues for the cores, with memory of its own (100,000 asked
# by mistake forked until the machine ran out of memory).
MAX_WORKERS_PER_CORE = 4


def memory_needed_mib(workers: int, per_process_mib: int) -> int:
    """The most memory `workers` server processes of `per_process_mib` each use, with the parent that watches them
    when there is more than one."""
    return workers * per_process_mib + (PARENT_PROCESS_MIB if workers > 1 else 0)


def check_workers_fit(workers: int, per_process_mib: int, limit: int | None, cpus: int) -> None:
    """Raise ValueError, saying what to change, when `workers` processes are more than MAX_WORKERS_PER_CORE for
    each of `cpus` usable cores, or (with the parent that watches them, for more than one) cannot fit within
    `limit` bytes."""
    if workers > MAX_WORKERS_PER_CORE * cpus:
        raise ValueError(
            f"{workers:,} server processes for {cpus} usable CPU core(s): past {MAX_WORKERS_PER_CORE} a core each "
            f"only queues for the cores, with memory of its own; use --workers {MAX_WORKERS_PER_CORE * cpus} or "
            "fewer (0 chooses one per core, as memory allows)"
        )
    if limit is None:
        return
    needed = memory_needed_mib(workers, per_process_mib) * MIB
    if needed > limit:
        parent = f"; and {PARENT_PROCESS_MIB:,} MiB for the parent that watches them" if workers > 1 else ""
        raise ValueError(
            f"{workers} server process(es) need up to {needed / 2**30:.1f} GiB ({per_process_mib:,} MiB each: "
            f"{WARM_PROCESS_MIB:,} warm, plus the decode budget and requests in flight{parent}), but this "
            f"container may use {limit / 2**30:.1f} GiB. Raise the limit (MNIST_INFERENCE_MEMORY in compose, the "
            "container's resources.limits.memory on Kubernetes), or lower --workers, --decode-budget-mib, "
            "--max-workers, --max-concurrent-rpcs or --max-message-bytes"
        )


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 4 << 20
TRIM_THRESHOLD_BYTES = 16 << 20


def return_large_blocks_to_the_system() -> bool:
    """Ask glibc to serve every allocation of MMAP_THRESHOLD_BYTES or more with its own mapping, unmapped when
    freed, to give back the free top of a heap once it exceeds TRIM_THRESHOLD_BYTES, and to keep at most two
    arenas. Decoded frames and bands are large and short-lived: by default glibc raises its mmap threshold after
    the first such block is freed and keeps later ones in per-thread heaps, so the process stays as large as its
    biggest flood long after it (measured: +1 GiB after five floods of 40 MP pictures, bench/bench_memory.py).
    Returns False where the C library is not glibc (nothing changes there).

    Why these two sizes: memory given back costs a page fault per 4 KiB page when it is used again (the kernel
    maps in and zeroes a fresh page), on every call. With a 1 MiB mmap threshold (and so glibc's fixed 128 KiB
    trim threshold), a ReadNumber of a 640x480 photo took 1,100-1,850 page faults in the server and 3 ms more
    CPU than the same work in a plain process (about 22 against 18.5 ms); with 4 MiB and 16 MiB it takes
    almost none (tests/reliability/test_memory_flood.py). After floods of 40 MP pictures in every format the
    server kept +57..+104 MiB over its warm size, against +49..+96 MiB before (a 64 MiB trim threshold kept
    +105..+153 MiB; a 16 MiB mmap threshold with a 32 MiB trim threshold, +523 MiB)."""
    libc = _glibc()
    if libc is None:
        return False
    return (
        bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
        and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
        and bool(libc.mallopt(_M_ARENA_MAX, 2))
    )


def give_free_memory_back() -> bool:
    """Hand every free page of glibc's heaps back to the system (malloc_trim(0)), not only the free top of a heap.

    Why: a flood of pictures of a few MiB each (under MMAP_THRESHOLD_BYTES, so held in the heaps) leaves their
    blocks free between blocks still in use; the heaps cannot shrink past those, and glibc keeps the free pages.
    Measured (a scratch flood, as bench/bench_memory.py --part working's): 16 concurrent Predicts of a 3 MB
    colour-noise PNG, four rounds, left `python -m inference` +289 / +312 / +327 / +293 MiB over its warm size;
    given back once the surges stopped, +5 / +12 / +20 / +7 MiB (1.5 s after each round). malloc_trim(0) took 4-23
    ms.
    Returns False where the C library is not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


# How long no surge must end before the memory goes back: once a flood is over, not during one. Under steady load
# a surge may end every few calls (a full PredictBatch's forward pass holds just under a quarter of the budget,
# and any other reservation beside it makes one), and each give-back would have them fault their pages in again;
# the wait also lets the frames of a call still unwinding (a refused picture's arrays, in its error's traceback,
# go a moment after its reservation) go before the memory is given back.
QUIET_SECONDS = 0.5
_quiet = threading.Lock()
_last_surge_end: float | None = None  # when the last surge ended, while a thread waits for quiet; None: none waits


def give_free_memory_back_soon() -> None:
    """give_free_memory_back once no surge has ended for QUIET_SECONDS, in a thread of its own, so that no call
    waits for it (a MemoryBudget's after_surge). It never raises, for it runs as a call gives back its
    reservation, its answer made: if no thread can be started, the memory stays until the next surge's end."""
    global _last_surge_end
    with _quiet:
        waiting = _last_surge_end is not None
        _last_surge_end = time.monotonic()
    if waiting:
        return
    try:
        threading.Thread(target=_give_back_when_quiet, name="give-free-memory-back", daemon=True).start()
    except RuntimeError:  # no thread to be had (memory, a limit on threads)
        with _quiet:
            _last_surge_end = None


def _give_back_when_quiet() -> None:
    global _last_surge_end
    while True:
        with _quiet:
            assert _last_surge_end is not None
            wait = _last_surge_end + QUIET_SECONDS - time.monotonic()
            if wait <= 0:
                _last_surge_end = None
                break
        time.sleep(wait)
    give_free_memory_back()


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library if it is glibc (it has mallopt and malloc_trim), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 (an AttributeError where they are missing)
    except (OSError, AttributeError):
        return None
    return libc

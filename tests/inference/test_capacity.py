"""inference/capacity.py and the start-up checks: a server that cannot fit its memory says so and does not start."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shared.resources import memory_limit_bytes

from inference.__main__ import main as server_main
from inference.capacity import WARM_PROCESS_MIB, check_workers_fit, process_memory_mib, server_memory_mib
from inference.options import ServerOptions
from testkit.memory import REPO_ROOT


def test_a_process_needs_its_warm_size_the_decode_budget_and_its_requests_running_and_waiting():
    # 16 threads hold a request twice (received, parsed); 4 more calls wait for a thread with theirs received.
    assert process_memory_mib(320, 16, 16 * 2**20, 20) == WARM_PROCESS_MIB + 320 + 16 * 2 * 16 + 4 * 16
    assert process_memory_mib(320, 16, 16 * 2**20, None) == WARM_PROCESS_MIB + 320 + 16 * 2 * 16


def test_the_container_limit_is_read_from_cgroup_v2_or_v1(tmp_path):
    (tmp_path / "memory.max").write_text("3221225472\n")
    assert memory_limit_bytes(tmp_path) == 3 * 2**30
    (tmp_path / "memory.max").write_text("max\n")
    assert memory_limit_bytes(tmp_path) is None
    (tmp_path / "memory.max").unlink()
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert memory_limit_bytes(tmp_path) is None
    assert memory_limit_bytes(tmp_path / "nowhere") is None


def test_workers_that_do_not_fit_the_limit_are_refused_with_what_to_change():
    defaults = ServerOptions(artifacts_dir=None, data_dir=None)
    each = server_memory_mib(defaults)
    check_workers_fit(1, each, 3 * 2**30, cpus=2)
    check_workers_fit(4, each, None, cpus=2)
    # Both knobs named: compose's variable, and the Deployment's limit on Kubernetes.
    with pytest.raises(
        ValueError,
        match=r"2 server process\(es\) need up to 4\.8 GiB.*MNIST_INFERENCE_MEMORY.*resources\.limits\.memory",
    ):
        check_workers_fit(2, each, 3 * 2**30, cpus=2)


def test_more_workers_than_a_few_a_core_are_refused_without_a_memory_limit():
    """MNIST_INFERENCE_WORKERS=100000 forked until the machine ran out of memory: nothing bounded it where no
    container limit was set."""
    check_workers_fit(8, 500, None, cpus=2)
    with pytest.raises(ValueError, match=r"100,000 server processes for 2 usable CPU core\(s\).*--workers 8 or fewer"):
        check_workers_fit(100_000, 500, None, cpus=2)


def test_the_server_refuses_to_start_when_its_workers_cannot_fit(monkeypatch, tmp_path):
    monkeypatch.setattr("inference.__main__.memory_limit_bytes", lambda: 2 * 2**30)
    with pytest.raises(SystemExit, match="2 server process"):
        server_main(["--workers", "2", "--artifacts-dir", str(tmp_path), "--address", "127.0.0.1:0"])


def test_the_server_refuses_a_decode_budget_that_cannot_hold_one_picture(tmp_path):
    with pytest.raises(SystemExit, match=r"--decode-budget-mib 100 cannot hold one picture.*153 MiB"):
        server_main(["--decode-budget-mib", "100", "--artifacts-dir", str(tmp_path), "--address", "127.0.0.1:0"])


def test_the_server_refuses_a_decode_budget_that_cannot_hold_the_reading_of_one_number(tmp_path):
    """ReadNumber holds its working memory in the decode budget: a budget big enough for the largest decode of a
    2 MP limit (8 MB) could never read a number in a 1024 x 1024 picture (72 MiB)."""
    flags = ["--max-image-pixels", "2000000", "--artifacts-dir", str(tmp_path), "--address", "127.0.0.1:0"]
    with pytest.raises(SystemExit, match=r"--decode-budget-mib 32 cannot hold one picture.*72 MiB decoded or read"):
        server_main(["--decode-budget-mib", "32", *flags])


# A server's heap after a flood of pictures of a few MiB: 256 MiB freed, in blocks between blocks still in use.
HEAP_LEFT_FREE = """
import ctypes
from inference.capacity import give_free_memory_back, return_large_blocks_to_the_system
from testkit.memory import status_kib
assert return_large_blocks_to_the_system()  # as a server: blocks under 4 MiB come from the heap
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
blocks = []
for _ in range(512):
    blocks.append(libc.malloc(1 << 20))
    ctypes.memset(blocks[-1], 1, 1 << 20)
for block in blocks[::2]:  # every other one: each freed block lies between two still in use
    libc.free(block)
before = status_kib("self", "VmRSS")
assert give_free_memory_back()
print(before - status_kib("self", "VmRSS"))
"""


def test_free_memory_left_between_blocks_still_in_use_goes_back_to_the_system():
    result = subprocess.run(
        [sys.executable, "-c", HEAP_LEFT_FREE], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split()[-1]) >= 200 * 1024  # KiB of the 256 MiB freed


def test_memory_is_given_back_in_a_thread_and_one_that_cannot_start_fails_no_call(monkeypatch):
    """It runs as a call gives back its reservation, the call's answer made: a thread that cannot start (memory, a
    limit on threads) must not turn that answer into an error, nor keep the memory from being given back later."""
    import threading

    import inference.capacity as capacity

    given = threading.Event()
    monkeypatch.setattr(capacity, "give_free_memory_back", given.set)
    start = threading.Thread.start

    def cannot_start(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", cannot_start)
    capacity.give_free_memory_back_soon()
    assert not given.is_set()
    monkeypatch.setattr(threading.Thread, "start", start)
    capacity.give_free_memory_back_soon()
    assert given.wait(5)


def test_memory_goes_back_once_surges_stop_ending_not_while_they_keep_ending(monkeypatch):
    """Under steady load a surge may end every few calls; giving memory back each time would have the next calls
    fault their pages in again. It goes back once none has ended for QUIET_SECONDS."""
    import threading
    import time

    import inference.capacity as capacity

    given = threading.Event()
    monkeypatch.setattr(capacity, "give_free_memory_back", given.set)
    monkeypatch.setattr(capacity, "QUIET_SECONDS", 1.5)  # a loaded machine's sleep may overshoot 0.1 s by a lot
    for _ in range(20):  # a surge ends every 0.1 s
        capacity.give_free_memory_back_soon()
        time.sleep(0.1)
        assert not given.is_set()
    stopped = time.monotonic()
    assert given.wait(10)
    assert time.monotonic() - stopped >= 1.5 - 0.1 - 0.05

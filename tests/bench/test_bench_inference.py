"""bench/bench_inference.py's arguments and its network-alone baseline, without running the benchmark."""

from __future__ import annotations

import pytest
import torch

import bench.bench_inference as bench_inference
from testkit.server_process import publish_random_model


def test_a_duration_too_short_to_measure_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_inference.get_args_parser().parse_args(["--duration", "0.000001"])
    assert exit_info.value.code == 2
    assert "--duration: must be at least 0.1 seconds, got '0.000001'" in capsys.readouterr().err


def test_the_network_alone_runs_with_the_servers_intra_op_threads(tmp_path, mnist_dir, monkeypatch):
    """The baseline the service's throughput is a share of computes as the server does: with --torch-threads
    intra-op threads, not always one."""
    publish_random_model(tmp_path)
    seen: list[int] = []
    run_clients = bench_inference.run_clients

    def recording(concurrency, duration, call):
        return run_clients(concurrency, duration, lambda i: (seen.append(torch.get_num_threads()), call(i))[1])

    monkeypatch.setattr(bench_inference, "run_clients", recording)
    before = torch.get_num_threads()
    # Not the number torch uses already: with a fixed 2, a baseline that never set it passed on a two-core machine.
    intra_op = before + 1
    try:
        rate = bench_inference.network_only(tmp_path, mnist_dir, "torch", 8, 1, intra_op, 0.1)
    finally:
        torch.set_num_threads(before)
    assert rate > 0 and seen and set(seen) == {intra_op}


def test_the_grpc_floor_is_timed_on_a_server_that_sends_the_request_back():
    """The floor under Predict's latency is a real call to a real server of its own (not a figure computed here),
    and that server answers with the very bytes it was sent, so the messages are Predict's own sizes."""
    import grpc

    from bench import grpc_floor

    process, port = grpc_floor.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            message = bytes(range(256)) * 3
            assert channel.unary_unary(grpc_floor.METHOD)(message, timeout=10) == message
    finally:
        process.kill()
        process.wait()
    ms = bench_inference.floor_latencies(b"\x89PNG", 0.1)
    assert len(ms) > 0 and (ms > 0).all()

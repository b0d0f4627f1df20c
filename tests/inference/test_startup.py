"""python -m inference's start-up: a setting no server could run with is one line that says what to change, never a
traceback, a server that spins, or one that refuses every call."""

from __future__ import annotations

import socket

import grpc
import pytest

from shared.api.mnist.v1 import inference_pb2 as pb
from shared.api.mnist.v1 import inference_pb2_grpc

from inference.__main__ import main as server_main
from inference.security import bearer_metadata
from testkit.server_process import publish_random_model, start_server, stop_server


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--max-workers", "0"], "--max-workers: must be at least 1, got 0"),
        (["--max-concurrent-rpcs", "0"], "--max-concurrent-rpcs: must be at least 1"),
        (["--max-batch-size", "0"], "--max-batch-size: must be at least 1"),
        (["--max-image-bytes", "-5"], "--max-image-bytes: must be at least 1"),
        (["--max-concurrent-evaluations", "0"], "--max-concurrent-evaluations: must be at least 1"),
        (["--decode-wait", "-1"], "--decode-wait: must be a number of seconds, 0 or more"),
        (["--poll-interval", "0"], "--poll-interval: must be a number of seconds above 0"),  # it spun a core
        (["--model-cache-size", "-1"], "--model-cache-size: must be 0 or more"),
        (["--digit-threshold", "2"], "--digit-threshold: must be a number at least 0 and at most 1, got '2'"),
        # Past a C int or the proto's int32: taken, then a traceback at start or INTERNAL on every GetModelInfo.
        (["--max-batch-size", "2147483648"], "--max-batch-size: must be at most 2,147,483,647"),
        (["--torch-threads", "3000000000"], "--torch-threads: must be at most 2,147,483,647"),
        # Past what a thread's wait or a gRPC deadline holds: the grace or the model watcher died of an OverflowError.
        (["--grace-period", "1e10"], "--grace-period: must be at most 10,000,000 seconds"),
        (["--poll-interval", "1e10"], "--poll-interval: must be at most 10,000,000 seconds"),
        # 0 ms to gRPC: a GOAWAY on every connection at once, a server that started and answered nothing.
        (["--max-connection-age", "0.0004"], "--max-connection-age: must be at least 0.1 seconds, got '0.0004'"),
    ],
)
def test_a_flag_no_server_could_run_with_is_refused_by_the_parser_saying_what_it_must_be(flags, message, capsys):
    with pytest.raises(SystemExit):
        server_main(["--address", "127.0.0.1:0", *flags])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "variable, value, message",
    [
        (
            "MNIST_DIGIT_THRESHOLD",
            "abc",
            "MNIST_DIGIT_THRESHOLD='abc': must be a number at least 0 and at most 1, got 'abc'",
        ),
        ("MNIST_INFERENCE_WORKERS", "two", "MNIST_INFERENCE_WORKERS='two': must be a whole number, got 'two'"),
        ("MNIST_INFERENCE_BACKEND", "tf", "MNIST_INFERENCE_BACKEND='tf' must be one of: onnxruntime, torch"),
        # Before: "--workers must be at least 1 (or 0...)", naming a flag nobody typed, exit 1.
        ("MNIST_INFERENCE_WORKERS", "-3", "MNIST_INFERENCE_WORKERS='-3': must be 0 or more, got -3"),
        # Before: a ValueError traceback from the logging set-up (argparse checks only typed values' choices).
        ("MNIST_LOG_FORMAT", "xml", "MNIST_LOG_FORMAT='xml' must be one of: text, json"),
    ],
)
def test_an_unusable_environment_variable_is_refused_by_the_parser_but_help_still_works(
    variable, value, message, monkeypatch, capsys
):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exit_info:
        server_main(["--address", "127.0.0.1:0"])
    assert exit_info.value.code == 2
    assert f"error: environment variable {message}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # it used to stop --help as well
        server_main(["--help"])
    assert exit_info.value.code == 0
    assert "unusable" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--grace-period", "-5"], "--grace-period: must be a number of seconds, 0 or more, got '-5'"),
        (["--grace-period", "nan"], "--grace-period: must be a number of seconds, 0 or more, got 'nan'"),
        (["--torch-threads", "-4"], "--torch-threads: must be 0 or more, got -4"),
        (["--workers", "100000"], "100,000 server processes for"),
        (["--max-message-bytes", "99999999999"], "--max-message-bytes: must be at most 2,147,483,647"),
    ],
)
def test_unusable_numbers_are_refused_before_the_server_starts(flags, message, tmp_path, capsys):
    """Before: a negative grace was logged as "-5.0 s grace", negative threads were taken, and 100,000 workers
    were forked until the machine ran out of memory."""
    with pytest.raises(SystemExit) as exit_info:
        server_main([*flags, "--artifacts-dir", str(tmp_path), "--address", "127.0.0.1:0"])
    said = str(exit_info.value.code) if not isinstance(exit_info.value.code, int) else capsys.readouterr().err
    assert message in said


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_out_of_range_is_refused_not_taken_modulo_65536(workers):
    with pytest.raises(SystemExit, match=r"--address: port 99999 .* is not a port number \(0 to 65535"):
        server_main(["--workers", workers, "--address", "127.0.0.1:99999"])


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("shared", [False, True], ids=["plain", "another-servers-shared-port"])
def test_a_port_in_use_is_one_line_saying_so(tmp_path, capfd, workers, shared):
    """Another server's workers share their port (SO_REUSEPORT): a second server with workers joined it, and the
    two took turns answering the calls."""
    with socket.socket() as taken:
        if shared:
            taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        address = f"127.0.0.1:{port}"
        assert server_main(["--workers", workers, "--artifacts-dir", str(tmp_path), "--address", address]) == 1
    err = capfd.readouterr().err
    assert f"ERROR inference: cannot listen on {address} (in use" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("flag", ["--address", "--health-address"])
def test_a_name_that_does_not_resolve_is_said_with_the_address_it_was_given(tmp_path, capfd, flag):
    """With --workers, only "Name or service not known" was said, naming neither the flag's address nor what to do."""
    flags = ["--workers", "2", "--artifacts-dir", str(tmp_path), "--address", "127.0.0.1:0"]
    assert server_main([*flags, flag, "nohost.invalid:50052"]) == 1
    err = capfd.readouterr().err
    assert "ERROR inference: cannot listen on nohost.invalid:50052 (" in err and "Traceback" not in err


def test_a_metrics_port_in_use_is_named_not_the_grpc_address(tmp_path, capfd):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        metrics = f"127.0.0.1:{taken.getsockname()[1]}"
        flags = ["--workers", "2", "--artifacts-dir", str(tmp_path), "--address", "127.0.0.1:0"]
        assert server_main([*flags, "--metrics-address", metrics]) == 1
    err = capfd.readouterr().err
    assert f"ERROR inference: cannot serve metrics on {metrics}" in err
    assert "cannot listen on" not in err


def test_tls_files_that_are_not_a_certificate_and_its_key_are_named(tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(SystemExit, match="are not a PEM certificate chain and its private key"):
        server_main(["--address", "127.0.0.1:0", "--tls-cert", str(junk), "--tls-key", str(junk)])


def test_a_token_no_client_can_send_is_refused_at_start(monkeypatch):
    monkeypatch.setenv("MNIST_AUTH_TOKEN", "two\tparts")
    with pytest.raises(SystemExit, match="holds a character that is not printable ASCII"):
        server_main(["--address", "127.0.0.1:0"])


def test_a_token_read_from_a_file_with_its_newline_lets_clients_in(tmp_path, mnist_dir, monkeypatch):
    """Kubernetes and Docker secrets usually end in a newline: before, every call was refused as 'wrong token'."""
    publish_random_model(tmp_path)
    monkeypatch.setenv("MNIST_AUTH_TOKEN", "s3cret\n")
    process, port = start_server(tmp_path, mnist_dir, [])
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30, metadata=bearer_metadata("s3cret"))
            assert info.version == "bench-random-init"
            with pytest.raises(grpc.RpcError) as refused:
                stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30, metadata=bearer_metadata("other"))
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        stop_server(process)


def test_a_certificate_and_its_key_pass_the_check_and_the_server_serves_tls(tmp_path, mnist_dir, tls_files):
    cert, key = tls_files
    publish_random_model(tmp_path)
    process, port = start_server(tmp_path, mnist_dir, ["--tls-cert", str(cert), "--tls-key", str(key)])
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
            info = inference_pb2_grpc.InferenceStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
            assert info.version == "bench-random-init"
    finally:
        stop_server(process)

"""The client CLI and the health probe against a real server; the server's own entry point as a process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from shared.checkpoint import publish_model
from shared.settings import Paths

from inference import client, health_probe
from inference.channel import grpc_target, make_channel
from inference.web import __main__ as web_main
from testkit.ports import free_port
from tests.inference.helpers import hold_calls, model_payload, publish

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def image_files(tmp_path_factory, digit_pngs):
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, (label, png, _) in enumerate(digit_pngs[:2]):
        path = folder / f"digit{i}-label{label}.png"
        path.write_bytes(png)
        paths.append(path)
    return paths


def run_client(capsys, *argv: str) -> tuple[int, str, str]:
    code = client.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_predict_prints_digits_and_bars(module_server, image_files, capsys, tmp_path):
    preview = tmp_path / "preview.png"
    code, out, err = run_client(
        capsys, "--target", module_server.target, "predict", *map(str, image_files), "--preview", str(preview)
    )
    assert code == 0, err
    for path in image_files:
        assert re.search(rf"{re.escape(str(path))}: \d \(\d+\.\d%, model v1\)", out)
    assert len(re.findall(r"^  \d \|.*\| \d\.\d{3}", out, re.M)) == 10 * len(image_files)
    assert out.count("<-") == len(image_files)  # the answer is marked once per image

    from PIL import Image

    with Image.open(preview) as img:
        assert img.format == "PNG"
        assert img.height >= 2 * 224  # one row per image


def test_predict_reports_a_file_that_is_not_an_image(module_server, image_files, capsys, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    code, out, err = run_client(
        capsys,
        "--target",
        module_server.target,
        "predict",
        str(image_files[0]),
        str(text),
        str(tmp_path / "missing.png"),
    )
    assert code == 1
    assert f"{image_files[0]}:" in out  # the good image is still answered
    assert f"{text}: not accepted:" in err
    assert "missing.png: cannot read" in err
    assert "Traceback" not in err


def test_evaluate_prints_the_table_and_saves_the_heatmap(module_server, capsys, tmp_path):
    out_png = tmp_path / "confusion.png"
    code, out, err = run_client(capsys, "--target", module_server.target, "evaluate", "--out", str(out_png))
    assert code == 0, err
    assert re.search(r"model v1, test split: 10000 images, accuracy \d+\.\d\d%", out)
    rows = re.findall(r"^\s+(\d)\s+\d\.\d{4}\s+\d\.\d{4}\s+\d\.\d{4}\s+(\d+)$", out, re.M)
    assert [int(d) for d, _ in rows] == list(range(10))
    assert sum(int(s) for _, s in rows) == 10_000
    assert out_png.read_bytes().startswith(b"\x89PNG")


def test_info_describes_the_model(module_server, capsys):
    code, out, err = run_client(capsys, "--target", module_server.target, "info")
    assert code == 0, err
    assert re.search(r"^version\s+v1$", out, re.M)
    assert re.search(r"^architecture\s+compact .*parameters$", out, re.M)
    assert "normalized as (x - 0.1307) / 0.3081" in out


def test_info_with_tls_and_token(serve, tmp_path, tls_files, capsys, monkeypatch):
    cert, key = tls_files
    publish(tmp_path / "artifacts", "secure", seed=1)
    running = serve(tls_cert=cert, tls_key=key, auth_token="tok")
    target = f"localhost:{running.port}"
    code, out, err = run_client(capsys, "--target", target, "--tls-ca", str(cert), "--token", "tok", "info")
    assert code == 0, err
    assert re.search(r"^version\s+secure$", out, re.M)
    code, out, err = run_client(capsys, "--target", target, "--tls-ca", str(cert), "info")
    assert code == 1
    assert "Pass --token" in err
    monkeypatch.setenv("MNIST_AUTH_TOKEN", "tok")  # the token may come from the environment instead
    code, out, err = run_client(capsys, "--target", target, "--tls-ca", str(cert), "info")
    assert code == 0, err


def test_a_tls_mismatch_is_said_as_one_not_as_a_server_that_is_down(serve, tmp_path, tls_files, capsys):
    cert, key = tls_files
    publish(tmp_path / "artifacts", "v1", seed=1)
    secure = f"127.0.0.1:{serve(tls_cert=cert, tls_key=key).port}"
    plain = f"127.0.0.1:{serve().port}"
    code, _, err = run_client(capsys, "--target", secure, "--timeout", "5", "info")  # plain to a TLS server
    assert code == 1 and "If it uses TLS, pass --tls-ca" in err, err
    code, _, err = run_client(capsys, "--target", plain, "--tls-ca", str(cert), "--timeout", "5", "info")
    assert code == 1 and "does not use TLS" in err and "leave out --tls" in err, err
    code, _, err = run_client(capsys, "--target", secure, "--tls", "--timeout", "5", "info")  # system roots: no
    assert code == 1 and "TLS handshake" in err and "Pass --tls-ca" in err and "Is it running" not in err, err


def test_a_tls_handshake_that_fails_is_one_line_without_grpcs_own_log_lines(serve, tmp_path):
    """--tls against a plain server printed two to five of gRPC's 'Handshake failed' log lines first."""
    publish(tmp_path / "artifacts", "v1", seed=1)
    plain = f"127.0.0.1:{serve().port}"
    env = {k: v for k, v in os.environ.items() if k != "GRPC_VERBOSITY"}
    done = subprocess.run(
        [sys.executable, "-m", "inference.client", "--target", plain, "--tls", "--timeout", "5", "info"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=60,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith("error:"), done.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--target", " "], "--target: must name the server, as host:port"),
        (["--tls-server-name", "inference"], "--tls-server-name names the host in the server's TLS certificate"),
        (["--target", "localhost:116087"], "--target: 'localhost:116087': the port must be a number from 1 to 65535"),
        (["--target", "localhost"], "--target: 'localhost' has no port; give it as host:port"),
        (["--target", "http://localhost:50051"], "--target: 'http://localhost:50051' is a URL; give it as host:port"),
        (["--target", "::1:50051"], "an IPv6 address goes in brackets, as [::1]:50051"),
    ],
)
def test_client_flags_that_cannot_work_are_refused_saying_why(flags, message, capsys):
    """A blank target failed in gRPC's core with an UNKNOWN error; a certificate name without TLS was ignored and
    the call went out in plain text; gRPC took port 116087 as 50551 (modulo 65536), a target without a port as port
    443, and said http://host:port as a server that is not running."""
    with pytest.raises(SystemExit) as exit_info:
        client.main([*flags, "info"])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_target_from_the_environment_is_checked_as_the_flag_is_naming_the_variable(capsys, monkeypatch):
    monkeypatch.setenv("MNIST_GRPC_TARGET", "localhost")
    with pytest.raises(SystemExit) as exit_info:
        client.main(["info"])
    assert exit_info.value.code == 2
    assert "environment variable MNIST_GRPC_TARGET='localhost': 'localhost' has no port" in capsys.readouterr().err


@pytest.mark.parametrize(
    "target",
    [
        "localhost:50051",
        "[::1]:50051",
        "dns:///inference:50051",
        "ipv4:127.0.0.1:1,127.0.0.1:2",
        "unix:/run/mnist.sock",
    ],
)
def test_host_port_targets_and_grpcs_own_forms_are_taken_as_they_are(target):
    assert grpc_target(f" {target} ") == target


def written(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda folder: folder / "missing.pem", "no such file"),
        (lambda folder: folder, "cannot be read (Is a directory)"),
        (lambda folder: written(folder / "key.pem", "-----BEGIN PRIVATE KEY-----"), "not a PEM file"),
    ],
)
def test_a_tls_ca_that_is_no_certificate_is_refused_at_start_not_as_an_unreachable_server(
    tmp_path, capsys, make, message
):
    code = None
    with pytest.raises(SystemExit) as exit_info:
        code = client.main(["--target", "localhost:1", "--tls-ca", str(make(tmp_path)), "info"])
    assert code is None and exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--tls-ca" in err and message in err and "Traceback" not in err


@pytest.mark.parametrize(
    "main",
    [
        pytest.param(lambda: client.main(["--target", "localhost:1", "info"]), id="client"),
        pytest.param(lambda: health_probe.main([]), id="health probe"),
        pytest.param(lambda: web_main.main(["--port", "0"]), id="web gateway"),
    ],
)
def test_a_tls_ca_from_the_environment_that_cannot_be_read_is_refused_naming_the_variable(
    tmp_path, capsys, monkeypatch, main
):
    monkeypatch.setenv("MNIST_TLS_CA", str(tmp_path / "missing.pem"))
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    # The flag was never typed: the message names the variable that holds the path.
    assert f"environment variable MNIST_TLS_CA='{tmp_path / 'missing.pem'}': " in err and "no such file" in err, err
    assert "argument --tls-ca" not in err and "Traceback" not in err


def test_client_reports_a_server_that_is_down(image_files):
    port = free_port()  # nothing listens there
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "inference.client", "--target", f"127.0.0.1:{port}", "predict", str(image_files[0])],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "cannot reach the inference server" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 30


def test_client_and_info_say_the_served_model_failed_not_that_the_server_is_unreachable(
    serve, tmp_path, image_files, capsys
):
    """The only published model's export is no ONNX file: the server is up and says why it serves nothing (its
    onnxruntime error reads "Failed to load model"). That must not come out as "cannot reach the server"."""
    artifacts = tmp_path / "artifacts"
    publish_model(Paths(artifacts).models, version="broken", model_payload=model_payload(1), onnx=b"not onnx at all")
    running = serve(artifacts)
    code, out, err = run_client(capsys, "--target", running.target, "predict", str(image_files[0]))
    assert code == 1
    assert "no model can be served" in err and "cannot reach" not in err, err
    code, out, err = run_client(capsys, "--target", running.target, "info")
    assert code == 0, err
    assert "fails the checks" in out and "waiting for the trainer" not in out, out


def test_health_probe(module_server, serve, capsys):
    assert health_probe.main(["--target", module_server.target, "--require-serving"]) == 0
    assert "SERVING" in capsys.readouterr().out

    waiting = serve()  # no model published
    assert health_probe.main(["--target", waiting.target]) == 0  # answering is enough without --require-serving
    assert health_probe.main(["--target", waiting.target, "--require-serving"]) == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 2 and "unhealthy" in out.splitlines()[1] and "NOT_SERVING" in out

    assert health_probe.main(["--target", f"127.0.0.1:{free_port()}", "--timeout", "2"]) == 1
    assert capsys.readouterr().out.startswith("unhealthy:")


def test_the_health_probe_names_the_services_it_may_ask_for_one_the_server_does_not_know(module_server, capsys):
    """It said "unhealthy: ...: NOT_FOUND: " and no more (the health service gives no details)."""
    assert health_probe.main(["--target", module_server.target, "--service", "mnist.Inference"]) == 1
    out = capsys.readouterr().out
    assert "no health status for service 'mnist.Inference'; ask '', 'mnist.v1.Inference', 'liveness'" in out, out
    for known in health_probe.HEALTH_SERVICES:  # each of them is one the server answers for
        assert health_probe.main(["--target", module_server.target, "--service", known, "--require-serving"]) == 0


def test_the_health_probe_refuses_flags_and_targets_the_client_refuses(capsys, monkeypatch):
    """--tls-server-name without TLS was ignored by the probe (the call went out in plain text), and a target with
    no port was tried: the probe checks its flags as the client does, naming the variable a target came from."""
    with pytest.raises(SystemExit) as refused:
        health_probe.main(["--target", "127.0.0.1:1", "--tls-server-name", "mnist"])
    assert refused.value.code == 2 and "give it with --tls or --tls-ca" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        health_probe.main(["--target", "localhost"])
    assert "has no port" in capsys.readouterr().err
    monkeypatch.setenv("MNIST_GRPC_TARGET", "localhost")
    with pytest.raises(SystemExit):
        health_probe.main([])
    assert "MNIST_GRPC_TARGET" in capsys.readouterr().err


def test_a_health_probe_with_tls_flags_that_do_not_match_the_server_says_which_flag_to_give(
    serve, tmp_path, tls_files, capsys
):
    """A plain probe of a TLS server said only "UNAVAILABLE: ... Socket closed", where the client, in the same case,
    says to pass --tls-ca: the probe takes the same TLS flags, and says the same as the client about them."""
    cert, key = tls_files
    publish(tmp_path / "artifacts", "v1", seed=1)
    secure = f"127.0.0.1:{serve(tls_cert=cert, tls_key=key).port}"
    plain = f"127.0.0.1:{serve().port}"
    assert health_probe.main(["--target", secure, "--timeout", "5"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("unhealthy:") and out.count("\n") == 1, out
    assert "If it uses TLS, pass --tls-ca (or --tls)." in out and secure in out, out
    assert health_probe.main(["--target", plain, "--tls-ca", str(cert), "--timeout", "5"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("unhealthy:") and "does not use TLS" in out and "leave out --tls" in out, out
    assert health_probe.main(["--target", secure, "--tls-ca", str(cert), "--require-serving"]) == 0
    assert "is SERVING" in capsys.readouterr().out
    # A server that is simply not there is not told about TLS.
    assert health_probe.main(["--target", f"127.0.0.1:{free_port()}", "--timeout", "2"]) == 1
    assert "TLS" not in capsys.readouterr().out


def test_server_process_serves_and_stops_on_sigterm(tmp_path, mnist_dir, image_files):
    """`python -m inference` as a process: logs, serves the published model, exits 0 on SIGTERM."""
    artifacts = tmp_path / "artifacts"
    publish(artifacts, "proc", seed=1)
    env = {**os.environ, "MNIST_ARTIFACTS_DIR": str(artifacts), "MNIST_DATA_DIR": str(mnist_dir)}
    process = subprocess.Popen(
        [sys.executable, "-m", "inference", "--address", "127.0.0.1:0", "--torch-threads", "1"],
        cwd=REPO_ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line)
            match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if match:
                port = int(match.group(1))
        assert port, "".join(lines)
        assert "serving model proc" in lines[-1]
        assert any("model proc loaded" in line for line in lines)

        assert health_probe.main(["--target", f"127.0.0.1:{port}", "--require-serving"]) == 0
        assert client.main(["--target", f"127.0.0.1:{port}", "predict", str(image_files[0])]) == 0

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        rest = process.stderr.read()
        assert "received SIGTERM" in rest and "shutting down" in rest and "stopped" in rest
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()


def test_help_shows_flags_and_defaults():
    from inference.__main__ import get_args_parser

    text = get_args_parser().format_help()
    for flag in ("--address", "--artifacts-dir", "--poll-interval", "--max-batch-size", "--tls-cert", "--auth-token"):
        assert flag in text
    assert "[::]:50051" in text or "MNIST_GRPC_ADDRESS" in text
    assert "(default: 1.0)" in text


@pytest.mark.parametrize(
    "parser_of, flag",
    [
        ("inference.__main__", "--artifacts-dir"),
        ("inference.__main__", "--data-dir"),
        ("inference.models", "--artifacts-dir"),
        ("scripts.local_stack", "--artifacts-dir"),
        ("scripts.local_stack", "--data-dir"),
    ],
)
def test_a_blank_folder_flag_is_refused_not_taken_for_the_working_directory(parser_of, flag, capsys):
    """An empty path is the working directory: the trainer's blank --artifacts-dir wrote a run's files wherever it
    was started. Every command's folder flags refuse a blank one."""
    import importlib

    parser = importlib.import_module(parser_of).get_args_parser()
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args([flag, ""] + (["list"] if parser_of == "inference.models" else []))
    assert exit_info.value.code == 2
    assert f"argument {flag}: must not be empty" in capsys.readouterr().err


def test_client_channel_balances_round_robin_over_replicas(serve, tmp_path):
    """Two replicas behind one target (as dns:///name:port gives): calls alternate between them."""
    from shared.api.mnist.v1 import inference_pb2 as pb
    from shared.api.mnist.v1 import inference_pb2_grpc

    replicas = []
    for name in ("a", "b"):
        publish(tmp_path / name, f"replica-{name}", seed=1)
        replicas.append(serve(tmp_path / name))
    target = "ipv4:" + ",".join(f"127.0.0.1:{r.port}" for r in replicas)
    with make_channel(target) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        grpc.channel_ready_future(channel).result(timeout=10)
        seen = set()
        deadline = time.monotonic() + 10
        while len(seen) < 2 and time.monotonic() < deadline:  # subchannels become READY one by one
            seen.add(stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5).version)
    assert seen == {"replica-a", "replica-b"}


# Runs serve() as `python -m inference` does, and has the kernel hand SIGTERM to a thread other than the main one,
# as it may for a signal sent to the process (all of gRPC's threads can take it): the C handler runs there and only
# sets a flag, which the main thread must come round to check.
SIGNAL_ON_ANOTHER_THREAD = """
import signal, sys, threading, time
from pathlib import Path
from inference.logs import configure_logging
from inference.options import ServerOptions
from inference.server import serve

def poke():
    while signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # until serve() has its handler
        time.sleep(0.05)
    time.sleep(1.0)
    print("signalling a helper thread", file=sys.stderr, flush=True)
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # this thread, not the main one

configure_logging("INFO", "text")
threading.Thread(target=poke, daemon=True).start()
serve("127.0.0.1:0", ServerOptions(artifacts_dir=Path(sys.argv[1]), data_dir=Path(sys.argv[2])), grace=1.0)
print("stopped", file=sys.stderr, flush=True)
"""


def test_a_signal_taken_by_another_thread_still_stops_the_server(tmp_path, mnist_dir):
    """Both workers of a replica once ignored Ctrl-C for 30 s, until killed: the signal had reached one of gRPC's
    threads while the main thread waited for it with no timeout, so the handler never ran."""
    artifacts = tmp_path / "artifacts"
    publish(artifacts, "poked", seed=1)
    process = subprocess.run(
        [sys.executable, "-c", SIGNAL_ON_ANOTHER_THREAD, str(artifacts), str(mnist_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 0, process.stderr
    assert "signalling a helper thread" in process.stderr
    assert "received SIGTERM" in process.stderr and process.stderr.rstrip().endswith("stopped"), process.stderr


def test_batches_keep_to_the_count_and_the_message_size():
    sized = [(Path(f"{i}.png"), size) for i, size in enumerate([400, 400, 400, 5000, 10, 10, 10])]
    runs = [[path.name for path, _ in run] for run in client.batches(sized, 3, 2000)]
    # 1,024 bytes of message and 16 per image: two images of 400 fit in 2,000 bytes, three do not; an image over
    # the limit goes alone; small ones stop at the count.
    assert runs == [["0.png", "1.png"], ["2.png"], ["3.png"], ["4.png", "5.png", "6.png"]]


def test_predict_splits_large_pictures_over_calls_within_the_servers_message_limit(
    module_server, digit_pngs, capsys, tmp_path
):
    # 12 pictures of 98 kB: under the server's per-image limit, together over its 1 MB message limit.
    from tests.reliability import bad_inputs

    paths = []
    for i in range(12):
        path = tmp_path / f"big{i}.png"
        path.write_bytes(bad_inputs.oversized_bytes(digit_pngs[i][2], 98_000))
        paths.append(path)
    code, out, err = run_client(capsys, "--target", module_server.target, "predict", *map(str, paths))
    assert code == 0, err
    assert all(f"{path}: " in out for path in paths)


def test_preview_is_a_png_whatever_the_name(module_server, image_files, capsys, tmp_path):
    from PIL import Image

    preview = tmp_path / "preview"  # no extension
    code, _, err = run_client(
        capsys, "--target", module_server.target, "predict", str(image_files[0]), "--preview", str(preview)
    )
    assert code == 0, err
    with Image.open(preview) as img:
        assert img.format == "PNG"


def test_a_preview_or_heatmap_named_jpg_is_a_jpeg_and_one_named_png_is_the_servers_png(
    module_server, image_files, capsys, tmp_path
):
    """--preview out.jpg wrote PNG bytes under a .jpg name (a review's): a name whose extension is an image format's
    gets that format; the heatmap named .png is the server's own bytes."""
    from PIL import Image

    preview, heatmap = tmp_path / "preview.JPG", tmp_path / "confusion.jpeg"
    code, _, err = run_client(
        capsys, "--target", module_server.target, "predict", str(image_files[0]), "--preview", str(preview)
    )
    assert code == 0, err
    code, _, err = run_client(capsys, "--target", module_server.target, "evaluate", "--out", str(heatmap))
    assert code == 0, err
    for path in (preview, heatmap):
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.width > 100, (path, img.format)
    # The same command again writes over its own preview: a file already there was refused as "is a file, not a
    # folder" (a review's).
    code, _, err = run_client(
        capsys, "--target", module_server.target, "predict", str(image_files[0]), "--preview", str(preview)
    )
    assert code == 0, err


def test_evaluate_help_says_what_each_flag_does_and_no_empty_default(capsys):
    """`mnist-client evaluate --help` showed "--model-version VERSION ... (default: )" and --split with no word."""
    with pytest.raises(SystemExit):
        client.main(["evaluate", "--help"])
    out = capsys.readouterr().out
    assert "(default: )" not in out and "held out of training" in out, out


def test_client_refuses_a_token_or_a_timeout_no_call_could_use(capsys, monkeypatch):
    code, _out, err = run_client(capsys, "--target", "127.0.0.1:1", "--token", "s3c\nret", "info")
    assert code == 2 and "not printable ASCII" in err and "Traceback" not in err
    monkeypatch.setenv("MNIST_AUTH_TOKEN", "sécret")
    code, _out, err = run_client(capsys, "--target", "127.0.0.1:1", "info")
    assert code == 2 and "MNIST_AUTH_TOKEN" in err
    for timeout in ("0", "-1", "nan", "inf"):
        with pytest.raises(SystemExit):
            client.main(["--timeout", timeout, "info"])
        assert "--timeout: must be a number of seconds above 0" in capsys.readouterr().err


def test_a_certificate_for_another_host_is_said_as_such_not_as_a_server_that_is_down(
    serve, tmp_path, tls_files, capsys
):
    """gRPC's 'Hostname Verification Check failed' came out as "cannot reach ... Is it running?"."""
    cert, key = tls_files  # names localhost and 127.0.0.1
    publish(tmp_path / "artifacts", "v1", seed=1)
    target = f"127.0.0.1:{serve(tls_cert=cert, tls_key=key).port}"
    flags = ["--target", target, "--tls-ca", str(cert), "--tls-server-name", "inference.internal", "--timeout", "5"]
    code, _, err = run_client(capsys, *flags, "info")
    assert code == 1 and "TLS certificate that does not name the host" in err, err
    assert "pass --tls-server-name NAME" in err and "Is it running" not in err, err


def sparse_file(path: Path, size: int) -> Path:
    """A file of `size` bytes that takes no room on disk (a hole)."""
    with path.open("wb") as f:
        f.truncate(size)
    return path


@pytest.mark.parametrize("command", ["predict", "read"])
@pytest.mark.parametrize(
    "size, limits, said",
    [
        # Under the message limit, over the image limit: the service would refuse it for the image limit.
        (300_000, {"max_image_bytes": 200_000, "max_message_bytes": 1_000_000}, "200,000 bytes, its --max-image-bytes"),
        (
            1_500_000,
            {"max_image_bytes": 2_000_000, "max_message_bytes": 1_000_000},
            "1,000,000 bytes, its --max-message-bytes",
        ),
        (
            3 * 1024**3,
            {"max_image_bytes": 200_000, "max_message_bytes": 1_000_000},
            "200,000 bytes, its --max-image-bytes",
        ),
    ],
    ids=["over the image limit", "over the message limit", "3 GB"],
)
def test_a_file_over_the_services_limits_is_refused_naming_the_limit_without_being_read(
    serve, tmp_path, capsys, monkeypatch, command, size, limits, said
):
    """A 3 GB file was read whole into memory before its size was looked at (a MemoryError under a memory limit),
    and a file between the 10 MiB image limit and the 16 MiB message limit was sent, for the service to refuse."""
    publish(tmp_path / "artifacts", "v1", seed=1)
    running = serve(**limits)
    big = sparse_file(tmp_path / "big.png", size)
    read_bytes = Path.read_bytes

    def never_the_big_file(path: Path) -> bytes:
        assert path != big, "the file over the limit was read"
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", never_the_big_file)
    code, _, err = run_client(capsys, "--target", running.target, command, str(big))
    assert code == 1 and f"{big}: not accepted: the file is {size:,} bytes" in err, err
    assert f"the limit is {said}" in err and "Traceback" not in err, err


@pytest.mark.parametrize("command", ["predict", "read"])
def test_a_device_with_no_end_is_read_no_further_than_a_call_carries(serve, tmp_path, capsys, command):
    """/dev/zero has no size to look at (0): it passed the check and was read whole, until the machine ran out of
    memory (22 GB, the kernel's OOM killer)."""
    publish(tmp_path / "artifacts", "v1", seed=1)
    running = serve(max_message_bytes=1 << 20)
    code, _, err = run_client(capsys, "--target", running.target, command, "/dev/zero")
    assert code == 1 and "/dev/zero: not accepted: the file is over 1,047,536 bytes" in err, err
    assert "its --max-message-bytes" in err and "Traceback" not in err, err


@pytest.mark.parametrize("command", ["predict", "read"])
def test_a_picture_from_a_named_pipe_is_read_once(serve, tmp_path, capsys, image_files, command):
    """A named pipe was opened for its size and closed, which lost its writer (SIGPIPE), then opened again to be
    read, which waited for a writer for ever. A pipe is read once, as `cat digit.png | ... /dev/stdin` is."""
    publish(tmp_path / "artifacts", "v1", seed=1)
    running = serve()
    pipe = tmp_path / "digit-pipe"
    os.mkfifo(pipe)
    png = image_files[0].read_bytes()

    def write() -> None:
        with pipe.open("wb") as f:  # waits for the reader, as a shell's writer does
            f.write(png)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    code, out, err = run_client(capsys, "--target", running.target, "--timeout", "20", command, str(pipe))
    writer.join(timeout=10)
    assert code == 0 and out.startswith(f"{pipe}: ") and not writer.is_alive(), err


@pytest.mark.parametrize(
    "command, flag, name, kind",
    [
        ("predict", "--preview", "seen.blp", "BLP"),
        ("evaluate", "--out", "heat.xbm", "XBM"),
        ("read", "--preview", "b.h5", "HDF5"),
    ],
)
def test_a_picture_named_in_a_format_it_cannot_be_saved_in_is_refused_before_the_call(
    tmp_path, image_files, capsys, command, flag, name, kind
):
    """.blp ended in a traceback and .xbm in "cannot write mode RGB as XBM", both after the server's work, with
    nothing saved. No server answers here: the name is refused before any call is made."""
    images = [] if command == "evaluate" else [str(image_files[0])]
    target = f"127.0.0.1:{free_port()}"
    code, _, err = run_client(capsys, "--target", target, command, *images, flag, str(tmp_path / name))
    assert code == 2 and f"cannot save a picture as {kind}" in err and "name a .png" in err, err
    assert not (tmp_path / name).exists()


def test_a_server_that_goes_away_mid_command_is_said_as_such_not_as_a_slow_answer(
    serve, tmp_path, image_files, capsys, monkeypatch
):
    """A server stopped between two calls of one command came out as "did not answer in time (raise --timeout)"."""
    publish(tmp_path / "artifacts", "v1", seed=1)
    running = serve()
    real_answer_line = client.answer_line

    def stop_after_the_first_answer(*args):
        running.server.stop(grace=0)
        return real_answer_line(*args)

    monkeypatch.setattr(client, "answer_line", stop_after_the_first_answer)
    images = [str(image_files[0]), str(image_files[1])]
    code, out, err = run_client(
        capsys, "--target", running.target, "--timeout", "3", "predict", "--batch-size", "1", *images
    )
    assert code == 1 and f"{image_files[0]}: " in out, err
    assert f"the inference server at {running.target} went away (stopped, or restarting)" in err, err
    assert "not back within --timeout" in err and "did not answer in time" not in err, err


def test_a_server_too_slow_to_answer_is_still_said_as_one(serve, tmp_path, image_files, capsys, monkeypatch):
    import inference.service

    publish(tmp_path / "artifacts", "v1", seed=1)
    running = serve()
    entered, release = hold_calls(monkeypatch, inference.service, "digit_log_probs", timeout=30)
    try:
        code, _, err = run_client(capsys, "--target", running.target, "--timeout", "2", "predict", str(image_files[0]))
    finally:
        release.set()
    assert entered.is_set()
    assert code == 1 and "did not answer in time (raise --timeout)" in err and "went away" not in err, err


def test_the_health_only_port_is_said_to_serve_no_inference_api(serve, tmp_path, capsys):
    """It answered "error: UNIMPLEMENTED: Method not found!"."""
    publish(tmp_path / "artifacts", "v1", seed=1)
    running = serve(health_address="127.0.0.1:0")
    target = f"127.0.0.1:{running.server.health_port}"
    code, _, err = run_client(capsys, "--target", target, "--timeout", "5", "info")
    assert code == 1 and f"the server at {target} does not serve the mnist inference API" in err, err
    assert "--health-address" in err and "50051 by default" in err, err


def test_the_token_is_trimmed_and_a_wrong_one_is_said_to_be_wrong_not_missing(serve, tmp_path, capsys):
    publish(tmp_path / "artifacts", "v1", seed=1)
    target = serve(auth_token="tok").target
    code, _, err = run_client(capsys, "--target", target, "--token", " tok\n", "info")  # as MNIST_AUTH_TOKEN is
    assert code == 0, err
    code, _, err = run_client(capsys, "--target", target, "--token", "not-tok", "info")
    assert code == 1 and f"the server at {target} refused the token sent with --token" in err, err
    assert "Pass --token" not in err, err

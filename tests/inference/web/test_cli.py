"""`python -m inference.web` as a process: flags and their environment variables, the health probe, the log,
SIGTERM; and the gateway's channel spreading calls over several replicas."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import settings
from shared.settings import ENV_AUTH_TOKEN

from inference.web import probe
from inference.web.__main__ import get_args_parser
from testkit.ports import free_port
from tests.inference.helpers import publish

REPO_ROOT = Path(__file__).resolve().parents[3]


def test_help_shows_every_setting_with_its_default_and_variable():
    text = get_args_parser().format_help()
    for flag in ("--host", "--port", "--target", "--token", "--tls-ca", "--timeout", "--max-body-bytes"):
        assert flag in text
    for variable in (settings.ENV_WEB_HOST, settings.ENV_WEB_PORT, settings.ENV_GRPC_TARGET, ENV_AUTH_TOKEN):
        assert variable in text
    assert "(default: 8080)" in text and f"(default: {settings.DEFAULT_GRPC_TARGET})" in text


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv(settings.ENV_WEB_PORT, "8099")
    monkeypatch.setenv(settings.ENV_WEB_HOST, "0.0.0.0")
    monkeypatch.setenv(settings.ENV_GRPC_TARGET, "dns:///inference:50051")
    monkeypatch.setenv(ENV_AUTH_TOKEN, "never-printed")
    parser = get_args_parser()
    args = parser.parse_args([])
    assert (args.port, args.host, args.target) == (8099, "0.0.0.0", "dns:///inference:50051")
    assert "never-printed" not in parser.format_help()  # the token is read from the environment in main()
    assert parser.parse_args(["--port", "9000"]).port == 9000


@pytest.mark.parametrize(
    "flags, env, message",
    [
        # Before: 70000 listened on 4464 (the socket layer takes it modulo 65536), -1 ended in tracebacks.
        (["--port", "70000"], {}, "--port: must be a port from 0 to 65535, got 70000"),
        ([], {settings.ENV_WEB_PORT: "-1"}, f"{settings.ENV_WEB_PORT}='-1': must be a port from 0 to 65535, got -1"),
        # Before: an empty host listened on every interface.
        (["--host", ""], {}, "--host: must not be empty"),
        # Before: a ValueError traceback from the logging set-up.
        ([], {settings.ENV_LOG_FORMAT: "xml"}, f"{settings.ENV_LOG_FORMAT}='xml' must be one of: text, json"),
        (["--timeout", "abc"], {}, "--timeout: must be a number of seconds above 0, got 'abc'"),
    ],
)
def test_unusable_settings_are_refused_by_the_parser_naming_them(flags, env, message, monkeypatch, capsys):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_info:
        get_args_parser().parse_args(flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_target_from_the_environment_is_refused_naming_the_variable_not_a_flag_never_given(monkeypatch, capsys):
    """MNIST_GRPC_TARGET=localhost said "argument --target: 'localhost' has no port" to someone who typed no
    --target; the client names the variable, as the gateway's other settings from the environment do."""
    monkeypatch.setenv(settings.ENV_GRPC_TARGET, "localhost")
    with pytest.raises(SystemExit) as exit_info:
        get_args_parser().parse_args([])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"environment variable {settings.ENV_GRPC_TARGET}='localhost': 'localhost' has no port" in err, err
    assert "argument --target" not in err, err
    # A typed --target is the one used, and the one a refusal names.
    assert get_args_parser().parse_args(["--target", "localhost:50051"]).target == "localhost:50051"
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["--target", "other"])
    assert "argument --target: 'other' has no port" in capsys.readouterr().err


def start_web_process(grpc_target: str, *extra: str, env: dict | None = None) -> tuple[subprocess.Popen, int, list]:
    process = subprocess.Popen(
        [sys.executable, "-m", "inference.web", "--port", "0", "--target", grpc_target, *extra],
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
        if match:
            return process, int(match.group(1)), lines
    process.kill()
    process.wait()
    raise AssertionError("the web service did not start:\n" + "".join(lines))


def test_web_process_serves_probes_and_stops_on_sigterm(serve, tmp_path, digit_pngs, capsys):
    artifacts = tmp_path / "artifacts"
    backend = serve(artifacts)  # no model yet
    process, port, lines = start_web_process(backend.target, "--log-format", "json")
    try:
        assert any("REST API and page in front of the gRPC service at " + backend.target in line for line in lines)
        assert all(json.loads(line) for line in lines)  # --log-format json: uvicorn's lines too
        target = f"127.0.0.1:{port}"
        assert probe.main(["--target", target]) == 0  # alive
        assert probe.main(["--target", target, "--require-ready"]) == 1  # but not ready: no model
        out = capsys.readouterr().out
        assert "healthy" in out and "503" in out and "NOT_SERVING" in out
        publish(artifacts, "late", seed=1)
        deadline = time.monotonic() + 15
        while probe.main(["--target", target, "--require-ready"]) != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        request = urllib.request.Request(
            f"http://{target}/v1/predict", data=digit_pngs[0][1], headers={"Content-Type": "image/png"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.load(response)["model_version"] == "late"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        rest = process.stderr.read()
        assert "POST /v1/predict" in rest  # the access log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()


def test_probe_of_nothing_is_unhealthy(capsys):
    assert probe.main(["--target", f"127.0.0.1:{free_port()}", "--timeout", "2"]) == 1
    assert capsys.readouterr().out.startswith("unhealthy:")


@pytest.mark.parametrize("target", ["localhost:abc", "local host:8080"])
def test_probe_of_a_target_that_is_not_host_port_says_so_without_a_traceback(target, capsys):
    assert probe.main(["--target", target, "--timeout", "2"]) == 2
    assert f"--target {target!r} is not host:port" in capsys.readouterr().out


@contextlib.contextmanager
def http_server_answering(path: str) -> Iterator[str]:
    """A plain HTTP server on loopback that answers GET `path` 200 and any other path 404; yields its host:port."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == path else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_probe_asks_another_path_for_another_http_server(capsys):
    """--path / is TensorBoard's check in docker-compose.yml: any 2xx is healthy, anything else is not."""
    with http_server_answering("/") as target:
        assert probe.main(["--target", target, "--path", "/"]) == 0
        assert capsys.readouterr().out == f"healthy: http://{target}/ answered 200\n"
        assert probe.main(["--target", target]) == 1  # /healthz: this server has none
        assert "answered 404" in capsys.readouterr().out


def test_probe_asks_its_target_directly_even_where_a_proxy_is_set(monkeypatch, capsys):
    """urlopen went through $http_proxy, which a proxied environment sets for the outside world: with
    http_proxy=http://127.0.0.1:9 the probe said a gateway that answered was unhealthy."""
    dead = f"http://127.0.0.1:{free_port()}"
    for name in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, dead)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(urllib.request, "_opener", None)  # urlopen's opener reads the environment once, when made
    with http_server_answering("/healthz") as target:
        assert probe.main(["--target", target, "--timeout", "2"]) == 0, capsys.readouterr().out
        assert capsys.readouterr().out == f"healthy: http://{target}/healthz answered 200\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--path", "healthz"], "'healthz' must be a path starting with '/'"),
        (["--path", "/", "--require-ready"], "--path and --require-ready ask two paths: give one"),
    ],
)
def test_probe_refuses_a_path_it_cannot_ask(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        probe.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_port_in_use_is_an_error_not_a_hang(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "inference.web", "--port", str(port)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 3  # uvicorn's start-up failure
    assert "address already in use" in result.stderr.lower()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--timeout", "0"], "--timeout: must be a number of seconds above 0"),
        (["--evaluate-timeout", "nan"], "--evaluate-timeout: must be a number of seconds above 0"),
        (["--max-body-bytes", "0"], "--max-body-bytes must be at least 1"),
        (["--tls-ca", "/nonexistent/ca.pem"], "no such file"),
        (["--tls-ca", "/"], "--tls-ca: /: cannot be read (Is a directory)"),
        (["--tls-ca", __file__], "not a PEM file of certificates"),
        (["--token", "two\tparts"], "--token (MNIST_AUTH_TOKEN) holds a character that is not printable ASCII"),
        (["--token", " \n"], "--token (MNIST_AUTH_TOKEN) is empty"),
        (["--allowed-hosts", " , "], "--allowed-hosts (MNIST_WEB_ALLOWED_HOSTS): name at least one host"),
        # Taken, it matched no Host header (their ports are dropped): every request got 400.
        (["--allowed-hosts", "localhost:8080"], "'localhost:8080': name the host without a port (as in 'localhost')"),
        # Ignored without TLS: the calls went out in plain text.
        (["--tls-server-name", "inference"], "--tls-server-name names the host in the server's TLS certificate"),
        (["--target", ""], "--target: must name the server"),
        (["--allowed-hosts", "a*b.com"], "--allowed-hosts (MNIST_WEB_ALLOWED_HOSTS): 'a*b.com': a * stands alone"),
        (
            ["--allowed-hosts", "*x.com"],
            "--allowed-hosts (MNIST_WEB_ALLOWED_HOSTS): '*x.com': a * stands alone, or begins a name as in "
            "*.example.com",
        ),
    ],
)
def test_bad_settings_are_refused_with_a_message(argv, message, capsys):
    from inference.web.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert message in str(e.value) + capsys.readouterr().err  # argparse's refusals are printed


def test_the_gateway_spreads_calls_over_every_replica(web, serve, tmp_path, digit_pngs):
    """Two replicas behind one target (as dns:///inference:50051 gives in compose): REST calls reach both."""
    replicas = []
    for name in ("a", "b"):
        publish(tmp_path / name, f"replica-{name}", seed=1)
        replicas.append(serve(tmp_path / name))
    gateway = web(target="ipv4:" + ",".join(f"127.0.0.1:{r.port}" for r in replicas))
    seen = {gateway.post("/v1/predict", digit_pngs[0][1]).json()["model_version"] for _ in range(8)}
    assert seen == {"replica-a", "replica-b"}

"""The local stack's supervision (scripts/local_stack.py) and its wrappers (scripts/stack.sh, make), with
stand-in commands: fast, and independent of what the real services do. The real services run in
test_stack_e2e.py."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from shared import settings

from scripts.local_stack import Service, Supervisor
from testkit.ports import free_ports
from tests.deploy.compose_model import REPO
from tests.deploy.helpers import Capture, end_process_tree, wait_for

PY = sys.executable
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("MNIST_") and k != "VIRTUAL_ENV"}


def py(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


# A long-running stand-in that ends cleanly on SIGINT or SIGTERM, saying which.
SERVER = """
import signal, sys, time
def bye(signum, frame):
    print("got", signal.Signals(signum).name, flush=True)
    sys.exit(0)
signal.signal(signal.SIGINT, bye)
signal.signal(signal.SIGTERM, bye)
print("{name} up", flush=True)
while True:
    time.sleep(0.05)
"""


@pytest.fixture
def start():
    """start(supervisor) runs it in a thread: (thread, [its exit status once it returns]). At the end of the test,
    pass or fail, a supervisor still running is stopped at once, with every service it started."""
    started: list[tuple[Supervisor, threading.Thread]] = []

    def _start(supervisor: Supervisor) -> tuple[threading.Thread, list[int]]:
        result: list[int] = []
        thread = threading.Thread(target=lambda: result.append(supervisor.run()), daemon=True)
        thread.start()
        started.append((supervisor, thread))
        return thread, result

    yield _start
    for supervisor, thread in started:
        if thread.is_alive():
            supervisor.request_stop(signal.SIGTERM)
            supervisor.request_stop(signal.SIGTERM)  # asked twice: it kills each service's process group at once
            thread.join(15)
        assert not thread.is_alive(), "a supervisor did not stop"


def test_prefixes_lines_and_a_finished_job_leaves_the_others_running(start):
    out = Capture()
    services = [
        Service("trainer", py('print("epoch 1/1"); print("published", flush=True)')),
        Service("inference", py(SERVER.format(name="inference")), restart_on_failure=True),
        Service("tensorboard", py(SERVER.format(name="tensorboard")), restart_on_failure=True),
    ]
    supervisor = Supervisor(services, out=out, stop_timeout=5)
    thread, result = start(supervisor)
    wait_for(lambda: "stack       | trainer exited with code 0" in out.lines(), what="the trainer to finish")
    wait_for(lambda: "tensorboard | tensorboard up" in out.lines() and "inference   | inference up" in out.lines())
    time.sleep(0.3)
    processes = supervisor.processes()
    assert thread.is_alive() and set(processes) == {"inference", "tensorboard"}
    assert all(p.poll() is None for p in processes.values()), "a job that ended 0 must not stop the others"
    assert "trainer     | epoch 1/1" in out.lines() and "trainer     | published" in out.lines()

    supervisor.request_stop(signal.SIGINT)
    thread.join(15)
    assert result == [0], out.text
    assert all(p.poll() is not None for p in processes.values())
    assert "inference   | got SIGINT" in out.lines() and "tensorboard | got SIGINT" in out.lines()
    assert "killing" not in out.text


def test_a_service_that_ignores_the_signal_is_killed_after_the_timeout_with_its_children(tmp_path, start):
    out = Capture()
    child_pid_file = tmp_path / "child.pid"
    stubborn = py(f"""
        import signal, subprocess, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen(["sleep", "60"])  # a grandchild: must not outlive the stack
        open({str(child_pid_file)!r}, "w").write(str(child.pid))
        print("ready", flush=True)
        time.sleep(60)
    """)
    supervisor = Supervisor([Service("stubborn", stubborn)], out=out, stop_timeout=0.5)
    thread, result = start(supervisor)
    wait_for(lambda: "stubborn | ready" in out.lines(), what="the stand-in to start")
    grandchild = int(child_pid_file.read_text())
    started = time.monotonic()
    supervisor.request_stop(signal.SIGTERM)
    thread.join(10)
    assert 0.4 < time.monotonic() - started < 5
    assert result == [1], "a kill is not a clean stop"
    assert "stack    | killing stubborn (still running after 0.5 s)" in out.lines()
    wait_for(
        lambda: (
            not Path(f"/proc/{grandchild}").exists() or "Z" in Path(f"/proc/{grandchild}/stat").read_text().split()[2]
        ),
        timeout=5,
        what="the grandchild to die with its process group",
    )


def test_a_second_stop_request_kills_at_once(start):
    out = Capture()
    supervisor = Supervisor(
        [
            Service(
                "stubborn",
                py(
                    "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                    'print("ready", flush=True); time.sleep(60)'
                ),
            )
        ],
        out=out,
        stop_timeout=30,
    )
    thread, result = start(supervisor)
    wait_for(lambda: "stubborn | ready" in out.lines())
    supervisor.request_stop(signal.SIGINT)
    time.sleep(0.3)
    assert thread.is_alive()
    supervisor.request_stop(signal.SIGINT)
    thread.join(5)
    assert result == [1] and "killing stubborn (asked twice)" in out.text


def test_failing_service_is_restarted_then_the_stack_gives_up(tmp_path, start):
    out = Capture()
    count = tmp_path / "starts"
    crashing = py(f'open({str(count)!r}, "a").write("x"); print("crashing", flush=True); raise SystemExit(3)')
    services = [
        Service("inference", crashing, restart_on_failure=True),
        Service("tensorboard", py(SERVER.format(name="tensorboard")), restart_on_failure=True),
    ]
    supervisor = Supervisor(services, out=out, stop_timeout=5, max_restarts=2, restart_delay=0.05)
    thread, result = start(supervisor)
    thread.join(30)
    assert result == [1], out.text
    assert count.read_text() == "xxx", "the first start and 2 restarts"
    assert "stack       | restarting inference in 0.05 s (restart 1 of 2)" in out.lines()
    assert "stack       | restarting inference in 0.1 s (restart 2 of 2)" in out.lines()
    assert "stack       | inference failed 3 times in a row; stopping the stack" in out.lines()
    assert "tensorboard | got SIGTERM" in out.lines(), "the rest of the stack is stopped cleanly"


def test_a_service_that_gives_up_lets_a_running_job_finish_before_the_stack_stops(start):
    """A TensorBoard failing its restarts stopped the stack, and the trainer with it, halfway through its run."""
    out = Capture()
    services = [
        Service("trainer", py('import time; time.sleep(2); print("published", flush=True)')),
        Service("tensorboard", py("raise SystemExit(3)"), restart_on_failure=True),
        Service("inference", py(SERVER.format(name="inference")), restart_on_failure=True),
    ]
    supervisor = Supervisor(services, out=out, stop_timeout=5, max_restarts=1, restart_delay=0.05)
    thread, result = start(supervisor)
    thread.join(30)
    assert result == [1], out.text  # a service failed
    lines = out.lines()
    gave_up = lines.index(
        "stack       | tensorboard failed 2 times in a row; the stack stops when trainer ends (Ctrl-C stops it now)"
    )
    assert gave_up < lines.index("trainer     | published") < lines.index("stack       | trainer exited with code 0")
    assert "inference   | got SIGTERM" in lines  # then the rest is stopped cleanly


def test_a_failed_job_is_not_restarted_and_makes_the_exit_status_1(start):
    out = Capture()
    supervisor = Supervisor([Service("trainer", py("raise SystemExit(2)"))], out=out)
    thread, result = start(supervisor)
    thread.join(15)
    assert result == [1] and out.text.count("trainer exited with code 2") == 1


def test_carriage_returns_and_an_unfinished_last_line_are_lines_too(start):
    out = Capture()
    code = 'import sys; sys.stdout.write("10%\\r50%\\r100%\\r\\ndone\\n\\nlast"); sys.stdout.flush()'
    supervisor = Supervisor([Service("job", py(code))], out=out)
    thread, result = start(supervisor)
    thread.join(15)
    assert result == [0]
    assert out.lines()[:6] == ["job   | 10%", "job   | 50%", "job   | 100%", "job   | done", "job   | ", "job   | last"]


def test_a_command_that_cannot_start_is_reported(start):
    out = Capture()
    supervisor = Supervisor([Service("ghost", ["/nonexistent/program"])], out=out)
    thread, result = start(supervisor)
    thread.join(5)
    assert result == [1] and "cannot start ghost (/nonexistent/program)" in out.text


# --------------------------------------------------------------------------------------------------------------
# The command line, with a stand-in interpreter that plays the four services


FAKE_PYTHON = """#!/usr/bin/env bash
# Plays `python -m <service>`: records what it was given, then acts like the service.
case "$2" in inference.web) svc=web ;; *) svc="${2%%.*}" ;; esac  # tensorboard.main -> tensorboard
printf '%s\\n' "$*" > "$FAKE_DIR/$svc.argv"
env | grep '^MNIST_' | sort > "$FAKE_DIR/$svc.env"
echo "$svc starting"
if [ "$svc" = trainer ]; then echo "epoch 1/1"; exit 0; fi
trap 'echo "$svc got SIGINT"; exit 0' INT
echo $$ > "$FAKE_DIR/$svc.pid"
# Until stopped, or until the supervisor that started it is gone: a stand-in never outlives its stack.
while kill -0 "$PPID" 2>/dev/null; do sleep 0.05; done
"""


@pytest.mark.parametrize("sent, stopped_by", [(signal.SIGINT, "SIGINT"), (signal.SIGHUP, "SIGTERM")])
def test_cli_runs_four_services_with_shared_settings_and_ctrl_c_or_a_closed_terminal_stops_them(
    tmp_path, sent, stopped_by
):
    """SIGINT is Ctrl-C; SIGHUP a terminal closed or an SSH session dropped, which reaches only the supervisor (each
    service has a session of its own): its default ended the supervisor at once, and every service ran on,
    holding its port, so that the next `make stack` found them taken."""
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    env = {**CLEAN_ENV, "FAKE_DIR": str(tmp_path), "MNIST_TENSORBOARD_PORT": "6007", "MNIST_EPOCHS": "4"}
    stack = subprocess.Popen(
        [
            PY,
            "-m",
            "scripts.local_stack",
            "--python",
            str(fake),
            "--artifacts-dir",
            str(tmp_path / "a"),
            "--data-dir",
            str(tmp_path / "mnist"),
            "--trainer-args",
            "--train-subset 2000",
            "--stop-timeout",
            "5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=REPO,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(stack.stdout), daemon=True)
    reader.start()
    try:
        wait_for(
            lambda: (
                all((tmp_path / f"{n}.pid").exists() for n in ("inference", "web", "tensorboard"))
                and any("trainer exited with code 0" in line for line in lines)
            ),
            what="the stand-ins to start",
        )
        time.sleep(0.3)
        assert stack.poll() is None, "the trainer's exit 0 must not end the stack"
        stack.send_signal(sent)
        try:
            code = stack.wait(60)  # a bound on a hang, not a speed: a CI run's two busy workers once took over 15 s
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the stack did not stop within 60 s of {sent.name}; it said: {lines}") from None
        assert code == 0, lines
    finally:
        # Pass or fail, nothing it started may outlive the test: the stand-ins run in sessions of their own.
        end_process_tree(stack)
    reader.join(5)
    out = [line.rstrip("\n") for line in lines]
    assert f"stack       | stopping inference, web, tensorboard ({stopped_by})" in out, out
    for name in ("inference", "web", "tensorboard"):
        assert sent != signal.SIGINT or f"{name:<11} | {name} got SIGINT" in out, out
        pid = int((tmp_path / f"{name}.pid").read_text())
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert "trainer     | epoch 1/1" in out
    assert "stack       | TensorBoard: http://localhost:6007/" in out
    assert "stack       | web page and REST API: http://localhost:8080/ (API docs at /docs)" in out

    argv = {n: (tmp_path / f"{n}.argv").read_text().split() for n in ("trainer", "inference", "web", "tensorboard")}
    assert argv["trainer"] == ["-m", "trainer", "--train-subset", "2000"]
    assert argv["inference"] == ["-m", "inference"]
    assert argv["web"] == ["-m", "inference.web", "--host", "localhost", "--port", "8080"]
    assert argv["tensorboard"] == [
        "-m",
        "tensorboard.main",
        "--logdir",
        str(tmp_path / "a" / "runs"),
        "--host",
        "localhost",
        "--port",
        "6007",
    ]
    # All four see the same settings, the artifacts folder as an absolute path.
    envs = {n: (tmp_path / f"{n}.env").read_text() for n in argv}
    assert len(set(envs.values())) == 1
    assert f"MNIST_ARTIFACTS_DIR={tmp_path / 'a'}" in envs["trainer"].splitlines()
    assert f"MNIST_DATA_DIR={tmp_path / 'mnist'}" in envs["trainer"].splitlines()
    assert "MNIST_EPOCHS=4" in envs["trainer"].splitlines()
    assert "MNIST_GRPC_ADDRESS=localhost:50051" in envs["trainer"].splitlines()
    assert "MNIST_GRPC_TARGET=localhost:50051" in envs["web"].splitlines()  # the page finds the local service


@pytest.mark.parametrize(
    "flag, variable",
    [
        ("--tensorboard-port", "MNIST_TENSORBOARD_PORT"),
        ("--web-port", "MNIST_WEB_PORT"),
        ("--grpc-address", "MNIST_GRPC_ADDRESS"),
        ("--health-address", "MNIST_HEALTH_ADDRESS"),
        ("--metrics-address", "MNIST_METRICS_ADDRESS"),
    ],
)
def test_a_port_in_use_stops_the_stack_before_anything_starts_naming_the_variable_that_moves_it(
    tmp_path, flag, variable
):
    """A TensorBoard whose port was taken failed its restarts and stopped the stack: the trainer, killed halfway
    through its run, with it."""
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    free = {  # every other port free: chosen by the system
        "--grpc-address": "localhost:0",
        "--health-address": "localhost:0",
        "--metrics-address": "localhost:0",
        "--web-port": "0",
        "--tensorboard-port": "0",
    }
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        free[flag] = f"localhost:{port}" if flag.endswith("address") else str(port)
        result = subprocess.run(
            [PY, "-m", "scripts.local_stack", "--python", str(fake), "--artifacts-dir", str(tmp_path / "a")]
            + [arg for pair in free.items() for arg in pair],
            capture_output=True,
            text=True,
            env={**CLEAN_ENV, "FAKE_DIR": str(tmp_path)},
            cwd=REPO,
            timeout=60,
        )
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "cannot listen on" in line]
    assert f"localhost:{port} (Address already in use): set {variable}=" in line
    assert not list(tmp_path.glob("*.pid")) and not list(tmp_path.glob("*.argv"))  # nothing was started


def test_two_services_of_the_stack_on_one_port_is_refused_and_the_hint_names_none_of_its_ports():
    """The hint for gRPC's port taken was port + 1: 50052, the health checks' own. Taken, the check passed (each
    port was looked at alone), and inference failed its restarts on the health port."""
    from scripts.local_stack import get_args_parser, ports_taken

    grpc, metrics = free_ports(2)
    addresses = {"--grpc-address": grpc, "--health-address": grpc, "--metrics-address": metrics}
    args = get_args_parser().parse_args([arg for flag, p in addresses.items() for arg in (flag, f"localhost:{p}")])
    (line,) = ports_taken(args, ["inference"])
    assert line.startswith(f"its health checks cannot listen on localhost:{grpc} (the gRPC service listens on port")
    hinted = int(line.split("MNIST_HEALTH_ADDRESS=localhost:")[1].split(",")[0])
    assert hinted not in (grpc, metrics)
    # One port on two interfaces is no clash: 127.0.0.1 and 127.0.0.2 (a review: it was refused).
    apart = {"--grpc-address": f"127.0.0.1:{grpc}", "--health-address": f"127.0.0.2:{grpc}"}
    args = get_args_parser().parse_args([*(a for pair in apart.items() for a in pair), "--metrics-address", "x:0"])
    assert ports_taken(args, ["inference"]) == []
    with socket.socket() as taken:  # gRPC's port taken, the next one the health checks': the hint skips both
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        addresses = {"--grpc-address": port, "--health-address": port + 1, "--metrics-address": 0}
        args = get_args_parser().parse_args([arg for flag, p in addresses.items() for arg in (flag, f"localhost:{p}")])
        lines = [line for line in ports_taken(args, ["inference"]) if line.startswith("the gRPC service")]
    assert len(lines) == 1 and f"MNIST_GRPC_ADDRESS=localhost:{port + 1}," not in lines[0], lines


def test_two_ports_taken_at_once_are_told_to_move_to_two_different_ports():
    """gRPC's and the health checks' ports both held by other programs: each hint was the first free port after its
    own, the same port for both, and a user who set both got a second refusal (a review's)."""
    from scripts.local_stack import get_args_parser, ports_taken

    with contextlib.ExitStack() as held:
        for _ in range(50):  # two ports side by side, both held here
            one, two = (held.enter_context(socket.socket()) for _ in range(2))
            one.bind(("127.0.0.1", 0))
            port = one.getsockname()[1]
            with contextlib.suppress(OSError):
                two.bind(("127.0.0.1", port + 1))
                break
        else:
            raise AssertionError("found no two free ports side by side")
        one.listen()
        two.listen()
        addresses = {"--grpc-address": port, "--health-address": port + 1, "--metrics-address": 0}
        args = get_args_parser().parse_args([arg for flag, p in addresses.items() for arg in (flag, f"localhost:{p}")])
        lines = ports_taken(args, ["inference"])
    assert len(lines) == 2, lines
    hinted = [int(line.split("=localhost:")[1].split(",")[0]) for line in lines]
    assert hinted[0] != hinted[1] and not {port, port + 1} & set(hinted), lines


@pytest.mark.parametrize(
    "flag, value, said",
    [
        # nan made the deadline nan, which no clock passes: Ctrl-C waited for ever on a service that ignored it.
        ("--stop-timeout", "nan", "--stop-timeout: must be a number of seconds, 0 or more, got 'nan'"),
        ("--stop-timeout", "-1", "--stop-timeout: must be a number of seconds, 0 or more, got '-1'"),
        ("--max-restarts", "-1", "--max-restarts: must be 0 or more, got -1"),
    ],
)
def test_the_supervisors_own_settings_out_of_range_are_refused_by_the_parser(capsys, flag, value, said):
    from scripts.local_stack import get_args_parser

    with pytest.raises(SystemExit) as exited:
        get_args_parser().parse_args([flag, value])
    assert exited.value.code == 2 and said in capsys.readouterr().err


def test_a_restart_that_cannot_start_the_program_is_tried_once_not_every_tenth_of_a_second(tmp_path, start):
    """A service whose program went away while it ran (its restart: ENOENT) was started again on every pass of
    the loop, 'cannot start' logged ten times a second, for as long as another service ran."""
    script = tmp_path / "flaky"
    script.write_text(f"#!{PY}\nimport pathlib, sys\npathlib.Path(sys.argv[0]).unlink()\nsys.exit(1)\n")
    script.chmod(0o755)
    out = Capture()
    supervisor = Supervisor(
        [
            Service("flaky", [str(script)], restart_on_failure=True),
            Service("job", py("import time; time.sleep(2)")),
        ],
        out=out,
        restart_delay=0.05,
    )
    thread, result = start(supervisor)
    thread.join(15)
    assert result == [1] and "flaky exited with code 1" in out.text
    assert out.text.count("cannot start flaky") == 1, out.text
    # ...and the stack does not stay up without it: it stops when the job ends, as after a last restart.
    assert "flaky cannot be started; the stack stops when job ends" in out.text, out.text


@pytest.mark.parametrize(
    "flags, said",
    [
        (["--preset", "foo"], "MNIST_PRESET='foo' must be one of: default, seed"),
        (["--device", "gpu"], "MNIST_DEVICE='gpu': must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        (["--trainer-args=--epochs 0"], "argument --epochs: must be at least 1, got 0"),
    ],
)
def test_settings_the_trainer_refuses_stop_the_stack_before_anything_starts(tmp_path, flags, said):
    """The real trainer is asked (--check-only): a mistyped --preset used to start the other services, then stop
    them all when the trainer refused it, its message among their logs."""
    ports = ["--grpc-address", "localhost:0", "--health-address", "localhost:0", "--metrics-address", "localhost:0"]
    skipped = ["--web-port", "0", "--tensorboard-port", "0", "--skip", "web", "--skip", "tensorboard"]
    result = subprocess.run(
        [PY, "-m", "scripts.local_stack", "--artifacts-dir", str(tmp_path / "a"), *ports, *flags, *skipped],
        capture_output=True,
        text=True,
        env={**CLEAN_ENV, settings.ENV_DATA_DIR: str(tmp_path / "no-mnist")},
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "stack: nothing started: the trainer refuses its settings" in result.stderr and said in result.stderr
    assert "usage:" not in result.stderr  # the trainer's error, not its whole usage block
    assert "starting" not in result.stdout and not (tmp_path / "a").exists()


# --------------------------------------------------------------------------------------------------------------
# scripts/stack.sh and the Makefile, with a stand-in interpreter that records how it is called


# `-c ...` runs (stack.sh asks whether the interpreter does); `-m pip --version` fails where a file `no-pip` lies
# beside the interpreter, and `-m ensurepip` removes it; `-m pip install` fails while $FAKE_PIP_FAILS is set;
# `-m venv DIR` makes DIR/bin/python and DIR/bin/pip (copies of this script).
FAKE_INTERPRETER = """#!/usr/bin/env bash
if [ "$1" = -c ]; then exit 0; fi
if [ "$1 $2 $3" = "-m pip --version" ]; then [ ! -e "$(dirname "$0")/no-pip" ]; exit; fi
echo "${0#"$FAKE_ROOT"/} $*" >> "$FAKE_LOG"
if [ "$1 $2" = "-m ensurepip" ]; then rm -f "$(dirname "$0")/no-pip"; fi
if [ "$1 $2 $3" = "-m pip install" ] && [ -n "${FAKE_PIP_FAILS:-}" ]; then exit 1; fi
if [ "$1" = -m ] && [ "$2" = venv ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && cp "$0" "$3/bin/pip"; fi
"""


@pytest.fixture
def fake_python3(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python3 = bin_dir / "python3"
    python3.write_text(FAKE_INTERPRETER)
    python3.chmod(0o755)
    log = tmp_path / "calls.log"
    env = {
        **CLEAN_ENV,
        "FAKE_LOG": str(log),
        "FAKE_ROOT": str(tmp_path),
        "PYTHON": str(python3),
        "MNIST_VENV": str(tmp_path / "venv"),
    }
    return env, log


def calls(log: Path) -> list[str]:
    text = log.read_text() if log.exists() else ""
    log.write_text("")
    return text.splitlines()


def test_stack_sh_creates_the_venv_installs_once_and_execs_the_supervisor(fake_python3):
    env, log = fake_python3

    def run(*args, **extra):
        return subprocess.run(
            [str(REPO / "scripts" / "stack.sh"), *args],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=30,
        )

    first = run("--epochs", "1")
    assert first.returncode == 0, first.stderr
    assert calls(log) == [
        f"bin/python3 -m venv {env['MNIST_VENV']}",
        "venv/bin/python -m pip install --disable-pip-version-check -c constraints.txt -e .",
        "venv/bin/python -m scripts.local_stack --epochs 1",
    ]
    assert run("--epochs", "1").returncode == 0
    assert calls(log) == ["venv/bin/python -m scripts.local_stack --epochs 1"], "installed already: no pip"
    assert run("--setup-only", MNIST_STACK_EXTRAS="dev").returncode == 0
    assert calls(log) == ["venv/bin/python -m pip install --disable-pip-version-check -c constraints.txt -e .[dev]"]
    assert run("--help").returncode == 0
    assert calls(log) == ["venv/bin/python -m scripts.local_stack --help"], "a dev install serves a plain run"


def test_stack_sh_reinstalls_when_the_pins_change(fake_python3, tmp_path):
    env, log = fake_python3
    subprocess.run([str(REPO / "scripts" / "stack.sh"), "--setup-only"], env=env, check=True, capture_output=True)
    stamp = tmp_path / "venv" / ".mnist-stack-install"
    stamp.write_text("0" * 64 + " \n")  # as if pyproject.toml had other pins at the last install
    calls(log)
    subprocess.run([str(REPO / "scripts" / "stack.sh"), "--setup-only"], env=env, check=True, capture_output=True)
    assert calls(log) == ["venv/bin/python -m pip install --disable-pip-version-check -c constraints.txt -e ."]


def test_stack_sh_reinstalls_for_another_checkout(fake_python3, tmp_path):
    """The install is editable: an environment shared by two clones must point at the clone that runs."""
    env, log = fake_python3
    subprocess.run([str(REPO / "scripts" / "stack.sh"), "--setup-only"], env=env, check=True, capture_output=True)
    other = tmp_path / "other-clone"
    shutil.copytree(REPO / "scripts", other / "scripts")
    shutil.copy(REPO / "pyproject.toml", other / "pyproject.toml")
    shutil.copy(REPO / "constraints.txt", other / "constraints.txt")
    calls(log)
    subprocess.run([str(other / "scripts" / "stack.sh"), "--setup-only"], env=env, check=True, capture_output=True)
    assert calls(log) == ["venv/bin/python -m pip install --disable-pip-version-check -c constraints.txt -e ."]
    subprocess.run([str(other / "scripts" / "stack.sh"), "--setup-only"], env=env, check=True, capture_output=True)
    assert calls(log) == [], "the same clone again: nothing to install"


def stack_sh(env: dict[str, str], *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "scripts" / "stack.sh"), *args], env={**env, **extra}, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize("broken", ["a dangling link", "its python's link dangles"])
def test_stack_sh_makes_anew_an_environment_whose_interpreter_does_not_run(fake_python3, tmp_path, broken):
    env, log = fake_python3
    venv = Path(env["MNIST_VENV"])
    if broken == "a dangling link":  # `python -m venv` alone stops with "File exists" on it
        venv.symlink_to(tmp_path / "removed-venv")
    else:  # its interpreter was removed or upgraded
        (venv / "bin").mkdir(parents=True)
        (venv / "pyvenv.cfg").write_text("home = /removed\n")
        (venv / "bin" / "python").symlink_to(tmp_path / "removed-python")
    result = stack_sh(env, "--setup-only")
    assert result.returncode == 0, result.stderr
    assert calls(log) == [
        f"bin/python3 -m venv {venv}",
        "venv/bin/python -m pip install --disable-pip-version-check -c constraints.txt -e .",
    ]
    assert not venv.is_symlink() and (venv / "bin" / "python").is_file()


def test_stack_sh_gives_pip_to_an_environment_without_it_and_keeps_the_environment(fake_python3):
    """Creation cut off before pip, or an environment made by a tool that leaves pip out (`uv venv`): pip is
    installed into it; the environment, and whatever else it holds, stays."""
    env, log = fake_python3
    venv = Path(env["MNIST_VENV"])
    assert stack_sh(env, "--setup-only").returncode == 0
    (venv / "bin" / "no-pip").touch()
    (venv / "theirs.txt").write_text("a package of the user's")
    (venv / ".mnist-stack-install").unlink()  # as if never installed into
    calls(log)
    result = stack_sh(env, "--setup-only")
    assert result.returncode == 0, result.stderr
    assert calls(log) == [
        "venv/bin/python -m ensurepip --upgrade",
        "venv/bin/python -m pip install --disable-pip-version-check -c constraints.txt -e .",
    ]
    assert (venv / "theirs.txt").exists()


def test_stack_sh_never_removes_a_folder_that_is_no_virtual_environment(fake_python3):
    env, log = fake_python3
    venv = Path(env["MNIST_VENV"])
    venv.mkdir()
    (venv / "notes.txt").write_text("not an environment")
    assert stack_sh(env, "--setup-only").returncode == 0
    assert calls(log)[0] == f"bin/python3 -m venv {venv}"  # made inside it, as venv does in a folder that exists
    assert (venv / "notes.txt").exists()


def test_stack_sh_installs_again_after_an_install_cut_off(fake_python3, tmp_path):
    """A pip install that fails or is killed leaves no stamp, so the next run never takes it for done, even when
    the stamp of an earlier install at the same pins was there before."""
    env, log = fake_python3
    stamp = tmp_path / "venv" / ".mnist-stack-install"
    assert stack_sh(env, "--setup-only").returncode == 0 and stamp.exists()
    stamp.write_text("0" * 64 + " \n")  # other pins: this run must install
    assert stack_sh(env, "--setup-only", FAKE_PIP_FAILS="1").returncode != 0
    assert not stamp.exists()
    calls(log)
    assert stack_sh(env, "--setup-only").returncode == 0
    assert calls(log) == ["venv/bin/python -m pip install --disable-pip-version-check -c constraints.txt -e ."]


def test_make_targets_use_the_stack_script_and_its_venv(fake_python3, tmp_path):
    if shutil.which("make") is None:
        pytest.skip("GNU make is not installed (`apt-get install -y make`)")
    env, log = fake_python3
    # checkov's environment in this test's folder, never the real HOME's (which `make tools` would otherwise check,
    # and remake with this test's stand-in interpreter): one there already, of the pinned version.
    checkov = tmp_path / "checkov"
    (checkov / "bin").mkdir(parents=True)
    (checkov / "bin" / "checkov").write_text("#!/bin/sh\necho 3.3.30\n")
    (checkov / "bin" / "checkov").chmod(0o755)
    # Nothing of an outer make's (`make test TEST_WORKERS=4` passes its variables down in MAKEFLAGS): the defaults.
    outer = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "TEST_WORKERS", "PYTEST_ARGS", "ARGS")
    env = {**{k: v for k, v in env.items() if k not in outer}, "CHECKOV_VENV": str(checkov)}

    def make(*args):
        return subprocess.run(
            ["make", "-s", "-C", str(REPO), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    result = make("stack", "ARGS=--tensorboard-port 6007")
    assert result.returncode == 0, result.stderr
    assert calls(log)[-1] == "venv/bin/python -m scripts.local_stack --tensorboard-port 6007"
    result = make("test", "PYTEST_ARGS=tests/deploy -q")
    assert result.returncode == 0, result.stderr
    assert calls(log) == [
        "venv/bin/python -m pip install --disable-pip-version-check -c constraints.txt -e .[dev]",
        "venv/bin/python -m pytest -n 2 --dist loadfile tests/deploy -q",
    ]
    assert make("protos").returncode == 0
    assert calls(log) == ["venv/bin/python scripts/gen_protos.py"]
    # checkov missing, a dangling link in its place (`venv --clear` stopped CI on one): made anew, then installed.
    shutil.rmtree(checkov)
    checkov.symlink_to(tmp_path / "removed-checkov")
    result = make("tools")
    assert result.returncode == 0, result.stderr
    assert calls(log) == [f"venv/bin/python -m venv {checkov}", "checkov/bin/pip install -q checkov==3.3.30"]
    listed = make()  # a plain `make` lists the targets, starting nothing
    assert listed.returncode == 0 and calls(log) == []
    targets = re.findall(r"^make (\w+)", listed.stdout, re.M)
    assert {"up", "stack", "test", "lint", "help"} <= set(targets), listed.stdout


def test_the_memory_note_counts_the_processes_inference_will_start(monkeypatch):
    """Unset or 0, MNIST_INFERENCE_WORKERS starts one process per core as memory holds: the note said one."""
    import shared.resources
    from shared.settings import ENV_INFERENCE_WORKERS

    from scripts.local_stack import memory_note

    monkeypatch.delenv(ENV_INFERENCE_WORKERS, raising=False)
    monkeypatch.setattr(shared.resources, "usable_cpus", lambda: 8)
    monkeypatch.setattr(shared.resources, "usable_memory_bytes", lambda: 64 * 2**30)
    assert "(8 process(es) x" in memory_note({})
    monkeypatch.setattr(shared.resources, "usable_memory_bytes", lambda: 5 * 2**30)  # holds two beside the parent
    assert "(2 process(es) x" in memory_note({})
    assert "(3 process(es) x" in memory_note({ENV_INFERENCE_WORKERS: "3"})
    with pytest.raises(SystemExit, match="MNIST_INFERENCE_WORKERS='two' must be a whole number"):  # a traceback
        memory_note({ENV_INFERENCE_WORKERS: "two"})


def test_the_memory_note_says_what_the_server_itself_counts_the_parent_included():
    """With two processes the note said 2 x 2,188 MiB, 4.3 GiB, while the server's own check (inference/capacity.py)
    counts the parent that watches them too, 4.8 GiB, and refuses a container given less."""
    from shared.settings import ENV_INFERENCE_WORKERS

    from inference.capacity import check_workers_fit
    from scripts.local_stack import memory_note

    note = memory_note({ENV_INFERENCE_WORKERS: "2"})
    said = float(re.search(r"up to ([\d.]+) GiB", note)[1])
    assert "and the parent that watches them" in note
    with pytest.raises(ValueError, match=f"need up to {said:.1f} GiB"):
        check_workers_fit(2, int(re.search(r"x ([\d,]+) MiB", note)[1].replace(",", "")), int(said * 2**30) - 2**26, 2)


@pytest.mark.parametrize("text", ["9465", "localhost", ":50051", "localhost:70000"])
def test_an_address_without_its_host_or_port_is_refused_by_the_parser_from_the_flag_or_the_environment(
    capsys, monkeypatch, text
):
    """Given just a port, as the port variables take it, the server's own check ended the stack in a traceback."""
    from scripts.local_stack import get_args_parser

    with pytest.raises(SystemExit) as exited:
        get_args_parser().parse_args(["--metrics-address", text])
    assert exited.value.code == 2 and "argument --metrics-address:" in capsys.readouterr().err
    monkeypatch.setenv(settings.ENV_GRPC_ADDRESS, text)
    with pytest.raises(SystemExit) as exited:
        get_args_parser().parse_args([])
    assert exited.value.code == 2 and f"environment variable MNIST_GRPC_ADDRESS={text!r}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "address, called",
    [("192.0.2.2:51551", "192.0.2.2:51551"), ("[::]:50051", "localhost:50051"), ("0.0.0.0:5", "localhost:5")],
)
def test_the_web_page_calls_the_service_where_it_listens(address, called):
    """The page was always sent to localhost: a service bound to one interface's address answered it 503."""
    from scripts.local_stack import get_args_parser, stack_environment

    args = get_args_parser().parse_args(["--grpc-address", address, "--health-address", address.replace("5", "6", 1)])
    env = stack_environment(args)
    assert env[settings.ENV_GRPC_TARGET] == called
    assert env[settings.ENV_GRPC_HEALTH_TARGET] == called.replace("5", "6", 1)


def test_port_0_for_the_service_is_refused_when_the_web_page_would_have_to_call_it():
    """The page was given localhost:0, refused it, and the stack gave up after its restarts."""
    from scripts.local_stack import get_args_parser, unknown_port

    args = get_args_parser().parse_args(["--grpc-address", "localhost:0"])
    assert "--grpc-address localhost:0: port 0 picks a free port" in unknown_port(args, ["inference", "web"])
    assert unknown_port(args, ["inference"]) is None
    args = get_args_parser().parse_args(["--health-address", "localhost:0"])
    assert unknown_port(args, ["inference", "web"]).startswith("--health-address localhost:0")

"""docker-compose.yml: valid for Compose, and in agreement with shared/settings.py and with the local stack.

Every check reads the files as Compose v2 renders them (`docker compose config`, tests/deploy/compose_model.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shared import settings

from scripts.local_stack import get_args_parser, local_services, stack_environment
from tests.deploy.compose_model import (
    COMPOSE_FILE,
    CPU_OVERRIDE,
    DOCKER_STOP_GRACE_S,
    MEMORY_HEADROOM,
    REPO,
    SHUTDOWN_MARGIN_S,
    STACK_SERVICES,
    LocalMapping,
    Port,
    command,
    compose_duration_seconds,
    container_environment,
    drain_seconds,
    healthcheck_argv,
    k8s_quantity_bytes,
    load_compose,
    mounts,
    published_ports,
    restarts_a_failed_process,
    run_compose,
)

SETTINGS_ENV_NAMES = {getattr(settings, n) for n in dir(settings) if n.startswith("ENV_")}
GRPC_PORT = settings.DEFAULT_GRPC_PORT
HEALTH_PORT = settings.DEFAULT_HEALTH_PORT
TB_PORT = settings.DEFAULT_TENSORBOARD_PORT
WEB_PORT = settings.DEFAULT_WEB_PORT
GIB = 1024**3


@pytest.fixture(scope="module")
def model():
    return load_compose()


# --------------------------------------------------------------------------------------------------------------
# Compose itself accepts the files


@pytest.mark.parametrize("files", [(COMPOSE_FILE,), (COMPOSE_FILE, CPU_OVERRIDE)], ids=["gpu", "cpu"])
def test_compose_files_validate(files):
    result = run_compose("config", "--quiet", files=files)
    assert result.returncode == 0, result.stderr


def test_compose_config_rejects_a_broken_file(tmp_path):
    """Guards the test above: `docker compose config` does validate (an unknown key fails)."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  trainer:\n    image: x\n    restart_policy_typo: always\n")
    result = run_compose("config", "--quiet", files=(broken,), project_dir=tmp_path)
    assert result.returncode != 0 and "restart_policy_typo" in result.stderr, result.stderr


def test_cpu_override_removes_the_gpu_request_and_changes_nothing_else():
    gpu, cpu = load_compose(), load_compose(COMPOSE_FILE, CPU_OVERRIDE)
    assert gpu["services"]["trainer"]["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    ]
    trainer = cpu["services"]["trainer"]
    # The GPU request is removed (`!reset`), not merged with; the memory limit stays.
    assert "reservations" not in trainer["deploy"]["resources"]
    assert trainer["deploy"]["resources"]["limits"] == gpu["services"]["trainer"]["deploy"]["resources"]["limits"]
    assert trainer["environment"][settings.ENV_DEVICE] == "cpu"
    assert "nvidia" not in json.dumps(cpu)
    # The trainer's device is all that differs: every other service and setting is the GPU file's.
    gpu_trainer = gpu["services"].pop("trainer")
    cpu["services"].pop("trainer")
    assert cpu == gpu
    assert {k: v for k, v in trainer.items() if k not in ("environment", "deploy")} == {
        k: v for k, v in gpu_trainer.items() if k not in ("environment", "deploy")
    }
    assert {**gpu_trainer["environment"], settings.ENV_DEVICE: "cpu"} == trainer["environment"]


def test_settings_from_the_environment_reach_the_trainer():
    trainer = load_compose(env={settings.ENV_EPOCHS: "3", settings.ENV_PRESET: "seed"})["services"]["trainer"]
    assert trainer["environment"][settings.ENV_EPOCHS] == "3"
    assert trainer["environment"][settings.ENV_PRESET] == "seed"


def test_tensorboard_and_web_host_ports_and_replica_port_range_come_from_the_environment():
    services = load_compose(
        env={
            settings.ENV_TENSORBOARD_PORT: "6007",
            settings.ENV_WEB_PORT: "8081",
            "MNIST_GRPC_HOST_PORT": "50051-50053",
        }
    )["services"]
    assert published_ports(services["tensorboard"]) == [Port("127.0.0.1", "6007", TB_PORT)]
    assert published_ports(services["web"]) == [Port("127.0.0.1", "8081", WEB_PORT)]
    assert published_ports(services["inference"]) == [Port("127.0.0.1", "50051-50053", GRPC_PORT)]


# --------------------------------------------------------------------------------------------------------------
# Agreement with shared/settings.py


def test_up_starts_the_four_services_and_the_trainer_asks_for_a_gpu(model):
    started = {n for n, s in model["services"].items() if not s.get("profiles")}
    assert started == set(STACK_SERVICES)
    assert set(load_compose(profiles=())["services"]) == set(STACK_SERVICES)  # Compose's own answer
    assert model["services"]["trainer"]["restart"] == "no"  # a job: it ends, the others go on


def test_the_services_that_keep_running_come_back_after_a_reboot_unless_stopped(model):
    """`docker compose up -d` runs a service, as a Kubernetes Deployment does: Docker starts it again when its
    process exits, and when Docker itself starts (a host reboot), unless the user stopped it. `on-failure` does not
    start, when Docker starts, a container whose process last exited 0, as the servers do when Docker stops them
    on shutdown: after a reboot the page stayed down. The trainer is a job: one run, never repeated by a reboot."""
    for name, service in model["services"].items():
        if name in ("trainer", "client"):
            assert service.get("restart", "no") == "no", name
        else:
            assert service.get("restart") == "unless-stopped", name


def test_ports_are_the_settings_defaults_published_on_loopback(model):
    assert published_ports(model["services"]["inference"]) == [Port("127.0.0.1", str(GRPC_PORT), GRPC_PORT)]
    assert published_ports(model["services"]["tensorboard"]) == [Port("127.0.0.1", str(TB_PORT), TB_PORT)]
    assert published_ports(model["services"]["web"]) == [Port("127.0.0.1", str(WEB_PORT), WEB_PORT)]
    page = command(model, "web")
    assert page[page.index("--port") + 1] == str(WEB_PORT) and page[page.index("--host") + 1] == "0.0.0.0"
    # Inside the container the server listens on the settings' default address, on the published port.
    env = container_environment(model, "inference")
    address = env.get(settings.ENV_GRPC_ADDRESS, settings.DEFAULT_GRPC_ADDRESS)
    assert address.rsplit(":", 1)[1] == str(GRPC_PORT)
    assert address.startswith(("[::]", "0.0.0.0")), "in a container the server must listen on all interfaces"
    tb = command(model, "tensorboard")
    assert tb[tb.index("--port") + 1] == str(TB_PORT) and tb[tb.index("--host") + 1] == "0.0.0.0"


def test_healthcheck_probes_the_health_port_the_server_listens_on(model):
    check = model["services"]["inference"]["healthcheck"]
    assert check["test"][:4] == ["CMD", "python", "-m", "inference.health_probe"]
    target = check["test"][check["test"].index("--target") + 1]
    assert target == f"localhost:{HEALTH_PORT}"
    address = container_environment(model, "inference")[settings.ENV_HEALTH_ADDRESS]
    assert address == f"[::]:{HEALTH_PORT}"  # its own port: answered however busy the main one is
    # Readiness (SERVING) would mark the container unhealthy for as long as the first training takes.
    assert "--require-serving" not in check["test"]


def test_volumes_are_mounted_where_the_settings_point(model):
    # The web page reads no file: every answer comes from the inference service over gRPC.
    assert "volumes" not in model["services"]["web"]
    for name in ("trainer", "inference", "tensorboard"):
        env = container_environment(model, name)
        targets = {m.target: m for m in mounts(model["services"][name])}
        artifacts = env[settings.ENV_ARTIFACTS_DIR]
        assert artifacts in targets, f"{name}: {settings.ENV_ARTIFACTS_DIR}={artifacts} is not a mounted volume"
        assert (targets[artifacts].type, targets[artifacts].volume) == ("volume", "artifacts")
        # Only the trainer writes; the others read the same volume.
        assert targets[artifacts].read_only == (name != "trainer"), name
        if name != "tensorboard":
            data = env[settings.ENV_DATA_DIR]
            assert data in targets and (targets[data].type, targets[data].volume) == ("volume", "mnist"), (
                f"{name}: MNIST volume not at {data}"
            )
    tb = command(model, "tensorboard")
    runs = settings.Paths(Path(container_environment(model, "tensorboard")[settings.ENV_ARTIFACTS_DIR])).runs
    assert tb[tb.index("--logdir") + 1] == str(runs)
    assert set(model["volumes"]) == {"artifacts", "mnist"}


def test_environment_variables_are_the_settings_names(model):
    for name, service in model["services"].items():
        env = container_environment(model, name)
        names = {*env, *(service.get("environment") or {})}
        unknown = {k for k in names if k.startswith("MNIST_")} - SETTINGS_ENV_NAMES
        assert not unknown, f"{name}: {unknown} are not variables of shared/settings.py"
    passed_through = {k for k, v in model["services"]["trainer"]["environment"].items() if v is None}
    assert passed_through == {settings.ENV_EPOCHS, settings.ENV_PRESET, settings.ENV_DEVICE, settings.ENV_SEED}


def test_inference_memory_limit_holds_a_server_process_and_the_local_stack_states_it(model):
    from inference.capacity import server_memory_mib
    from inference.options import ServerOptions
    from scripts.local_stack import COMPOSE_INFERENCE_MEMORY

    def limit(env: dict[str, str]) -> int:  # Compose gives it in bytes
        return int(load_compose(env=env)["services"]["inference"]["deploy"]["resources"]["limits"]["memory"])

    assert COMPOSE_INFERENCE_MEMORY.endswith("g")
    assert limit({}) == int(COMPOSE_INFERENCE_MEMORY[:-1]) * GIB
    assert limit({"MNIST_INFERENCE_MEMORY": "4g"}) == 4 * GIB
    defaults = ServerOptions(artifacts_dir=Path(), data_dir=Path())
    needed = server_memory_mib(defaults)
    assert int(COMPOSE_INFERENCE_MEMORY[:-1]) * 1024 >= needed * MEMORY_HEADROOM, (
        "the default limit should hold one server process with room to spare"
    )
    # The Kubernetes pods run one such process (MNIST_INFERENCE_WORKERS=1) with the same defaults.
    deployment = next(
        d
        for d in yaml.safe_load_all((REPO / "deploy/k8s/base/inference.yaml").read_text())
        if d["kind"] == "Deployment"
    )
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert k8s_quantity_bytes(container["resources"]["limits"]["memory"]) == limit({})


# Every place that tells an operator how much memory inference's processes need, in its own words around the figures.
WORKER_MEMORY_NOTES = (
    COMPOSE_FILE,
    REPO / ".env.example",
    REPO / "deploy/k8s/base/inference.yaml",
    REPO / "docs/operations.md",
    REPO / "docs/reliability.md",
)


def test_every_note_on_the_memory_of_more_workers_states_the_servers_own_formula():
    """They said `--workers N` needs N times a process's 2.1 GiB, or one worker per core, while the server counts the
    parent that watches them too (inference.capacity.memory_needed_mib) and refuses to start below that: 2 workers
    need 4.8 GiB, refused at the 3 GiB limit that "N times" made look like room for one more."""
    from inference.capacity import PARENT_PROCESS_MIB, memory_needed_mib, server_memory_mib
    from inference.options import ServerOptions

    each = server_memory_mib(ServerOptions(artifacts_dir=Path(), data_dir=Path()))
    formula = f"N x {each:,} MiB + {PARENT_PROCESS_MIB:,} MiB"
    for path in WORKER_MEMORY_NOTES:
        # Lines joined, without the comment marks of YAML and .env files.
        text = " ".join(re.sub(r"^\s*#", "", line) for line in path.read_text().splitlines())
        text = " ".join(text.split())
        where = path.relative_to(REPO)
        assert formula in text, f"{where} does not state {formula!r}"
        assert "N times" not in text and "one worker per core" not in text, where
        examples = re.findall(r"(\d+) (?:workers|processes) need (?:up to )?([\d.]+) GiB", text)
        assert examples, f"{where} gives no worked example of the formula"
        for workers, gib in examples:
            assert float(gib) == round(memory_needed_mib(int(workers), each) / 1024, 1), (where, workers, gib)


def test_web_memory_limit_holds_the_request_bodies_the_gateway_admits_and_is_the_kubernetes_limit(model):
    """Each body in flight is held several times over (inference.capacity.web_memory_mib); at 128 MiB in flight
    four concurrent 32 MB uploads reached 900 MiB. Kubernetes runs the same gateway with the same defaults."""
    from inference.capacity import MIB, web_memory_mib
    from inference.web.app import WebOptions

    inflight = WebOptions().max_inflight_bytes
    # /tmp is a tmpfs, charged to the same limit: an upload spooled there while it is parsed is one copy more.
    needed_mib = web_memory_mib(inflight) + inflight / MIB
    limit = int(model["services"]["web"]["deploy"]["resources"]["limits"]["memory"])
    assert limit >= needed_mib * MEMORY_HEADROOM * MIB, (
        f"web: {limit / MIB:.0f} MiB for a gateway that may hold {needed_mib:.0f} MiB (--max-inflight-bytes "
        f"{inflight / MIB:.0f} MiB)"
    )
    deployment = next(
        d for d in yaml.safe_load_all((REPO / "deploy/k8s/base/web.yaml").read_text()) if d["kind"] == "Deployment"
    )
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert k8s_quantity_bytes(container["resources"]["limits"]["memory"]) == limit


@pytest.mark.parametrize("name", ["inference", "web"])
def test_docker_stop_waits_out_the_servers_drain_and_a_margin(model, name):
    """`docker compose stop` sends SIGTERM, then SIGKILL after stop_grace_period (10 s unset): the web gateway waits
    for its requests in flight, an Evaluate's up to its 120 s deadline, and was killed mid-answer at 10 s. The
    Kubernetes pods' terminationGracePeriodSeconds are checked against the same drain (test_k8s)."""
    service = model["services"][name]
    grace = service.get("stop_grace_period")
    seconds = DOCKER_STOP_GRACE_S if grace is None else compose_duration_seconds(grace)
    assert seconds >= drain_seconds(command(model, name)) + SHUTDOWN_MARGIN_S


def test_every_service_rotates_its_log(model):
    """Docker's json-file log grows for as long as a container lives unless it is told to rotate."""
    for name, service in model["services"].items():
        logging = service.get("logging", {})
        assert logging.get("driver") == "json-file", name
        assert logging.get("options", {}).get("max-size") and logging["options"].get("max-file"), name


def test_every_long_running_service_has_a_healthcheck_and_a_memory_limit(model):
    for name, service in model["services"].items():
        if name in ("trainer", "client"):  # jobs that end: their own process says how they went
            continue
        assert service.get("healthcheck", {}).get("test", [None])[0] == "CMD", name
        assert int(service["deploy"]["resources"]["limits"]["memory"]) >= 512 * 1024**2, name


@pytest.mark.parametrize("files", [(COMPOSE_FILE,), (COMPOSE_FILE, CPU_OVERRIDE)], ids=["gpu", "cpu"])
def test_the_trainer_has_the_kubernetes_jobs_memory_limit_which_the_environment_can_raise(files):
    job = yaml.safe_load((REPO / "deploy/k8s/base/trainer.yaml").read_text())
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["memory"] == "8Gi"

    def limit(env: dict[str, str]) -> int:
        trainer = load_compose(*files, env=env)["services"]["trainer"]
        return int(trainer["deploy"]["resources"]["limits"]["memory"])

    assert limit({}) == 8 * GIB
    assert limit({"MNIST_TRAINER_MEMORY": "12g"}) == 12 * GIB


def test_tensorboard_healthcheck_asks_its_page_on_the_port_it_listens_on(model):
    tensorboard = model["services"]["tensorboard"]
    check = tensorboard["healthcheck"]["test"]
    assert check[1:4] == ["python", "-m", "inference.web.probe"]
    assert check[check.index("--target") + 1] == f"localhost:{TB_PORT}"
    assert command(model, "tensorboard")[command(model, "tensorboard").index("--port") + 1] == str(TB_PORT)


def test_replica_count_is_configuration_not_a_scale_flag(model):
    assert model["services"]["inference"]["deploy"]["replicas"] == 1
    scaled = load_compose(env={"MNIST_INFERENCE_REPLICAS": "3"})
    assert scaled["services"]["inference"]["deploy"]["replicas"] == 3


def test_client_and_web_page_reach_every_replica_through_dns(model):
    client = model["services"]["client"]
    assert client["profiles"] == ["client"]
    assert client["environment"][settings.ENV_GRPC_TARGET] == f"dns:///inference:{GRPC_PORT}"
    assert client["depends_on"]["inference"]["condition"] == "service_healthy"
    web = model["services"]["web"]
    assert web["environment"][settings.ENV_GRPC_TARGET] == f"dns:///inference:{GRPC_PORT}"
    # /readyz asks inference's health-only port: any other, and the page is never ready.
    health_port = container_environment(model, "inference")[settings.ENV_HEALTH_ADDRESS].rsplit(":", 1)[1]
    assert web["environment"][settings.ENV_GRPC_HEALTH_TARGET] == f"dns:///inference:{health_port}"
    # Started with it; no wait for health: the page says "no model yet".
    assert web["depends_on"] == {"inference": {"condition": "service_started", "required": True}}


def test_the_client_runs_the_images_code_not_the_checkout_it_is_started_in(model, tmp_path):
    """Its working directory is a folder of the host (MNIST_CLIENT_DIR, the repository root when run from there), and
    `python -m` puts the working directory first on sys.path: the checkout's inference/ and shared/ were imported
    instead of the image's installed code. PYTHONSAFEPATH=1 leaves it out. Run here as the service runs it: its
    entrypoint and environment, in a folder whose inference/ and shared/ refuse to be imported, with this checkout
    on PYTHONPATH as the image's code."""
    client = model["services"]["client"]
    assert client["environment"].get("PYTHONSAFEPATH") == "1"
    assert client["working_dir"] in {m.target for m in mounts(client)}  # the host's folder
    for package in ("inference", "shared"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("raise SystemExit('the folder it runs in was imported')\n")
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("MNIST_", "PYTHON"))}
    environment |= {k: str(v) for k, v in client["environment"].items() if v is not None}
    environment["PYTHONPATH"] = str(REPO)
    argv = [sys.executable if a == "python" else a for a in client["entrypoint"]]
    result = subprocess.run([*argv, "--help"], cwd=tmp_path, env=environment, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout


# --------------------------------------------------------------------------------------------------------------
# Agreement with the local stack (scripts/local_stack.py)


def test_local_stack_runs_the_compose_commands(model, tmp_path):
    artifacts = tmp_path / "artifacts"
    args = get_args_parser().parse_args(["--artifacts-dir", str(artifacts), "--python", sys.executable])
    local = {s.name: s for s in local_services(args)}
    assert set(local) == set(STACK_SERVICES)
    # Locally, "the container's" loopback is localhost and its ports are the same numbers.
    mapping = LocalMapping(
        volumes={"artifacts": artifacts.resolve(), "mnist": Path(args.data_dir).resolve()},
        ports={GRPC_PORT: GRPC_PORT, TB_PORT: TB_PORT, WEB_PORT: WEB_PORT},
        loopback="localhost",
    )
    for name in STACK_SERVICES:
        assert local[name].argv == mapping.argv(model, name, command(model, name)), name
        assert local[name].restart_on_failure == restarts_a_failed_process(model["services"][name]), name


def test_local_stack_sets_the_same_settings_with_the_same_defaults(model, tmp_path, monkeypatch):
    for name in SETTINGS_ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    env = stack_environment(get_args_parser().parse_args([]))
    assert env[settings.ENV_GRPC_ADDRESS] == f"localhost:{GRPC_PORT}"
    assert env[settings.ENV_GRPC_TARGET] == f"localhost:{GRPC_PORT}"  # the web page finds the local service
    assert env[settings.ENV_TENSORBOARD_PORT] == str(TB_PORT)
    assert env[settings.ENV_WEB_PORT] == str(WEB_PORT)
    moved = stack_environment(get_args_parser().parse_args(["--grpc-address", "[::]:50061"]))
    assert moved[settings.ENV_GRPC_TARGET] == "localhost:50061"
    assert Path(env[settings.ENV_ARTIFACTS_DIR]) == Path(settings.DEFAULT_ARTIFACTS_DIR).resolve()
    for service in STACK_SERVICES:
        names = {
            k
            for k in container_environment(load_compose(env={settings.ENV_EPOCHS: "1"}), service)
            if k.startswith("MNIST_")
        }
        assert names - {settings.ENV_EPOCHS} <= set(env), service
    # A setting given to the stack reaches every service, as compose passes it through.
    env = stack_environment(get_args_parser().parse_args(["--epochs", "2", "--device", "cpu"]))
    assert env[settings.ENV_EPOCHS] == "2" and env[settings.ENV_DEVICE] == "cpu"


def test_tensorboard_and_web_ports_are_one_variable_away(monkeypatch):
    monkeypatch.setenv(settings.ENV_TENSORBOARD_PORT, "6007")
    monkeypatch.setenv(settings.ENV_WEB_PORT, "8081")
    args = get_args_parser().parse_args([])
    services = {s.name: s for s in local_services(args)}
    tb, web = services["tensorboard"].argv, services["web"].argv
    assert tb[tb.index("--port") + 1] == "6007"
    assert web[web.index("--port") + 1] == "8081"
    assert get_args_parser().parse_args(["--tensorboard-port", "6008"]).tensorboard_port == 6008
    assert get_args_parser().parse_args(["--web-port", "8082"]).web_port == 8082


def test_the_local_web_page_listens_where_the_web_services_variable_says(monkeypatch):
    """`make stack` passed --host localhost to the page whatever MNIST_WEB_HOST said."""
    monkeypatch.setenv(settings.ENV_WEB_HOST, "0.0.0.0")
    web = {s.name: s for s in local_services(get_args_parser().parse_args([]))}["web"].argv
    assert web[web.index("--host") + 1] == "0.0.0.0"


@pytest.mark.parametrize("variable", [settings.ENV_TENSORBOARD_PORT, settings.ENV_WEB_PORT])
def test_a_port_out_of_range_is_refused_by_the_local_stack(variable, monkeypatch, capsys):
    monkeypatch.setenv(variable, "70000")
    with pytest.raises(SystemExit) as exit_info:
        get_args_parser().parse_args([])
    assert exit_info.value.code == 2
    assert f"{variable}='70000': must be a port from 0 to 65535" in capsys.readouterr().err


def test_healthcheck_command_maps_to_the_local_port(model):
    mapping = LocalMapping(volumes={}, ports={GRPC_PORT: 40000, WEB_PORT: 40001, HEALTH_PORT: 40002})
    argv = healthcheck_argv(model, "inference", mapping)
    assert argv == [sys.executable, "-m", "inference.health_probe", "--target", "127.0.0.1:40002"]
    argv = healthcheck_argv(model, "web", mapping)
    assert argv == [sys.executable, "-m", "inference.web.probe", "--target", "127.0.0.1:40001"]


def test_web_healthcheck_is_liveness_and_the_page_listens_on_the_published_port(model):
    check = model["services"]["web"]["healthcheck"]
    assert check["test"][:4] == ["CMD", "python", "-m", "inference.web.probe"]
    assert check["test"][check["test"].index("--target") + 1] == f"localhost:{WEB_PORT}"
    # Readiness would mark the page unhealthy (and restart it) for as long as the first training takes.
    assert "--require-ready" not in check["test"]


def test_env_example_names_only_variables_that_compose_or_the_settings_use(tmp_path):
    text = (REPO / ".env.example").read_text()
    assignments = dict(
        line.lstrip("#").split("=", 1) for line in text.splitlines() if re.fullmatch(r"#?[A-Z_]+=\S*", line)
    )
    compose_text = COMPOSE_FILE.read_text()
    for name in assignments:
        assert name in SETTINGS_ENV_NAMES or name in compose_text or name == "COMPOSE_FILE", name
    # Uncommented, the example is a working .env, read as Compose reads a project's .env (COMPOSE_FILE included).
    for path in (COMPOSE_FILE, CPU_OVERRIDE):
        shutil.copy(path, tmp_path / path.name)
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in assignments.items()))
    result = run_compose("config", "--format", "json", files=(), project_dir=tmp_path, env_file=None)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert services["trainer"]["environment"][settings.ENV_EPOCHS] == assignments[settings.ENV_EPOCHS]
    trainer_resources = services["trainer"]["deploy"]["resources"]
    assert "reservations" not in trainer_resources, "COMPOSE_FILE in .env should apply the CPU override"
    assert int(trainer_resources["limits"]["memory"]) == int(assignments["MNIST_TRAINER_MEMORY"][:-1]) * GIB
    tb_port, web_port = assignments[settings.ENV_TENSORBOARD_PORT], assignments[settings.ENV_WEB_PORT]
    assert published_ports(services["tensorboard"]) == [Port("127.0.0.1", tb_port, TB_PORT)]
    assert published_ports(services["web"]) == [Port("127.0.0.1", web_port, WEB_PORT)]

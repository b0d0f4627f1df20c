"""deploy/k8s: each kustomization renders (`kubectl kustomize`), every object it renders is valid against the
Kubernetes schemas (kubernetes-validate), checkov finds nothing it has not been told why to accept, and the
manifests agree with the code: ports, settings, the health names the probes ask, GPUs where asked.

Tools: kubectl (Debian: kubernetes-client), checkov in a virtual environment of its own (its pins clash with the
project's; `make tools` or .ci/run installs it into ~/.cache/mnist-stack/tools/checkov, or set MNIST_CHECKOV).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shared import settings

from inference.server import LIVENESS_SERVICE, SERVICE_NAME
from tests.deploy.compose_model import MEMORY_HEADROOM, REPO, SHUTDOWN_MARGIN_S, drain_seconds, k8s_quantity_bytes
from tests.inference.helpers import health_status, publish, start_server

K8S = REPO / "deploy" / "k8s"
KUSTOMIZATIONS = {"cpu": K8S / "overlays" / "cpu", "gpu": K8S / "overlays" / "gpu", "multinode": K8S / "multinode"}
# The oldest Kubernetes these manifests are for (docs/operations.md states it: native gRPC probes are GA since
# 1.27, the disruption budgets' unhealthyPodEvictionPolicy on by default since 1.27), and the newest known.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
CHECKOV = os.environ.get("MNIST_CHECKOV") or str(Path.home() / ".cache/mnist-stack/tools/checkov/bin/checkov")
WORKLOADS = ("Deployment", "Job")


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed (a kubectl 1.21 or newer, whose kustomize reads `labels` and `patches`)")
    result = subprocess.run([path, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60)
    kustomize = json.loads(result.stdout or "{}").get("kustomizeVersion", "v0")
    if int(kustomize.lstrip("v").split(".")[0]) < 4:
        pytest.fail(
            f"{path} embeds kustomize {kustomize}; deploy/k8s needs v4 or newer (kubectl 1.21+; Debian 12's "
            "kubernetes-client is 1.20)"
        )
    return path


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    out = {}
    for name, folder in KUSTOMIZATIONS.items():
        result = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{name}: {result.stderr}"
        out[name] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return out


def find(objects: list[dict], kind: str, name: str) -> dict:
    (found,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def container(workload: dict) -> dict:
    (c,) = pod_spec(workload)["containers"]
    return c


def env(c: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in c.get("env", [])}


# --------------------------------------------------------------------------------------------------------------
# Tools: render, validate, scan


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_object_is_valid_against_the_kubernetes_schemas(rendered, name, version):
    assert rendered[name], f"{name} rendered nothing"
    for obj in rendered[name]:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(
                f"{name}: {obj['kind']}/{obj['metadata']['name']} is not valid for Kubernetes {version}: "
                f"{e.message} at {'.'.join(map(str, e.path))}"
            )


def test_schema_validation_does_reject_a_broken_object(rendered):
    """Guards the test above: a field of the wrong type, and an unknown field, are refused."""
    deployment = json.loads(json.dumps(find(rendered["cpu"], "Deployment", "inference")))
    deployment["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)
    deployment["spec"]["replicas"] = 3
    container(deployment)["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def checkov(folder: Path) -> dict:
    if not Path(CHECKOV).exists() and shutil.which(CHECKOV) is None:
        pytest.skip(f"checkov is not installed at {CHECKOV} (make tools, or set MNIST_CHECKOV)")
    result = subprocess.run(
        [CHECKOV, "-d", str(folder), "--framework", "kubernetes", "--skip-download", "--output", "json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode in (0, 1), result.stderr  # 1: failed checks, read below
    report = json.loads(result.stdout)
    return report[0] if isinstance(report, list) else report


@pytest.fixture(scope="module")
def checkov_report(rendered, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("rendered")
    for name, objects in rendered.items():
        (folder / f"{name}.yaml").write_text(yaml.safe_dump_all(objects))
    return checkov(folder)


def test_checkov_finds_no_failed_check_and_every_skip_says_why(checkov_report):
    results = checkov_report["results"]
    failed = [f"{c['check_id']} {c['check_name']}: {c['resource']}" for c in results["failed_checks"]]
    assert not failed, "\n".join(failed)
    assert results["passed_checks"], "checkov checked nothing"
    for check in results["skipped_checks"]:
        reason = (check["check_result"].get("suppress_comment") or "").strip()
        assert len(reason) > 20, f"{check['check_id']} on {check['resource']} is skipped without a reason"


def test_checkov_does_fail_an_insecure_manifest(rendered, tmp_path):
    """Guards the test above: a root container with a writable root filesystem fails."""
    deployment = json.loads(json.dumps(find(rendered["cpu"], "Deployment", "inference")))
    container(deployment)["securityContext"] = {"readOnlyRootFilesystem": False, "allowPrivilegeEscalation": True}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(deployment))
    failed = {c["check_id"] for c in checkov(tmp_path)["results"]["failed_checks"]}
    assert {"CKV_K8S_20", "CKV_K8S_22"} <= failed, failed


# --------------------------------------------------------------------------------------------------------------
# What the manifests say


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_the_services_with_the_artifacts_volume_shared_read_write_many(rendered, name):
    objects = rendered[name]
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert {
        ("Job", "trainer"),
        ("Deployment", "inference"),
        ("Service", "inference"),
        ("Deployment", "tensorboard"),
        ("Service", "tensorboard"),
        ("Deployment", "web"),
        ("Service", "web"),
        ("PersistentVolumeClaim", "artifacts"),
    } <= kinds
    assert find(objects, "PersistentVolumeClaim", "artifacts")["spec"]["accessModes"] == ["ReadWriteMany"]
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} == {"mnist-stack"}
    for kind, workload in (("Job", "trainer"), ("Deployment", "inference"), ("Deployment", "tensorboard")):
        claims = {
            v["persistentVolumeClaim"]["claimName"]
            for v in pod_spec(find(objects, kind, workload))["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert "artifacts" in claims, workload
        mounts = {m["mountPath"]: m for m in container(find(objects, kind, workload))["volumeMounts"]}
        assert mounts["/artifacts"].get("readOnly", False) == (workload != "trainer"), workload  # one writer


def test_only_the_gpu_overlay_gives_the_trainer_a_gpu(rendered):
    gpu = container(find(rendered["gpu"], "Job", "trainer"))
    cpu = container(find(rendered["cpu"], "Job", "trainer"))
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1 and env(gpu)[settings.ENV_DEVICE] == "cuda"
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"] and env(cpu)[settings.ENV_DEVICE] == "cpu"
    for name in ("cpu", "gpu"):  # the rest is the same
        assert container(find(rendered[name], "Deployment", "inference"))["resources"]["limits"].keys() == {
            "cpu",
            "memory",
        }


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_every_container_is_non_root_read_only_and_has_resources(rendered, name):
    for workload in (o for o in rendered[name] if o["kind"] in WORKLOADS):
        spec = pod_spec(workload)
        where = f"{name}: {workload['kind']}/{workload['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] >= 10000
        assert spec["automountServiceAccountToken"] is False, where
        for c in spec["containers"]:
            security = c["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert {"cpu", "memory"} <= c["resources"]["requests"].keys() <= c["resources"]["limits"].keys(), where
            # With a read-only root, /tmp must be a volume (matplotlib's cache, TensorBoard, metrics files).
            assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}, where
            unknown = {k for k in env(c) if k.startswith("MNIST_")} - {
                getattr(settings, n) for n in dir(settings) if n.startswith("ENV_")
            }
            assert not unknown, f"{where}: {unknown} are not variables of shared/settings.py"


def test_inference_runs_three_replicas_behind_a_headless_service_with_metrics_annotated(rendered):
    objects = rendered["cpu"]
    deployment = find(objects, "Deployment", "inference")
    assert deployment["spec"]["replicas"] == 3
    c = container(deployment)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    grpc_port = int(env(c)[settings.ENV_GRPC_ADDRESS].rsplit(":", 1)[1])
    metrics_port = int(env(c)[settings.ENV_METRICS_ADDRESS].rsplit(":", 1)[1])
    health_port = int(env(c)[settings.ENV_HEALTH_ADDRESS].rsplit(":", 1)[1])
    assert ports == {"grpc": grpc_port, "metrics": metrics_port, "health": health_port}
    assert (grpc_port, metrics_port, health_port) == (
        settings.DEFAULT_GRPC_PORT,
        settings.DEFAULT_METRICS_PORT,
        settings.DEFAULT_HEALTH_PORT,
    )
    service = find(objects, "Service", "inference")
    assert service["spec"]["clusterIP"] == "None"  # headless: DNS gives clients every pod
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert {p["port"] for p in service["spec"]["ports"]} == {grpc_port, metrics_port}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"
    # On the pods only: discovering the Service's endpoints too would scrape each pod twice.
    assert not any(k.startswith("prometheus.io/") for k in service["metadata"].get("annotations", {}))


@pytest.mark.parametrize("name", ["cpu", "gpu"])  # multinode renders the training Job alone
def test_a_drain_evicts_one_pod_at_a_time_of_every_deployment_with_replicas_to_spare(rendered, name):
    objects = rendered[name]
    budgets = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    replicated = [o for o in objects if o["kind"] == "Deployment" and o["spec"].get("replicas", 1) > 1]
    assert {d["metadata"]["name"] for d in replicated} == {"inference", "web"}
    assert len(budgets) == len(replicated)
    for deployment in replicated:
        labels = deployment["spec"]["selector"]["matchLabels"]
        (budget,) = [b for b in budgets if b["spec"]["selector"]["matchLabels"] == labels]
        assert budget["spec"] == {
            "maxUnavailable": 1,
            "selector": {"matchLabels": labels},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        }
        assert deployment["spec"]["replicas"] - budget["spec"]["maxUnavailable"] >= 1


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_a_drain_evicts_pods_that_are_not_ready_whatever_the_budget_says(rendered, name):
    """With no model published, no inference pod is Ready (nor, behind them, any gateway): the budget's one
    disruption allowed is already used up, and with the default policy (IfHealthyBudget) the eviction API refuses
    every such pod, so `kubectl drain` retries for ever. A pod that is not Ready serves nothing: AlwaysAllow lets the
    drain evict it (beta and on by default since Kubernetes 1.27, GA in 1.31)."""
    for budget in (o for o in rendered[name] if o["kind"] == "PodDisruptionBudget"):
        assert budget["spec"].get("unhealthyPodEvictionPolicy") == "AlwaysAllow", budget["metadata"]["name"]


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_the_replicas_of_every_deployment_spread_over_the_nodes_where_they_can(rendered, name):
    for deployment in (o for o in rendered[name] if o["kind"] == "Deployment" and o["spec"].get("replicas", 1) > 1):
        (spread,) = pod_spec(deployment)["topologySpreadConstraints"]
        assert spread["topologyKey"] == "kubernetes.io/hostname"
        assert spread["whenUnsatisfiable"] == "ScheduleAnyway"  # a one-node cluster still runs every replica
        assert spread["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_every_scratch_volume_has_a_size_limit(rendered, name):
    """An emptyDir without one may fill the node's disk (or its memory, for medium: Memory)."""
    for workload in (o for o in rendered[name] if o["kind"] in WORKLOADS):
        for volume in pod_spec(workload)["volumes"]:
            if "emptyDir" in volume:
                assert volume["emptyDir"].get("sizeLimit"), f"{name}: {workload['metadata']['name']}/{volume['name']}"


def test_probes_are_native_grpc_on_the_health_services_own_port(rendered):
    """On the port that answers health alone (--health-address), so a busy pod is not restarted for being busy."""
    c = container(find(rendered["cpu"], "Deployment", "inference"))
    health_port = int(env(c)[settings.ENV_HEALTH_ADDRESS].rsplit(":", 1)[1])
    assert c["livenessProbe"]["grpc"] == {"port": health_port, "service": LIVENESS_SERVICE}
    assert c["startupProbe"]["grpc"] == {"port": health_port, "service": LIVENESS_SERVICE}
    assert c["readinessProbe"]["grpc"] == {"port": health_port, "service": SERVICE_NAME}
    policy = find(rendered["cpu"], "NetworkPolicy", "inference")
    assert health_port in {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}


def test_the_health_names_the_probes_ask_answer_as_the_probes_need(rendered, tmp_path, mnist_dir):
    """Liveness must hold while the trainer has not published (or the pod would be restarted in a loop for as
    long as the first training takes); readiness must not."""
    c = container(find(rendered["cpu"], "Deployment", "inference"))
    live, ready = c["livenessProbe"]["grpc"]["service"], c["readinessProbe"]["grpc"]["service"]
    running = start_server(tmp_path / "artifacts", mnist_dir, poll_interval=0.05, health_address="127.0.0.1:0")
    probe = health_pb2_grpc.HealthStub(grpc.insecure_channel(f"127.0.0.1:{running.server.health_port}"))

    def status(service: str) -> int:  # as the kubelet asks: on the health port
        answer = probe.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert answer == health_status(running, service)  # the main port says the same
        return answer

    try:
        assert status(live) == health_pb2.HealthCheckResponse.SERVING
        assert status(ready) == health_pb2.HealthCheckResponse.NOT_SERVING
        publish(running.artifacts, "v1", seed=1)
        assert running.server.store.wait_for_version("v1", timeout=10) is not None
        assert status(ready) == health_pb2.HealthCheckResponse.SERVING
    finally:
        running.channel.close()
        running.server.stop(grace=0)


def test_tensorboard_serves_the_runs_on_its_port(rendered):
    objects = rendered["cpu"]
    c = container(find(objects, "Deployment", "tensorboard"))
    assert c["command"][c["command"].index("--port") + 1] == str(settings.DEFAULT_TENSORBOARD_PORT)
    assert c["command"][c["command"].index("--logdir") + 1] == str(settings.Paths(Path("/artifacts")).runs)
    service = find(objects, "Service", "tensorboard")
    assert service["spec"]["ports"][0]["port"] == settings.DEFAULT_TENSORBOARD_PORT


def test_the_web_gateway_serves_on_its_port_and_reaches_inference_through_its_headless_service(rendered):
    from inference.web.app import WebOptions, create_app

    objects = rendered["cpu"]
    c = container(find(objects, "Deployment", "web"))
    port = int(c["command"][c["command"].index("--port") + 1])
    assert port == settings.DEFAULT_WEB_PORT == find(objects, "Service", "web")["spec"]["ports"][0]["port"]
    assert env(c)[settings.ENV_GRPC_TARGET] == f"dns:///inference:{settings.DEFAULT_GRPC_PORT}"
    assert find(objects, "Service", "inference")["spec"]["clusterIP"] == "None"  # DNS names every pod
    routes = {getattr(route, "path", None) for route in create_app(WebOptions()).routes}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" and c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"/healthz", "/readyz"} <= routes
    policy = find(objects, "NetworkPolicy", "web")
    assert [p["port"] for p in policy["spec"]["ingress"][0]["ports"]] == [port]


def multinode_torchrun(rendered, tmp_path: Path, index: int, pod_ip: str = "10.0.0.7") -> dict[str, str]:
    """The torchrun flags that pod `index` of the multinode Job starts with: its command (Kubernetes' $(VAR)
    expansion applied) run here, its environment the values Kubernetes gives (the Job's uid label, the pod's IP,
    JOB_COMPLETION_INDEX), with a stand-in torchrun on PATH that writes its arguments down."""
    c = container(find(rendered["multinode"], "Job", "trainer-multinode"))
    downward = {"metadata.labels['batch.kubernetes.io/controller-uid']": "job-uid", "status.podIP": pod_ip}
    environment = {"JOB_COMPLETION_INDEX": str(index)}  # set by the Job controller in an Indexed Job's pods
    for e in c["env"]:
        ref = e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        environment[e["name"]] = downward[ref] if ref else e.get("value", "")
    expand = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
    argv = [expand.sub(lambda m: "$" if m[0] == "$$" else environment.get(m[1], m[0]), a) for a in c["command"]]
    stand_in, written = tmp_path / f"bin-{index}" / "torchrun", tmp_path / f"torchrun-{index}.json"
    stand_in.parent.mkdir()
    stand_in.write_text(
        f"#!{sys.executable}\nimport json, sys\nopen({str(written)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
    )
    stand_in.chmod(0o755)
    environment["PATH"] = f"{stand_in.parent}:/usr/bin:/bin"
    result = subprocess.run(argv, env=environment, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    args = json.loads(written.read_text())
    assert args[-2:] == ["-m", "trainer"], args
    return dict(arg.lstrip("-").split("=", 1) for arg in args if arg.startswith("--") and "=" in arg)


def test_multinode_training_is_an_indexed_job_whose_pods_find_the_rendezvous(rendered, tmp_path):
    objects = rendered["multinode"]
    job = find(objects, "Job", "trainer-multinode")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    pods = pod_spec(job)
    service = find(objects, "Service", pods["subdomain"])
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    flags = multinode_torchrun(rendered, tmp_path, index=spec["completions"] - 1)  # a pod that joins pod 0
    assert int(flags["nnodes"]) == spec["completions"]
    # Pod 0 of an Indexed Job is <job>-0, and in the subdomain's DNS <job>-0.<subdomain>.
    host, port = flags["rdzv-endpoint"].rsplit(":", 1)
    assert host == f"{job['metadata']['name']}-0.{pods['subdomain']}"
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    assert flags["rdzv-backend"] == "c10d"
    assert container(job)["resources"]["limits"]["nvidia.com/gpu"] == int(flags["nproc-per-node"])


@pytest.mark.parametrize(("pod_ip", "endpoint_host"), [("10.0.0.7", "10.0.0.7"), ("fd00::7", "[fd00::7]")])
def test_pod_0_names_its_own_ip_as_the_rendezvous_endpoint_which_needs_no_dns(
    rendered, tmp_path, pod_ip, endpoint_host
):
    """torchrun hosts the rendezvous where the endpoint resolves to one of the pod's own addresses. Pod 0's name is
    in the headless Service's DNS only a moment after it starts: resolved before, pod 0 joined as a client of a
    store that nobody hosted, and the run failed at the rendezvous timeout. Its IP is in its /etc/hosts at once."""
    first = multinode_torchrun(rendered, tmp_path, index=0, pod_ip=pod_ip)
    joining = multinode_torchrun(rendered, tmp_path, index=1, pod_ip="10.0.0.8")
    host, port = first["rdzv-endpoint"].rsplit(":", 1)
    assert host == endpoint_host
    assert port == joining["rdzv-endpoint"].rsplit(":", 1)[1]
    assert {k: v for k, v in first.items() if k != "rdzv-endpoint"} == {
        k: v for k, v in joining.items() if k != "rdzv-endpoint"
    }


def test_the_cluster_requirements_name_the_oldest_kubernetes_validated_and_who_must_own_the_volumes(rendered):
    """The docs said 1.27 while the manifests are validated against (and written for) 1.29. The shared volumes are
    written as the pods' uid and group, which fsGroup alone does not give on many ReadWriteMany drivers (an NFS CSI
    driver's default fsGroupPolicy applies it to ReadWriteOnce volumes only): the docs must say so, and how."""
    text = " ".join((REPO / "docs" / "operations.md").read_text().split())
    oldest = ".".join(KUBERNETES_VERSIONS[0].split(".")[:2])
    assert f"Kubernetes {oldest} or newer" in text
    assert not re.search(r"Kubernetes 1\.\d+ or newer", text.replace(f"Kubernetes {oldest} or newer", ""))
    ids = {
        (s["runAsUser"], s["runAsGroup"], s["fsGroup"])
        for objects in rendered.values()
        for o in objects
        if o["kind"] in WORKLOADS
        for s in [pod_spec(o)["securityContext"]]
    }
    ((uid, gid, fs_group),) = ids
    assert uid == gid == fs_group
    assert f"writable by uid/gid {uid}" in text
    for how in ("mountPermissions", "access point", "fsGroupPolicy: File"):
        assert how in text, how


def test_the_docs_commands_name_kustomizations_that_exist():
    docs = (REPO / "docs" / "operations.md").read_text()
    for line in docs.splitlines():
        words = shlex.split(line.strip()) if line.strip().startswith("kubectl apply -k") else []
        if words:
            assert (REPO / words[3]).is_dir(), line


def test_the_web_gateways_memory_holds_the_request_bodies_it_admits(rendered):
    """Each body in flight is held several times over (inference.capacity.web_memory_mib): at 512Mi with 128 MiB in
    flight, four concurrent 32 MB uploads reached 900 MiB and the pod was killed for memory."""
    from inference.capacity import MIB, web_memory_mib
    from inference.web.app import WebOptions

    resources = container(find(rendered["cpu"], "Deployment", "web"))["resources"]
    needed_mib = web_memory_mib(WebOptions().max_inflight_bytes)  # /tmp is an emptyDir on disk here, not memory
    assert k8s_quantity_bytes(resources["limits"]["memory"]) >= needed_mib * MEMORY_HEADROOM * MIB
    # Requested whole: a pod at its peak is not the first evicted for using more than it asked.
    assert k8s_quantity_bytes(resources["requests"]["memory"]) >= needed_mib * MIB


def prestop_sleep_seconds(c: dict) -> float:
    """How long the container's preStop hook waits before the kubelet sends SIGTERM (0: no hook)."""
    hook = c.get("lifecycle", {}).get("preStop")
    if hook is None:
        return 0
    if "sleep" in hook:  # the native sleep action (Kubernetes 1.30+)
        return float(hook["sleep"]["seconds"])
    argv = hook["exec"]["command"]
    assert argv[0] == "sleep" and len(argv) == 2, f"a preStop hook that is not a sleep: {argv}"
    return float(argv[1])


def test_inference_pods_get_the_servers_shutdown_grace_and_a_margin(rendered):
    """A pod killed before its --grace-period ends cancels the calls in flight that the server would let finish."""
    deployment = find(rendered["cpu"], "Deployment", "inference")
    c = container(deployment)
    assert c["command"][:3] == ["python", "-m", "inference"]
    total = prestop_sleep_seconds(c) + drain_seconds(c["command"]) + SHUTDOWN_MARGIN_S
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] >= total


def test_the_web_gateway_keeps_serving_until_kube_proxy_has_dropped_it_then_drains(rendered):
    """On SIGTERM uvicorn stops accepting at once, while kube-proxy still sends new connections to the pod for a few
    seconds: a preStop sleep covers that. Then the requests in flight end within their gRPC deadline."""
    deployment = find(rendered["cpu"], "Deployment", "web")
    c = container(deployment)
    sleep = prestop_sleep_seconds(c)
    assert sleep >= 3, "the endpoint's removal takes a few seconds to reach every node's kube-proxy"
    assert c["command"][:3] == ["python", "-m", "inference.web"]
    total = sleep + drain_seconds(c["command"]) + SHUTDOWN_MARGIN_S
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] >= total


def test_an_inference_pod_holds_its_server_process_with_room_to_spare(rendered):
    """Below the estimate the server refuses to start (inference.capacity.check_workers_fit); at it, a pod is one
    misjudged peak from being killed with every call in flight. The same headroom as compose's limit."""
    from inference.capacity import MIB, server_memory_mib
    from inference.options import ServerOptions

    c = container(find(rendered["cpu"], "Deployment", "inference"))
    assert env(c)[settings.ENV_INFERENCE_WORKERS] == "1"  # one process per pod: the estimate is one process's
    needed_mib = server_memory_mib(ServerOptions(artifacts_dir=Path(), data_dir=Path()))
    assert k8s_quantity_bytes(c["resources"]["limits"]["memory"]) >= needed_mib * MEMORY_HEADROOM * MIB
    assert k8s_quantity_bytes(c["resources"]["requests"]["memory"]) >= needed_mib * MIB  # requested whole


# The processes that read the settings' folders, and which of them (from the image when the manifest does not set
# it); the trainers alone write there.
READS = {
    "trainer": (settings.ENV_ARTIFACTS_DIR, settings.ENV_DATA_DIR),
    "trainer-multinode": (settings.ENV_ARTIFACTS_DIR, settings.ENV_DATA_DIR),
    "inference": (settings.ENV_ARTIFACTS_DIR, settings.ENV_DATA_DIR),
    "tensorboard": (settings.ENV_ARTIFACTS_DIR,),
}
WRITERS = {"trainer", "trainer-multinode"}
# The claim behind each folder: the one volume every pod that reads or writes the folder shares (the multinode
# trainers included: MNIST they download is what inference's Evaluate reads).
CLAIMS = {settings.ENV_ARTIFACTS_DIR: "artifacts", settings.ENV_DATA_DIR: "mnist"}


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_every_containers_folders_are_its_mounts_and_only_the_trainers_write_there(rendered, name):
    from tests.deploy.compose_model import DOCKERFILES, dockerfile_env

    for workload in (o for o in rendered[name] if o["kind"] in WORKLOADS):
        workload_name = workload["metadata"]["name"]
        c = container(workload)
        image_env = dockerfile_env(DOCKERFILES[c["image"].split("/", 1)[1].split(":")[0]])
        volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
        mounted = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        for variable in (settings.ENV_ARTIFACTS_DIR, settings.ENV_DATA_DIR):
            given = env(c).get(variable)
            if given is None and variable not in READS.get(workload_name, ()):
                continue  # neither set nor read (web)
            folder = given if given is not None else image_env[variable]
            where = f"{name}: {workload_name} {variable}={folder}"
            assert folder in mounted, f"{where} is not one of its mounts {sorted(mounted)}"
            mount = mounted[folder]
            assert mount.get("readOnly", False) == (workload_name not in WRITERS), where
            claim = volumes[mount["name"]].get("persistentVolumeClaim", {}).get("claimName")
            assert claim == CLAIMS[variable], f"{where} is claim {claim}"


def folder_claims(workload: dict) -> dict[str, str | None]:
    """The claim behind the artifacts and MNIST folders (the image's when the manifest does not set the variable)
    of a workload's container; None for a folder that is not a claim (an emptyDir, or no mount at all)."""
    from tests.deploy.compose_model import DOCKERFILES, dockerfile_env

    c = container(workload)
    image_env = dockerfile_env(DOCKERFILES[c["image"].split("/", 1)[1].split(":")[0]])
    volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
    mounted = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
    out: dict[str, str | None] = {}
    for variable in (settings.ENV_ARTIFACTS_DIR, settings.ENV_DATA_DIR):
        folder = env(c).get(variable) or image_env[variable]
        volume = volumes.get(mounted.get(folder, ""), {})
        out[variable] = volume.get("persistentVolumeClaim", {}).get("claimName")
    return out


def test_the_multinode_trainers_fill_the_volumes_inference_reads_models_and_mnist_from(rendered):
    """The multinode Job runs beside the gpu overlay once its single-node trainer Job is deleted (docs/operations.md):
    that Job was then the only one to put MNIST where inference's Evaluate reads it, and with the multinode pods
    downloading into an emptyDir each, Evaluate answered 503 (no test set) on such a cluster. Several pods
    downloading into one folder is safe: each writes a file of its own and renames it into place (shared/data.py)."""
    inference = folder_claims(find(rendered["gpu"], "Deployment", "inference"))
    multinode = folder_claims(find(rendered["multinode"], "Job", "trainer-multinode"))
    assert None not in inference.values(), inference
    assert multinode == inference


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_both_claims_are_read_write_many(rendered, name):
    """The trainer Job writes them while inference pods, spread over the nodes, read them: ReadWriteOnce would
    hold them to one node."""
    for claim in CLAIMS.values():
        assert find(rendered[name], "PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_every_container_port_is_open_in_its_pods_network_policy(rendered, name):
    objects = rendered[name]
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    for workload in (o for o in objects if o["kind"] in WORKLOADS):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        own = [p for p in policies if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()]
        assert own, f"{name}: no NetworkPolicy selects {workload['metadata']['name']}"
        rules = [rule for p in own for rule in p["spec"].get("ingress", [])]
        for c in pod_spec(workload)["containers"]:
            for port in c.get("ports", []):
                names = {port["containerPort"], port.get("name")}  # a policy may name the port or number it
                allowed = any("ports" not in rule or names & {p["port"] for p in rule["ports"]} for rule in rules)
                assert allowed, f"{name}: {workload['metadata']['name']}'s port {port} is closed by its NetworkPolicy"


# Who may read what the pods say about themselves (deploy/k8s/base/network-policies.yaml, docs/operations.md): the
# labels an operator puts on the Prometheus namespace and the ingress controller's namespace.
SCRAPER_POD_LABELS = {"app.kubernetes.io/name": "prometheus"}  # the Prometheus Operator's and Helm chart's server
SCRAPE_NAMESPACE_LABELS = {"mnist-stack/scrape": "true"}
INGRESS_NAMESPACE_LABELS = {"mnist-stack/ingress": "true"}
CLIENT_NAMESPACE_LABELS = {"mnist-stack/client": "true"}  # namespaces whose pods call the service (gRPC or REST)
OWN_NAMESPACE = {"podSelector": {}}  # a peer of every pod of the policy's own namespace


def peers_admitted_to(objects: list[dict], app: str, port: int) -> list[dict] | None:
    """The `from:` peers of the NetworkPolicy rules that open `app`'s container port `port` (by number or name);
    None where a rule opens it to anyone (no `from:`)."""
    workload = next(o for o in objects if o["kind"] in WORKLOADS and o["metadata"]["name"] == app)
    labels = workload["spec"]["template"]["metadata"]["labels"]
    names = {port} | {
        p.get("name")
        for c in pod_spec(workload)["containers"]
        for p in c.get("ports", [])
        if p["containerPort"] == port
    } - {None}
    peers: list[dict] = []
    for policy in (o for o in objects if o["kind"] == "NetworkPolicy"):
        if not policy["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items():
            continue
        for rule in policy["spec"].get("ingress", []):
            if "ports" in rule and not names & {p["port"] for p in rule["ports"]}:
                continue
            if not rule.get("from"):
                return None
            peers += rule["from"]
    return peers


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_the_metrics_port_admits_only_prometheus_pods_of_a_namespace_labelled_to_scrape(rendered, name):
    """Metrics say which models are served, the load and every failure: the scraper's to read, not any pod's in
    any namespace. Both selectors in one peer must match; as two peers, any pod of the namespace or any Prometheus
    anywhere would do."""
    objects = rendered[name]
    c = container(find(objects, "Deployment", "inference"))
    port = int(env(c)[settings.ENV_METRICS_ADDRESS].rsplit(":", 1)[1])
    assert port in {p["containerPort"] for p in c["ports"]}
    assert peers_admitted_to(objects, "inference", port) == [
        {
            "namespaceSelector": {"matchLabels": SCRAPE_NAMESPACE_LABELS},
            "podSelector": {"matchLabels": SCRAPER_POD_LABELS},
        }
    ]


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_tensorboard_admits_only_its_own_namespace_and_a_namespace_labelled_as_the_ingress(rendered, name):
    """TensorBoard has no login, and shows every run's curves and pictures: not a port for any namespace."""
    peers = peers_admitted_to(rendered[name], "tensorboard", settings.DEFAULT_TENSORBOARD_PORT)
    assert peers is not None, "TensorBoard is open to every namespace"
    ingress = {"namespaceSelector": {"matchLabels": INGRESS_NAMESPACE_LABELS}}
    assert peers and all(p in (OWN_NAMESPACE, ingress) for p in peers), peers


def namespaces_selected(peer: dict) -> str:
    """Which namespaces a NetworkPolicy peer admits pods of: "own" (a podSelector alone), "labelled" (a
    namespaceSelector with labels to match), "every" (an empty namespaceSelector; an ipBlock, which admits by address
    whatever the namespace: an operator's addition for a load balancer outside the cluster, not the base's)."""
    if "ipBlock" in peer:
        return "every"
    if "namespaceSelector" not in peer:
        return "own"
    selector = peer["namespaceSelector"]
    return "labelled" if selector.get("matchLabels") or selector.get("matchExpressions") else "every"


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_no_container_port_admits_every_namespace(rendered, name):
    """A pod of any namespace (another team's, a compromised one) must not reach a port that does not need it: each
    is opened to this namespace's pods and to namespaces an operator labels for it, never to every source."""
    objects = rendered[name]
    for workload in (o for o in objects if o["kind"] in WORKLOADS):
        app = workload["metadata"]["name"]
        for c in pod_spec(workload)["containers"]:
            for port in c.get("ports", []):
                peers = peers_admitted_to(objects, app, port["containerPort"])
                where = f"{name}: {app}'s port {port['containerPort']}"
                assert peers is not None, f"{where} is open to every source (a rule with no `from:`)"
                assert all(namespaces_selected(p) != "every" for p in peers), f"{where} admits every namespace: {peers}"


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_inference_admits_its_own_namespace_and_client_namespaces_and_its_health_port_only_its_own(rendered, name):
    """The gateway (this namespace) and the applications that call the service (their namespaces labelled as
    clients) reach gRPC; the health port is the gateway's /readyz (kubelet's probes come from the node, always
    admitted)."""
    objects = rendered[name]
    c = container(find(objects, "Deployment", "inference"))
    grpc_port = int(env(c)[settings.ENV_GRPC_ADDRESS].rsplit(":", 1)[1])
    health_port = int(env(c)[settings.ENV_HEALTH_ADDRESS].rsplit(":", 1)[1])
    clients = {"namespaceSelector": {"matchLabels": CLIENT_NAMESPACE_LABELS}}
    grpc_peers = peers_admitted_to(objects, "inference", grpc_port)
    assert grpc_peers is not None and sorted(map(json.dumps, grpc_peers)) == sorted(
        map(json.dumps, [OWN_NAMESPACE, clients])
    )
    assert peers_admitted_to(objects, "inference", health_port) == [OWN_NAMESPACE]


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_the_web_gateway_admits_its_own_namespace_the_ingress_and_client_namespaces(rendered, name):
    peers = peers_admitted_to(rendered[name], "web", settings.DEFAULT_WEB_PORT)
    assert peers is not None, "the gateway is open to every source"
    allowed = [
        OWN_NAMESPACE,
        {"namespaceSelector": {"matchLabels": INGRESS_NAMESPACE_LABELS}},
        {"namespaceSelector": {"matchLabels": CLIENT_NAMESPACE_LABELS}},
    ]
    assert sorted(map(json.dumps, peers)) == sorted(map(json.dumps, allowed))


def test_the_labels_the_network_policies_ask_for_are_documented_with_how_to_set_them():
    text = (REPO / "docs" / "operations.md").read_text() + (K8S / "base" / "network-policies.yaml").read_text()
    for labels in (SCRAPER_POD_LABELS, SCRAPE_NAMESPACE_LABELS, INGRESS_NAMESPACE_LABELS, CLIENT_NAMESPACE_LABELS):
        for key, value in labels.items():
            assert f"{key}={value}" in text, key
    assert "kubectl label namespace" in text


def test_the_web_gateways_readiness_asks_inferences_health_port(rendered):
    objects = rendered["cpu"]
    inference = container(find(objects, "Deployment", "inference"))
    health_port = int(env(inference)[settings.ENV_HEALTH_ADDRESS].rsplit(":", 1)[1])
    assert health_port in {p["containerPort"] for p in inference["ports"]}
    web = container(find(objects, "Deployment", "web"))
    # Any other port: /readyz never answers ready, and the Service sends the page no traffic.
    assert env(web)[settings.ENV_GRPC_HEALTH_TARGET] == f"dns:///inference:{health_port}"


def test_the_multinode_rendezvous_id_is_the_job_uid_label_the_job_controller_sets(rendered, tmp_path):
    """A misspelt label gives every pod an empty id (the env var is empty, and the pods of two runs could join one
    rendezvous); Kubernetes 1.27+ sets batch.kubernetes.io/controller-uid, and the deprecated controller-uid."""
    c = container(find(rendered["multinode"], "Job", "trainer-multinode"))
    (uid,) = [e for e in c["env"] if e["name"] == "JOB_UID"]
    assert uid["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['batch.kubernetes.io/controller-uid']"
    for index in (0, 1):
        assert multinode_torchrun(rendered, tmp_path, index)["rdzv-id"] == "job-uid"

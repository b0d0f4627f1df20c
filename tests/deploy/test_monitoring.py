"""The compose `monitoring` profile: Prometheus from the official image at a pinned tag, with a scrape
configuration that `promtool check config` accepts and that points at the port the inference service serves its
metrics on."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from shared import settings

from tests.deploy.compose_model import REPO, Mount, Port, container_environment, load_compose, mounts, published_ports

SCRAPE_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"


@pytest.fixture(scope="module")
def model():
    return load_compose()


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (apt-get install -y --no-install-recommends prometheus)")
    return path


def test_the_monitoring_profile_adds_prometheus_from_the_official_image_at_a_pinned_tag(model):
    prometheus = model["services"]["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]  # not started by a plain `up`
    image, _, tag = prometheus["image"].partition(":")
    assert image == "prom/prometheus"
    assert re.fullmatch(r"v\d+\.\d+\.\d+", tag), f"pin an exact release, not {tag!r}"
    assert Mount("bind", str(SCRAPE_CONFIG), "/etc/prometheus/prometheus.yml", True) in mounts(prometheus)
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert published_ports(prometheus) == [Port("127.0.0.1", "9090", 9090)]


def test_promtool_accepts_the_scrape_config():
    result = subprocess.run(
        [promtool(), "check", "config", str(SCRAPE_CONFIG)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_rejects_a_broken_config(tmp_path):
    """Guards the test above: promtool does check (an unknown field fails)."""
    broken = tmp_path / "prometheus.yml"
    broken.write_text("scrape_configs:\n  - job_name: x\n    static_configs_typo: []\n")
    assert subprocess.run([promtool(), "check", "config", str(broken)], capture_output=True, timeout=60).returncode


def test_prometheus_scrapes_every_inference_replica_on_the_metrics_port(model):
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    (job,) = config["scrape_configs"]
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["inference"] and discovery["type"] == "A"  # every replica's address
    env = container_environment(model, "inference")
    port = int(env[settings.ENV_METRICS_ADDRESS].rsplit(":", 1)[1])
    assert discovery["port"] == port == settings.DEFAULT_METRICS_PORT
    assert env[settings.ENV_METRICS_ADDRESS].startswith("[::]:"), "metrics must listen on every interface"

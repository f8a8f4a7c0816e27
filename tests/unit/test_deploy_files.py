"""The Docker files CI cannot run, checked for what it can: every setting they set exists,
ports and scrape job names match the code and the alerts, mounted paths exist."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from stream_app.cli import COMMANDS
from stream_app.core.settings import Settings
from tests.support import is_setting

DOCKER = Path("deploy/docker")


def test_compose_sets_only_real_settings_and_mounts_existing_files():
    compose = yaml.safe_load((DOCKER / "compose.yml").read_text())
    variables = {
        name
        for service in compose["services"].values()
        for name in (service.get("environment") or {})
        if name.startswith("STREAMREC_")
    }
    assert variables and all(map(is_setting, variables)), sorted(variables)
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (DOCKER / source).exists(), source
    grafana = compose["services"]["grafana"]["volumes"]
    provider = yaml.safe_load((DOCKER / "grafana/dashboards.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert any(v.startswith("../../dashboards:" + path) for v in grafana)


def test_dockerfile_matches_the_worker():
    text = (DOCKER / "Dockerfile").read_text()
    assert f"EXPOSE {Settings().worker.web_port}" in text
    assert all(map(is_setting, re.findall(r"(STREAMREC_[A-Z_]+)=", text)))
    (command,) = re.findall(r'ENTRYPOINT \["streamrec", "(\w+)"\]', text)
    assert command in COMMANDS


def test_prometheus_scrapes_the_jobs_the_alerts_name_on_the_code_ports():
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    jobs = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]
    }
    alerts = (Path("deploy/prometheus/alerts.yml")).read_text()
    assert set(re.findall(r'job="([^"]+)"', alerts)) <= set(jobs)
    settings = Settings()
    assert jobs["streamrec-worker"] == [f"worker:{settings.worker.web_port}"]
    assert jobs["streamrec-triton"] == [f"triton:{settings.triton.metrics_port}"]

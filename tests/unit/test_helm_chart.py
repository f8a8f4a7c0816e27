"""The Helm chart (deploy/helm/streamrec), rendered by the real helm and checked offline.

Every rendered manifest is validated against the Kubernetes schemas (kubernetes-validate,
strict: unknown fields fail) or, for KEDA, prometheus-operator and Strimzi resources,
against validators generated from their CRDs (deploy/helm/validate, Node.js); a kind
neither knows fails. Then the manifests are checked against the code: the settings they
set load into Settings, and probes, ports, the consumer group, topics, scrape jobs and
alert rules are the ones the worker, the trainer and deploy/prometheus/alerts.yml use.
No cluster runs here: scheduling, GPUs, KEDA and the operators' behaviour are not tested.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from stream_app.core.settings import Settings, load_settings
from stream_app.devtools.kafka_io import all_topics
from tests.support import is_setting

ROOT = Path(__file__).parents[2]
CHART = ROOT / "deploy/helm/streamrec"
HELM = ROOT / ".tools/bin/helm"
CRD_VALIDATOR = ROOT / "deploy/helm/validate"
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
RUNBOOK_LINKS = [  # relative to the repository, as the alerts file has them
    r["annotations"]["runbook_url"]
    for g in yaml.safe_load(ALERTS.read_text())["groups"]
    for r in g["rules"]
]
DOCKERFILE = (ROOT / "deploy/docker/Dockerfile").read_text()
TRAINER_DOCKERFILE = (ROOT / "deploy/docker/Dockerfile.trainer").read_text()
TRITON_DOCKERFILE = (ROOT / "deploy/docker/Dockerfile.triton").read_text()
# The chart's kubeVersion floor and the newest schemas kubernetes-validate bundles.
KUBE_VERSIONS = ("1.30.0", "1.37.0")
CRD_GROUPS = {"keda.sh", "monitoring.coreos.com", "kafka.strimzi.io"}
# Settings that hold a secret (SecretStr): the chart hands them over as files (*_FILE).
SECRET_SETTINGS = {
    f"STREAMREC_{group.upper()}__{name.upper()}"
    for group, field in Settings.model_fields.items()
    for name, inner in getattr(field.annotation, "model_fields", {}).items()
    if "SecretStr" in str(inner.annotation)
}
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}

OPTIONS = {  # the branches the other scenarios leave out
    "autoscaling.mode": "keda",
    "config.kafka.security_protocol": "SSL",
    "files.kafka.ssl_ca_file.existingSecret": "kafka-ca",
    "files.kafka.ssl_ca_file.key": "ca.crt",
    "secrets.redis.password.value": "redis-secret",
    "secrets.privacy.user_id_key.value": "a-long-random-key",
    "triton.gpus": "0",
    "triton.modelRepository.source": "pvc",
    "triton.modelRepository.pvc.claimName": "models",
    "metrics.serviceMonitor.enabled": "true",
    "metrics.prometheusRule.enabled": "true",
    "strimzi.enabled": "true",
    "strimzi.apiVersion": "kafka.strimzi.io/v1",
}
TRAINER = {  # continuous training in production: one Triton, a claim the chart makes
    "trainer.enabled": "true",
    "triton.replicas": "1",
    "triton.modelRepository.source": "shared",
    "triton.modelRepository.pvc.storageClassName": "shared-files",
}
TRAINER_CRONJOB = {  # its other branches: a CronJob, a claim of yours, at a subPath
    "trainer.enabled": "true",
    "trainer.mode": "cronjob",
    "triton.modelRepository.source": "shared",
    "triton.modelRepository.pvc.claimName": "models",
    "triton.modelRepository.pvc.subPath": "streamrec",
    "metrics.serviceMonitor.enabled": "true",
}
PRODUCTION = ("-f", str(CHART / "values-production.yaml"))
REDIS_CLUSTER = ("-f", str(CHART / "values-redis-cluster.yaml"))
EXPERIMENT = {  # arms as values: the ConfigMap carries them as one JSON setting
    "name": "head-v7",
    "arms": [
        {"name": "control", "model_version": "6", "weight": 50},
        {"name": "treatment", "weight": 50, "explore_share": 0.2},
        {"name": "candidate", "model_version": "8", "shadow": True, "sample": 0.2},
    ],
}


def settings_flag(values: dict[str, str]) -> tuple[str, str]:
    return "--set", ",".join(f"{k}={v}" for k, v in values.items())


SCENARIOS = {
    "default": (),
    "production": PRODUCTION,
    "hpa": ("--set", "autoscaling.mode=hpa"),
    "options": settings_flag(OPTIONS),
    "trainer": (*PRODUCTION, *settings_flag(TRAINER)),
    "trainer-cronjob": settings_flag(TRAINER_CRONJOB),
    "experiment": ("--set-json", f"config.experiment={json.dumps(EXPERIMENT)}"),
    "redis-cluster": (*PRODUCTION, *REDIS_CLUSTER, *settings_flag(TRAINER)),
}
MODES = {
    "default": "none",
    "production": "keda",
    "hpa": "hpa",
    "options": "keda",
    "trainer": "keda",
    "trainer-cronjob": "none",
    "experiment": "none",
    "redis-cluster": "keda",
}
TRAINER_KINDS = {"trainer": "Deployment", "trainer-cronjob": "CronJob"}


@pytest.fixture(scope="module", autouse=True)
def tools():
    missing = [
        str(p.relative_to(ROOT)) for p in (HELM, CRD_VALIDATOR / "node_modules") if not p.exists()
    ]
    if shutil.which("node") is None:
        missing.append("node")
    try:
        import kubernetes_validate  # noqa: F401
    except ImportError:
        missing.append("kubernetes-validate (pip install -e '.[dev]')")
    if missing:
        message = (
            f"missing {', '.join(missing)}: run `make chart-tools` (scripts/install_chart_tools.sh)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs them (make test): never pass having checked nothing
        pytest.skip(message)


def helm(*args: str) -> str:
    done = subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"helm {' '.join(args)}\n{done.stderr}"
    return done.stdout


@functools.cache
def render(scenario: str) -> tuple[dict, ...]:
    text = helm(
        "template", "streamrec", str(CHART), "--namespace", "streamrec",
        "--kube-version", KUBE_VERSIONS[0], *SCENARIOS[scenario],
    )  # fmt: skip
    docs = tuple(doc for doc in yaml.safe_load_all(text) if doc)
    assert docs
    return docs


def schema_errors(docs) -> list[str]:
    """Core kinds against the Kubernetes schemas, custom resources against their CRDs'."""
    import kubernetes_validate

    errors, custom = [], []
    for doc in docs:
        if doc["apiVersion"].split("/")[0] in CRD_GROUPS:
            custom.append(doc)
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                errors.append(
                    f"{name(doc)}: no Kubernetes {version} schema for {doc['apiVersion']}"
                )
            except kubernetes_validate.ValidationError as exc:
                where = "/".join(map(str, exc.absolute_path))
                errors.append(f"{name(doc)} (Kubernetes {version}) at {where}: {exc.message}")
    if custom:
        done = subprocess.run(
            ["node", str(CRD_VALIDATOR / "validate.mjs")],
            input=json.dumps(custom), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        errors += done.stdout.splitlines()
        assert done.returncode in (0, 1) and not done.stderr, done.stderr
    return errors


def name(doc: dict) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def of_kind(docs, kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs, kind: str, suffix: str = "") -> dict:
    (found,) = [d for d in of_kind(docs, kind) if d["metadata"]["name"].endswith(suffix)]
    return found


def workloads(docs) -> list[dict]:
    return of_kind(docs, "Deployment") + of_kind(docs, "CronJob")


def pod_template(workload: dict) -> dict:
    """The pod template of a Deployment or a CronJob."""
    spec = workload["spec"]
    return spec["jobTemplate"]["spec"]["template"] if "jobTemplate" in spec else spec["template"]


def container(workload: dict) -> dict:
    (found,) = pod_template(workload)["spec"]["containers"]
    return found


def claim_mounts(workload: dict, spec: dict) -> dict[str, tuple[str, str, bool]]:
    """Mount path of each PersistentVolumeClaim in a container -> (claim, subPath, read-only)."""
    volumes = {v["name"]: v for v in pod_template(workload)["spec"].get("volumes", [])}
    found = {}
    for mount in spec.get("volumeMounts", []):
        claim = volumes[mount["name"]].get("persistentVolumeClaim")
        if claim:
            read_only = mount.get("readOnly", False) or claim.get("readOnly", False)
            found[mount["mountPath"]] = (claim["claimName"], mount.get("subPath", ""), read_only)
    return found


def environment(docs, deployment: dict) -> dict[str, str]:
    """The STREAMREC_ variables the container gets: its ConfigMaps, then its env."""
    spec = container(deployment)
    env = {}
    for source in spec.get("envFrom", []):
        env |= one(docs, "ConfigMap", source["configMapRef"]["name"])["data"]
    for variable in spec.get("env", []):
        env[variable["name"]] = variable.get("value", "<from a reference>")
    return {k: v for k, v in env.items() if k.startswith("STREAMREC_")}


def mounted_files(deployment: dict) -> dict[str, dict]:
    """Path of each file mounted from a Secret -> its {name, key}."""
    spec = pod_template(deployment)["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    files = {}
    for mount in container(deployment).get("volumeMounts", []):
        for source in volumes[mount["name"]].get("projected", {}).get("sources", []):
            for item in source["secret"]["items"]:
                ref = {"name": source["secret"]["name"], "key": item["key"]}
                files[f"{mount['mountPath']}/{item['path']}"] = ref
    return files


def settings_in_pod(docs, deployment: dict, tmp_path: Path, monkeypatch) -> Settings:
    """Settings as the pod would load them; mounted files replaced by local stand-ins."""
    mounted = mounted_files(deployment)
    for variable in [v for v in os.environ if v.startswith("STREAMREC_")]:
        monkeypatch.delenv(variable)
    for variable, value in environment(docs, deployment).items():
        if variable.endswith("_FILE"):
            assert value in mounted, f"{variable}={value} is not a file mounted from a Secret"
            value = str(tmp_path / Path(value).name)
            Path(value).write_text("a-stand-in-secret-of-some-length\n")
        monkeypatch.setenv(variable, value)
    return load_settings()


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_passes(scenario):
    helm("lint", "--strict", str(CHART), *SCENARIOS[scenario])


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_manifests_match_the_kubernetes_and_crd_schemas(scenario):
    errors = schema_errors(render(scenario))
    assert errors == [], "invalid manifests:\n" + "\n".join(errors)


def test_the_validators_reject_bad_manifests_and_unknown_kinds():
    typo = json.loads(json.dumps(one(render("default"), "Deployment", "-worker")))
    container(typo)["imagePullPolicyy"] = "Always"
    scaled = one(render("production"), "ScaledObject")
    scaled = scaled | {"spec": scaled["spec"] | {"maxReplicaCount": "twelve"}}
    widget = {"kind": "Widget", "metadata": {"name": "w"}}
    bad = {
        "imagePullPolicyy": typo,
        "maxReplicaCount": scaled,
        "no Kubernetes": {"apiVersion": "example.com/v1"} | widget,
        "no schema": {"apiVersion": "keda.sh/v1alpha1"} | widget,
    }
    for expected, doc in bad.items():
        errors = schema_errors([doc])
        assert errors and all(expected in error for error in errors), (expected, errors)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_chart_sets_only_real_settings_and_secrets_only_as_files(scenario):
    docs = render(scenario)
    for configmap in of_kind(docs, "ConfigMap"):
        unknown = [v for v in configmap["data"] if not is_setting(v)]
        assert unknown == [], f"{name(configmap)} sets no such setting: {unknown}"
    for deployment in workloads(docs):
        env = environment(docs, deployment)
        assert all(map(is_setting, env)), sorted(env)
        assert not SECRET_SETTINGS & set(env), "secrets go in files, not in the environment"
        mounted = mounted_files(deployment)
        for variable in env:
            if variable.endswith("_FILE"):
                assert env[variable] in mounted, variable


def test_every_secret_setting_has_a_place_in_the_values():
    values = yaml.safe_load((CHART / "values.yaml").read_text())["secrets"]
    in_values = {f"STREAMREC_{g.upper()}__{f.upper()}" for g in values for f in values[g]}
    assert in_values == SECRET_SETTINGS


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_worker_pod_matches_the_code(scenario, tmp_path, monkeypatch):
    docs = render(scenario)
    worker = one(docs, "Deployment", "-worker")
    settings = settings_in_pod(docs, worker, tmp_path, monkeypatch)
    pod = worker["spec"]["template"]["spec"]
    spec = container(worker)

    # Probes: the paths web.py serves, on the port the worker listens on.
    pages = set(
        re.findall(r'@app\.page\("(/\w+)"\)', (ROOT / "stream_app/worker/web.py").read_text())
    )
    (port,) = spec["ports"]
    assert port["containerPort"] == settings.worker.web_port
    assert settings.worker.web_host == "0.0.0.0"
    probes = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in probes.items():
        assert spec[probe]["httpGet"] == {"path": path, "port": port["name"]}
        assert path in pages

    # The worker's own SIGTERM deadline comes before Kubernetes' SIGKILL.
    assert pod["terminationGracePeriodSeconds"] > math.ceil(settings.worker.shutdown_grace_s)

    # The image: its ENTRYPOINT runs, as its user, on a read-only root but for an emptyDir.
    assert "command" not in spec and '["streamrec", "worker"]' in DOCKERFILE
    assert f"EXPOSE {settings.worker.web_port}" in DOCKERFILE
    assert f"USER {pod['securityContext']['runAsUser']}" in DOCKERFILE
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    writable = [m["mountPath"] for m in spec["volumeMounts"] if m["name"] in empty_dirs]
    assert any(settings.worker.data_dir.startswith(path + "/") for path in writable)
    assert spec["resources"]["requests"] and spec["resources"]["limits"]

    # Kubernetes may evict one worker at a time.
    pdb = one(docs, "PodDisruptionBudget", "-worker")
    assert pdb["spec"]["selector"]["matchLabels"] == worker["spec"]["selector"]["matchLabels"]

    # triton.url names this release's Triton Service and its gRPC port.
    host, _, grpc_port = settings.triton.url.rpartition(":")
    service = one(docs, "Service", host)
    assert int(grpc_port) in {p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_exactly_one_autoscaler_per_mode_capped_at_the_partitions(scenario):
    docs = render(scenario)
    mode = MODES[scenario]
    scaled, hpas = of_kind(docs, "ScaledObject"), of_kind(docs, "HorizontalPodAutoscaler")
    assert (len(scaled), len(hpas)) == {"keda": (1, 0), "hpa": (0, 1), "none": (0, 0)}[mode]
    worker = one(docs, "Deployment", "-worker")
    # With an autoscaler, helm upgrades must not reset the replica count.
    assert ("replicas" in worker["spec"]) == (mode == "none")
    partitions = int(environment(docs, worker)["STREAMREC_KAFKA__PARTITIONS"])
    for autoscaler in scaled + hpas:
        spec = autoscaler["spec"]
        assert spec["scaleTargetRef"]["name"] == worker["metadata"]["name"]
        assert spec.get("maxReplicaCount", spec.get("maxReplicas")) <= partitions


@pytest.mark.parametrize("scenario", ["production", "options"])
def test_keda_measures_the_lag_of_the_workers_group(scenario, tmp_path, monkeypatch):
    docs = render(scenario)
    worker = one(docs, "Deployment", "-worker")
    kafka = settings_in_pod(docs, worker, tmp_path, monkeypatch).kafka
    triggers = one(docs, "ScaledObject")["spec"]["triggers"]
    assert {t["metadata"]["topic"] for t in triggers} == {
        kafka.interactions_topic,
        kafka.items_topic,
    }
    auth = {doc["metadata"]["name"]: doc["spec"] for doc in of_kind(docs, "TriggerAuthentication")}
    mounted = mounted_files(worker)
    env = environment(docs, worker)
    for trigger in triggers:
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka"
        # Faust's app id is the consumer group (worker/app.py: App(kafka.consumer_group)).
        assert meta["consumerGroup"] == kafka.consumer_group
        assert meta["bootstrapServers"] == kafka.bootstrap
        assert (meta.get("tls") == "enable") == kafka.security_protocol.endswith("SSL")
        sasl = kafka.security_protocol.startswith("SASL")
        assert meta.get("sasl") == (KEDA_SASL[kafka.sasl_mechanism] if sasl else None)
        # The same Secrets the worker mounts.
        spec = auth[trigger["authenticationRef"]["name"]]
        refs = {
            r["parameter"]: {"name": r["name"], "key": r["key"]} for r in spec["secretTargetRef"]
        }
        files = {"password": "SASL_PASSWORD_FILE", "ca": "SSL_CA_FILE"}
        for parameter, variable in files.items():
            path = env.get(f"STREAMREC_KAFKA__{variable}")
            assert refs.get(parameter) == (mounted[path] if path else None), parameter
        if sasl:
            (username,) = spec["configMapTargetRef"]
            assert env[username["key"]] == kafka.sasl_username


@pytest.mark.parametrize("scenario", ["production", "options", *TRAINER_KINDS])
def test_service_monitors_scrape_the_jobs_the_alerts_name(scenario):
    docs = render(scenario)
    services = of_kind(docs, "Service")
    jobs = {}
    for monitor in of_kind(docs, "ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        (service,) = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
        job = service["metadata"]["labels"][monitor["spec"]["jobLabel"]]
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["path"] == "/metrics"
        (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
        # Unready pods are scraped too: up{job=...} == 0 must be seen, not go missing.
        assert service["spec"]["publishNotReadyAddresses"] is True
        (pods,) = [
            w
            for w in workloads(docs)
            if service["spec"]["selector"].items() <= pod_template(w)["metadata"]["labels"].items()
        ]
        ports = container(pods)["ports"]
        (container_port,) = [p["containerPort"] for p in ports if p["name"] == port["targetPort"]]
        jobs[job] = container_port
    code = Settings()
    expected = {
        "streamrec-worker": code.worker.web_port,
        "streamrec-triton": code.triton.metrics_port,
    }
    if scenario == "trainer":  # not a CronJob's: a `--once` cycle serves no metrics
        expected["streamrec-trainer"] = code.trainer.metrics_port
    assert jobs == expected
    # The alerts name every job there can be; here, those the release runs.
    alerting = set(re.findall(r'job="([^"]+)"', ALERTS.read_text()))
    assert set(jobs) <= alerting
    assert (set(jobs) == alerting) == (scenario == "trainer")


@pytest.mark.parametrize("scenario", ["production", "options", "trainer"])
def test_the_prometheus_rule_is_the_tested_alerts_file(scenario):
    groups = one(render(scenario), "PrometheusRule")["spec"]["groups"]
    base = yaml.safe_load((CHART / "values-production.yaml").read_text())["metrics"][
        "prometheusRule"
    ]["runbookBaseUrl"]
    links = [r["annotations"]["runbook_url"] for g in groups for r in g["rules"]]
    assert links and all(link.startswith("docs/runbook.md#") for link in RUNBOOK_LINKS)
    if scenario != "options":  # runbookBaseUrl set: the same links, made absolute
        assert links == [base + link for link in RUNBOOK_LINKS]
        for group in groups:
            for rule in group["rules"]:
                rule["annotations"]["runbook_url"] = rule["annotations"]["runbook_url"][len(base) :]
    assert groups == yaml.safe_load(ALERTS.read_text())["groups"]
    assert (CHART / "files/alerts.yml").read_text() == ALERTS.read_text()


def test_triton_runs_on_gpu_nodes_with_its_models():
    docs = render("production")
    triton = one(docs, "Deployment", "-triton")
    spec = container(triton)
    assert triton["spec"]["replicas"] == 2
    assert spec["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert triton["spec"]["template"]["spec"]["nodeSelector"]
    ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}  # Dockerfile.triton EXPOSE
    assert {f"--{name}-port={port}" for name, port in ports.items()} <= set(spec["args"])
    assert spec["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert spec["args"][0] == "tritonserver" and "command" not in spec  # the image's entrypoint
    assert "--model-repository=/models" in spec["args"]  # baked into the image
    # Everything loads at start; new versions when the trainer asks (repository API).
    assert {"--model-control-mode=explicit", "--load-model=*"} <= set(spec["args"])
    # It reads the catalog from Redis with the worker's settings, and nothing else.
    env = environment(docs, triton)
    assert env and all(v.startswith("STREAMREC_REDIS__") for v in env)
    assert env.items() <= environment(docs, one(docs, "Deployment", "-worker")).items()


def test_triton_models_from_a_volume_and_a_chart_made_secret():
    docs = render("options")
    triton = one(docs, "Deployment", "-triton")
    volumes = {v["name"]: v for v in triton["spec"]["template"]["spec"]["volumes"]}
    (models,) = [m for m in container(triton)["volumeMounts"] if m["mountPath"] == "/models"]
    assert volumes[models["name"]]["persistentVolumeClaim"]["claimName"] == "models"
    assert "nvidia.com/gpu" not in container(triton)["resources"]["limits"]
    # Values given in the values land in the chart's Secret, under the keys the pods mount.
    secret = one(docs, "Secret")
    mounted = mounted_files(one(docs, "Deployment", "-worker"))
    keys = {ref["key"] for ref in mounted.values() if ref["name"] == secret["metadata"]["name"]}
    assert keys == set(secret["data"]) == {"redis.password", "privacy.user_id_key"}


@pytest.mark.parametrize("scenario", TRAINER_KINDS)
def test_the_trainer_pod_matches_the_code(scenario, tmp_path, monkeypatch):
    docs = render(scenario)
    trainer = one(docs, TRAINER_KINDS[scenario], "-trainer")
    settings = settings_in_pod(docs, trainer, tmp_path, monkeypatch)
    pod = pod_template(trainer)["spec"]
    spec = container(trainer)

    # Never two trainers: one pod replaced by stopping it first, or one Job at a time.
    if trainer["kind"] == "Deployment":
        assert trainer["spec"]["replicas"] == 1
        assert trainer["spec"]["strategy"] == {"type": "Recreate"}
        assert "args" not in spec
    else:
        assert trainer["spec"]["concurrencyPolicy"] == "Forbid"
        assert trainer["spec"]["schedule"] == "0 * * * *"
        assert spec["args"] == ["--once"] and pod["restartPolicy"] == "Never"

    # The image: its ENTRYPOINT runs, as its user, on a read-only root; metrics reachable
    # (the long-running trainer's: a `--once` cycle serves none).
    assert "command" not in spec and 'ENTRYPOINT ["streamrec", "trainer"]' in TRAINER_DOCKERFILE
    assert f"EXPOSE {settings.trainer.metrics_port}" in TRAINER_DOCKERFILE
    assert settings.trainer.metrics_host == "0.0.0.0"
    ports = [p["containerPort"] for p in spec.get("ports", [])]
    assert ports == ([settings.trainer.metrics_port] if trainer["kind"] == "Deployment" else [])
    assert f"USER {pod['securityContext']['runAsUser']}" in TRAINER_DOCKERFILE
    worker = one(docs, "Deployment", "-worker")
    assert spec["securityContext"] == container(worker)["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert spec["resources"]["requests"] and spec["resources"]["limits"]

    # Kafka, Redis and the rest as the worker reads them, with the same secret files.
    assert environment(docs, worker).items() <= environment(docs, trainer).items()
    assert mounted_files(trainer) == mounted_files(worker)

    # It writes the model repository where its setting says: the claim, at the subPath,
    # that Triton serves (read-only there), both pods in the same group.
    triton = one(docs, "Deployment", "-triton")
    (claim, sub_path, read_only) = claim_mounts(trainer, spec)[settings.triton.model_repository]
    assert not read_only
    (path,) = [a.split("=")[1] for a in container(triton)["args"] if "--model-repository=" in a]
    assert claim_mounts(triton, container(triton))[path] == (claim, sub_path, True)
    groups = {pod_template(w)["spec"]["securityContext"]["fsGroup"] for w in (trainer, triton)}
    assert len(groups) == 1


@pytest.mark.parametrize("scenario", TRAINER_KINDS)
def test_a_shared_model_repository_is_seeded_from_the_image(scenario, tmp_path):
    docs = render(scenario)
    triton = one(docs, "Deployment", "-triton")
    (seed,) = pod_template(triton)["spec"]["initContainers"]
    assert seed["image"] == container(triton)["image"]
    ((claim, sub_path, read_only),) = claim_mounts(triton, seed).values()
    ((served, served_sub_path, _),) = claim_mounts(triton, container(triton)).values()
    assert (claim, sub_path, read_only) == (served, served_sub_path, False)
    claims = of_kind(docs, "PersistentVolumeClaim")
    if scenario == "trainer":  # made by the chart, and kept: it holds the trained versions
        (made,) = claims
        assert made["metadata"]["name"] == claim
        assert made["spec"]["accessModes"] == ["ReadWriteMany"]
        storage_class = TRAINER["triton.modelRepository.pvc.storageClassName"]
        assert made["spec"]["storageClassName"] == storage_class
        assert made["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    else:
        assert claims == [] and claim == TRAINER_CRONJOB["triton.modelRepository.pvc.claimName"]

    # The script itself, on directories standing in for the image's /models and the volume:
    # it copies what the volume lacks, group-writable, and keeps what is there.
    assert "COPY model_repository /models" in TRITON_DOCKERFILE
    image, volume = tmp_path / "image", tmp_path / "volume"
    for model in ("recommender", "item_embedder"):
        (image / model / "1").mkdir(parents=True)
        (image / model / "config.pbtxt").write_text(f"name: {model}\n")
    (volume / "recommender" / "7").mkdir(parents=True)
    (volume / "recommender" / "config.pbtxt").write_text("trained\n")
    script = seed["command"][-1].replace("/models", str(image)).replace("/repository", str(volume))
    done = subprocess.run(
        [*seed["command"][:-1], script], capture_output=True, text=True, timeout=30,
        env={"PATH": os.environ["PATH"], "HOSTNAME": "triton-0"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["seeded", "item_embedder"]
    assert sorted(p.name for p in volume.iterdir()) == ["item_embedder", "recommender"]
    assert (volume / "recommender" / "config.pbtxt").read_text() == "trained\n"
    assert (volume / "item_embedder" / "1").stat().st_mode & 0o020  # the trainer's group


@pytest.mark.parametrize("scenario", ["production", "options"])
def test_strimzi_topics_are_the_workers_topics(scenario, tmp_path, monkeypatch):
    docs = render(scenario)
    worker = one(docs, "Deployment", "-worker")
    kafka = settings_in_pod(docs, worker, tmp_path, monkeypatch).kafka
    topics = of_kind(docs, "KafkaTopic")
    assert {t["spec"]["topicName"] for t in topics} == set(all_topics(kafka))
    assert {t["spec"]["partitions"] for t in topics} == {kafka.partitions}
    assert all(t["metadata"]["labels"]["strimzi.io/cluster"] for t in topics)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ("autoscaling.mode=lag", "value must be one of 'keda', 'hpa', 'none'"),
        ("config.kafka.sasl_password=x", "/config/kafka/sasl_password"),
        ("autoscaling.mode=keda,autoscaling.minReplicas=9", "capped at config.kafka.partitions"),
        ("config.kafka.security_protocol=SASL_SSL,autoscaling.mode=keda", "sasl_username"),
        ("secrets.redis.password.existingSecret=redis", "secrets.redis.password.key"),
        ("triton.modelRepository.source=pvc", "triton.modelRepository.pvc.claimName"),
        ("trainer.mode=daily", "value must be one of 'deployment', 'cronjob'"),
        ("trainer.enabled=true", "trainer.enabled needs triton.modelRepository.source=shared"),
        (
            "trainer.enabled=true,triton.modelRepository.source=pvc,"
            "triton.modelRepository.pvc.claimName=models",
            "triton.modelRepository.source=shared, not pvc",
        ),
        (
            "trainer.enabled=true,triton.modelRepository.source=shared,triton.replicas=2",
            "trainer.enabled with triton.replicas=2",
        ),
        (
            "trainer.enabled=true,triton.modelRepository.source=shared,triton.enabled=false",
            "triton.modelRepository.pvc.claimName",
        ),
        ("config.trainer.metrics_host=0.0.0.0", "/config/trainer/metrics_host"),
    ],
)
def test_bad_values_fail_at_render_time_naming_the_value(values, message):
    done = subprocess.run(
        [str(HELM), "template", "streamrec", str(CHART), "--set", values],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0 and message in done.stderr, done.stderr


def test_experiment_arms_reach_the_worker_as_the_code_reads_them(tmp_path, monkeypatch):
    docs = render("experiment")
    settings = settings_in_pod(docs, one(docs, "Deployment", "-worker"), tmp_path, monkeypatch)
    assert settings.experiment.name == "head-v7"
    assert [a.model_dump(exclude_defaults=True) for a in settings.experiment.arms] == EXPERIMENT[
        "arms"
    ]


def test_on_a_redis_cluster_every_client_uses_the_cluster_and_waits_for_a_replica(
    tmp_path, monkeypatch
):
    docs = render("redis-cluster")
    for suffix in ("-worker", "-trainer"):
        settings = settings_in_pod(docs, one(docs, "Deployment", suffix), tmp_path, monkeypatch)
        assert settings.redis.cluster is True and settings.redis.replica_acks == 1
    # Triton's catalog tailer reads the same Redis settings.
    triton = one(docs, "ConfigMap", "-triton-config")["data"]
    assert triton["STREAMREC_REDIS__CLUSTER"] == "true"
    assert triton["STREAMREC_REDIS__URL"] == "redis://redis-cluster:6379/0"

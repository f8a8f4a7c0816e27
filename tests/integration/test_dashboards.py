"""Every dashboard query, evaluated by a real Prometheus scraping the real stack.

A worker on topics of its own gets real traffic (interactions, a malformed event, an item
upsert, a click on a recommended item); Prometheus (Debian's binary) scrapes it, Triton
and the trainer's metrics every second; then each panel's PromQL goes through Prometheus'
HTTP API. A query that errors, or names a metric nobody exports, fails.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import start_http_server

from serving.trainer import metrics as trainer_metrics
from serving.trainer.cycle import CycleReport
from serving.trainer.versions import Version
from stream_app.devtools.devstack import ManagedProcess, free_port, http_ok
from stream_app.devtools.kafka_io import ensure_topics
from stream_app.devtools.probes import recommendations_after
from stream_app.devtools.replay import PlannedEvent, plan_events, produce_raw, replay
from stream_app.devtools.worker_process import WorkerProcess
from tests.integration.promql import metric_names
from tests.support import VAR, isolated, unique, wait_until

pytestmark = pytest.mark.integration

DASHBOARDS = Path("dashboards")


def load_builder():
    spec = importlib.util.spec_from_file_location("dashboards_build", DASHBOARDS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) for every target of every dashboard."""
    queries = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            queries += [(path.name, panel["title"], t["expr"]) for t in panel.get("targets", [])]
    return queries


def test_committed_dashboards_match_their_builder():
    rendered = load_builder().render()
    assert sorted(rendered) == sorted(p.name for p in DASHBOARDS.glob("*.json"))
    for name, text in rendered.items():
        assert (DASHBOARDS / name).read_text() == text, f"run `python dashboards/build.py` ({name})"


def test_dashboards_are_provisioning_ready():
    uids = set()
    for path in DASHBOARDS.glob("*.json"):
        board = json.loads(path.read_text())
        assert board["uid"] not in uids
        uids.add(board["uid"])
        (variable,) = board["templating"]["list"]
        assert (variable["name"], variable["type"]) == ("datasource", "datasource")
        for panel in board["panels"]:
            if panel["type"] == "row":  # a header: no query
                assert "targets" not in panel
                continue
            assert panel["datasource"]["uid"] == "${datasource}"
            assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])


def serve_trainer_metrics(port: int, repository: Path):
    """The trainer's own metrics (serving/trainer/metrics.py) after a promoted and a rejected
    cycle, served as `streamrec trainer` serves them. The cycles are reports, not runs: a
    real one trains for minutes and would load a version into the session's Triton."""
    live = Version(2, repository, "head-dash", {"trained_until_ts": time.time() - 600})
    trainer_metrics.watch_live(lambda: live)
    gate = {"candidate": {"ndcg@10": 0.31}, "live": {"ndcg@10": 0.29}, "events": 40}
    for verdict, seconds in (("promoted", 95.0), ("rejected", 30.0)):
        report = CycleReport(
            verdict, mode="warm", events=400, items=300, skipped={"malformed_json": 1}, gate=gate
        )
        trainer_metrics.record(report, seconds)
    server, _ = start_http_server(port, "127.0.0.1", registry=trainer_metrics.REGISTRY)
    return server


@pytest.fixture(scope="module")
def prometheus(stack_settings, catalog, movielens):
    # Two arms and a shadow, all of the live version: the experiments dashboard has data.
    arms = [{"name": "a"}, {"name": "b", "diversity": 1.0}, {"name": "s", "shadow": True}]
    settings = isolated(stack_settings, "dash", experiment={"name": "dash", "arms": arms})
    name = unique("dash-run")  # Prometheus' directory, and this run's users
    ensure_topics(settings.kafka)
    workdir = VAR / name
    workdir.mkdir(parents=True)
    port = free_port()
    trainer_port = free_port()
    (workdir / "prometheus.yml").write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "streamrec-worker",
                        "static_configs": [{"targets": [f"127.0.0.1:{settings.worker.web_port}"]}],
                    },
                    {
                        "job_name": "streamrec-triton",
                        "static_configs": [
                            {"targets": [f"127.0.0.1:{settings.triton.metrics_port}"]}
                        ],
                    },
                    {
                        "job_name": "streamrec-trainer",
                        "static_configs": [{"targets": [f"127.0.0.1:{trainer_port}"]}],
                    },
                ],
            }
        )
    )
    base = f"http://127.0.0.1:{port}"
    server = ManagedProcess(
        "prometheus",
        [
            shutil.which("prometheus") or "prometheus",
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        workdir / "prometheus.log",
        probe=lambda: http_ok(f"{base}/-/ready"),
    )
    trainer = serve_trainer_metrics(trainer_port, workdir / "recommender")
    with WorkerProcess(settings, workdir / "worker.log"):
        server.start()
        server.wait_ready(30)
        events = [
            PlannedEvent(f"{name}-{e.user_id}", e.event_id, e.item_id, e.type)
            for e in list(plan_events(movielens.ratings, run_id=name))[:400]
        ]
        replay(settings.kafka, events, progress=False)
        produce_raw(settings.kafka, settings.kafka.interactions_topic, [(b"x", b"{oops")])
        upsert = {"item_id": unique("dash-item"), "title": "New", "text": "A new film"}
        produce_raw(
            settings.kafka, settings.kafka.items_topic, [(None, json.dumps(upsert).encode())]
        )
        user = unique("dash-user")
        shown = recommendations_after(settings.kafka, PlannedEvent(user, unique("e"), "1", "click"))
        top = shown["items"][0]["item_id"]
        recommendations_after(settings.kafka, PlannedEvent(user, unique("e"), top, "click"))
        # Enough scrapes after the traffic for rate() over a minute to have two points.
        assert wait_until(lambda: query(base, "streamrec_quality_hits_total") != [], 30)
        time.sleep(3)
        yield base
        server.stop()
    trainer.shutdown()


def query(base: str, expr: str) -> list:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_every_panel_query_runs_and_names_only_exported_metrics(prometheus):
    builder = load_builder()
    gpu_only = builder.GPU_ONLY
    with urllib.request.urlopen(f"{prometheus}/api/v1/label/__name__/values", timeout=10) as r:
        known = set(json.loads(r.read())["data"])
    missing, empty = [], []
    for board, title, expr in panel_queries():
        result = query(prometheus, expr.replace("$__rate_interval", "1m"))
        unknown = metric_names(expr) - known - gpu_only
        if unknown:
            missing.append((board, title, sorted(unknown)))
        if not result:
            empty.append((board, title))
    assert missing == []
    # Some panels are empty by nature here (no GPU; no degraded list in a healthy run);
    # most must show data after this traffic.
    print(f"{len(panel_queries()) - len(empty)} of {len(panel_queries())} queries returned data")
    assert len(empty) <= len(panel_queries()) // 4, empty
    training = {spec[0] for spec in builder.TRAINING if not isinstance(spec, builder.Row)}
    assert not [e for e in empty if e[1] in training], "the trainer's metrics were scraped"

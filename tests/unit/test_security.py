"""Security settings: each client's options, secret files, and secrets kept out of sight."""

import ssl

import faust
import pytest

from stream_app.core.client_options import confluent_security, redis_options
from stream_app.core.errors import ConfigError
from stream_app.core.settings import Settings, load_settings
from stream_app.worker.connections import faust_credentials
from stream_app.worker.metrics import exposition

SECRET = "correct-horse-battery-staple"


def sasl_settings(**kafka) -> Settings:
    return Settings(
        kafka={
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "streamrec",
            "sasl_password": SECRET,
            **kafka,
        }
    )


def test_sasl_ssl_reaches_both_kafka_clients():
    kafka = sasl_settings().kafka
    assert confluent_security(kafka) == {
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "streamrec",
        "sasl.password": SECRET,
    }
    credentials = faust_credentials(kafka)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL"
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert credentials.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert credentials.ssl_context.check_hostname


def test_plaintext_is_the_local_default_and_needs_no_credentials():
    kafka = Settings().kafka
    assert faust_credentials(kafka) is None
    assert confluent_security(kafka) == {"security.protocol": "plaintext"}


def test_tls_files_must_exist_and_pair_up(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    kafka = Settings(kafka={"security_protocol": "SSL", "ssl_ca_file": str(ca)}).kafka
    assert confluent_security(kafka)["ssl.ca.location"] == str(ca)
    with pytest.raises(ValueError, match="ssl_ca_file: no file at /nope"):
        Settings(kafka={"security_protocol": "SSL", "ssl_ca_file": "/nope"})
    with pytest.raises(ValueError, match="go together"):
        Settings(kafka={"ssl_cert_file": str(ca)})


def test_sasl_without_credentials_fails_at_start_up_naming_the_setting(monkeypatch):
    monkeypatch.setenv("STREAMREC_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    with pytest.raises(ConfigError, match="STREAMREC_KAFKA.*needs sasl_username and sasl_password"):
        load_settings()


def test_secrets_can_come_from_mounted_files(monkeypatch, tmp_path):
    for name, value in [("redis", SECRET), ("kafka", "kafka-pw"), ("key", "hmac-key")]:
        (tmp_path / name).write_text(value + "\n")
    monkeypatch.setenv("STREAMREC_REDIS__USERNAME", "streamrec")
    monkeypatch.setenv("STREAMREC_REDIS__PASSWORD_FILE", str(tmp_path / "redis"))
    monkeypatch.setenv("STREAMREC_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("STREAMREC_KAFKA__SASL_USERNAME", "streamrec")
    monkeypatch.setenv("STREAMREC_KAFKA__SASL_PASSWORD_FILE", str(tmp_path / "kafka"))
    monkeypatch.setenv("STREAMREC_PRIVACY__USER_ID_KEY_FILE", str(tmp_path / "key"))
    settings = load_settings()
    assert redis_options(settings.redis) == {
        "socket_timeout": settings.redis.timeout_s,
        "username": "streamrec",
        "password": SECRET,
    }
    assert settings.kafka.sasl_password.get_secret_value() == "kafka-pw"
    assert settings.privacy.user_id_key.get_secret_value() == "hmac-key"


def test_an_unreadable_secret_file_names_the_setting(monkeypatch):
    monkeypatch.setenv("STREAMREC_REDIS__PASSWORD_FILE", "/run/secrets/missing")
    with pytest.raises(ConfigError, match="STREAMREC_REDIS.*password_file: cannot read"):
        load_settings()


def test_secrets_stay_out_of_reprs_errors_and_metrics(monkeypatch):
    monkeypatch.setenv("STREAMREC_REDIS__PASSWORD", SECRET)
    monkeypatch.setenv("STREAMREC_PRIVACY__USER_ID_KEY", SECRET)
    assert SECRET not in repr(load_settings())
    monkeypatch.setenv("STREAMREC_REDIS__TIMEOUT_S", "soon")  # an error in the same group
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "STREAMREC_REDIS__TIMEOUT_S" in str(caught.value)
    assert SECRET not in str(caught.value)
    assert SECRET.encode() not in exposition()

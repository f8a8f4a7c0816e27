import pytest

from stream_app.core.errors import ConfigError
from stream_app.core.settings import load_settings


def test_nested_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("STREAMREC_KAFKA__BOOTSTRAP", "broker:9093")
    monkeypatch.setenv("STREAMREC_WORKER__TOP_K", "20")
    settings = load_settings()
    assert settings.kafka.bootstrap == "broker:9093"
    assert settings.worker.top_k == 20


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STREAMREC_WORKER__TOP_K", "0"),
        ("STREAMREC_KAFKA__BOOTSTRAPP", "x"),
        ("STREAMREC_LOG_LEVEL", "LOUD"),
    ],
)
def test_bad_configuration_names_the_setting(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert name in str(caught.value)


def test_secrets_are_not_printed(monkeypatch):
    monkeypatch.setenv("STREAMREC_REDIS__PASSWORD", "hunter2")
    assert "hunter2" not in repr(load_settings())

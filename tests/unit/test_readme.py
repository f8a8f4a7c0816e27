from pathlib import Path

from stream_app.core.settings import settings_table


def test_readme_configuration_table_is_generated_from_settings():
    readme = Path(__file__).parents[2] / "README.md"
    assert settings_table() in readme.read_text()


def test_readme_names_every_metric_the_worker_exports():
    from stream_app.worker.metrics import REGISTRY

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    names = [f.name + ("_total" if f.type == "counter" else "") for f in REGISTRY.collect()]
    assert [n for n in names if f"`{n}" not in readme] == []

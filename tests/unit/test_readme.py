from pathlib import Path

from stream_app.config import settings_table


def test_readme_configuration_table_is_generated_from_settings():
    readme = Path(__file__).parents[2] / "README.md"
    assert settings_table() in readme.read_text()

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from shared.config import ENV_FILE, Settings, local_values, settings_docs
from shared.errors import ConfigError
from shared.security.secrets import SECRET_DOCS

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_without_any_environment() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.max_audio_bytes == 10_000_000
    assert settings.max_audio_seconds == 120
    assert (settings.whisper_model, settings.whisper_compute_type) == ("base", "int8")
    assert settings.language_list == ("fi", "en")
    assert (settings.llm_max_tokens, settings.llm_temperature) == (120, 0.7)


def test_values_are_parsed_to_their_types() -> None:
    settings = Settings.from_env(
        {"MAX_AUDIO_BYTES": " 2048 ", "LLM_TEMPERATURE": "0.2", "WHISPER_LANGUAGE": "fi"}
    )
    assert settings.max_audio_bytes == 2048
    assert settings.llm_temperature == 0.2
    assert settings.whisper_language == "fi"


def test_an_empty_value_means_the_default() -> None:
    settings = Settings.from_env({"SYSTEM_PROMPT": "", "LLM_PROVIDER": " ", "MAX_AUDIO_BYTES": ""})
    assert settings == Settings()


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"MAX_AUDIO_BYTES": "ten"}, "MAX_AUDIO_BYTES must be a whole number, got 'ten'"),
        ({"MAX_AUDIO_SECONDS": "0"}, "MAX_AUDIO_SECONDS must be greater than 0"),
        ({"LLM_TEMPERATURE": "3"}, "LLM_TEMPERATURE must be between 0 and 2"),
        ({"MP3_BITRATE_KBPS": "1000"}, "MP3_BITRATE_KBPS must be between 8 and 320"),
        ({"REPLY_MAX_SENTENCES": "0"}, "REPLY_MAX_SENTENCES must be at least 1"),
    ],
)
def test_bad_values_say_which_setting(env: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(env)
    assert str(raised.value) == says


def test_dotenv_overrides_local_settings_json(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(ENV_FILE)
    (tmp_path / "local.settings.json").write_text(
        json.dumps({"IsEncrypted": False, "Values": {"LLM_MAX_TOKENS": "50", "LOG_LEVEL": "DEBUG"}})
    )
    (tmp_path / ".env").write_text("LLM_MAX_TOKENS=60\n")
    assert local_values(tmp_path) == {"LLM_MAX_TOKENS": "60", "LOG_LEVEL": "DEBUG"}


def test_broken_local_settings_json_is_a_config_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(ENV_FILE)
    (tmp_path / "local.settings.json").write_text("{ not json")
    with pytest.raises(ConfigError, match=r"local\.settings\.json"):
        local_values(tmp_path)


def _readme_settings() -> dict[str, str]:
    """Setting name -> default, from the configuration table in docs/configuration.md."""
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    text = text.split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([A-Za-z][A-Za-z0-9_]+)` \| ([^|]*) \|", text, flags=re.MULTILINE)
    return {name: default.strip().strip("`") for name, default in rows}


def test_readme_documents_every_setting_with_its_default() -> None:
    documented = _readme_settings()
    docs = settings_docs()
    assert set(documented) == set(docs) | set(SECRET_DOCS)
    assert all(documented[name] == "(secret)" for name in SECRET_DOCS)
    for name, (default, _) in docs.items():
        if name == "SYSTEM_PROMPT":
            assert documented[name].startswith("a warm")
        else:
            shown = f"{default:g}" if isinstance(default, float) else str(default)
            assert documented[name] in (shown, "(empty)" if default == "" else shown), name

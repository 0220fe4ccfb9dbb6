"""Settings in sections: variable names, lists, aliases, every problem at once, the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.config import BotSettings
from inference.backends import create_backend
from inference.settings import (
    InferenceSettings,
    InvalidSettings,
    ModelsLabSettings,
    SettingsBase,
    env_names,
    private_urls_allowed,
)

ROOT = Path(__file__).resolve().parent.parent
COMPOSITES: list[type[SettingsBase]] = [BotSettings, InferenceSettings]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    for composite in COMPOSITES:
        for names in env_names(composite).values():
            for name in names:
                monkeypatch.delenv(name, raising=False)


def readme_settings_table() -> set[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row)}


def test_every_variable_is_in_the_readmes_settings_table() -> None:
    declared = {n for c in COMPOSITES for names in env_names(c).values() for n in names}
    assert len(declared) > 30
    assert declared - readme_settings_table() == set()


def test_the_contracts_names_are_read_where_they_belong(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "DISCORD_TOKEN": "tok",
        "DISCORD_API_BASE": "http://proxy.test/api/v10",
        "DISCORD_DEV_GUILD": "42",
        "IMG2IMG_DATABASE": "db/x.sqlite3",
        "IMG2IMG_MAX_PENDING_PER_USER": "7",
        "IMG2IMG_DAILY_QUOTA_GUILD": "9",
        "IMG2IMG_SHUTDOWN_GRACE": "5",
        "IMG2IMG_MODELS": "m.toml",
        "IMG2IMG_NSFW_THRESHOLD": "0.3",
        "IMG2IMG_ALLOW_PRIVATE_URLS": "true",
        "IMG2IMG_DEVICE": "cpu",
        "MODELSLAB_JOB_TIMEOUT": "12",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    bot, inference = BotSettings.from_env(), InferenceSettings.from_env()
    assert bot.discord.token is not None and bot.discord.token.get_secret_value() == "tok"
    assert bot.discord.api_base == "http://proxy.test/api/v10" and bot.discord.dev_guild == 42
    assert bot.store.database == Path("db/x.sqlite3") and bot.shutdown_grace == 5
    assert (bot.limits.max_pending_per_user, bot.limits.daily_quota_guild) == (7, 9)
    assert inference.models_file == Path("m.toml") and inference.nsfw_threshold == 0.3
    assert inference.ingest.allow_private_urls and private_urls_allowed()
    assert inference.local.device == "cpu" and inference.modelslab.job_timeout == 12


@pytest.mark.parametrize("suffix", ["", "S"])
def test_keys_and_origins_are_comma_separated_lists_under_either_name(
    monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    monkeypatch.setenv(f"MODELSLAB_API_KEY{suffix}", "sk-1, sk-2,,")
    monkeypatch.setenv(f"MODELSLAB_BASE_URL{suffix}", "http://a.test,http://b.test")
    lab = ModelsLabSettings()
    assert [key.get_secret_value() for key in lab.api_keys] == ["sk-1", "sk-2"]
    assert lab.base_urls == ["http://a.test", "http://b.test"]
    assert "sk-1" not in repr(lab)


def test_defaults_need_no_environment() -> None:
    lab = InferenceSettings.from_env().modelslab
    assert lab.api_keys == [] and lab.base_urls == ["https://modelslab.com"]
    assert BotSettings.from_env().discord.token is None


def test_every_invalid_variable_of_every_section_is_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {
        "IMG2IMG_BACKEND": "gpu",  # the top level
        "IMG2IMG_BATCH_SIZE": "many",  # local
        "IMG2IMG_FETCH_TIMEOUT": "-1",  # ingest
        "MODELSLAB_BASE_URL": " , ",  # modelslab: no origin left
    }.items():
        monkeypatch.setenv(name, value)
    reading = InferenceSettings.read_env()
    assert [p.split(":")[1].strip() for p in reading.problems] == [
        "IMG2IMG_FETCH_TIMEOUT",
        "IMG2IMG_BATCH_SIZE",
        "MODELSLAB_BASE_URL",
        "IMG2IMG_BACKEND",
    ]
    assert reading.invalid == {"", "ingest", "local", "modelslab"}
    assert reading.settings.local.batch_size == 4  # invalid parts hold their defaults
    with pytest.raises(InvalidSettings) as raised:
        InferenceSettings.from_env()
    assert raised.value.problems == reading.problems


def test_discord_urls_must_be_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_API_BASE", "discord.com/api/v10")
    monkeypatch.setenv("DISCORD_GATEWAY_URL", "https://gateway.test")
    reading = BotSettings.read_env()
    assert [p.split(":")[1].strip() for p in reading.problems] == [
        "DISCORD_API_BASE",
        "DISCORD_GATEWAY_URL",
    ]
    assert reading.valid("limits", "store", "") and not reading.valid("discord")


class _Detector:
    name = "given"
    default_threshold = 0.25

    def scores(self, images: object) -> list[float]:
        return []


async def test_the_backend_gets_the_detector_it_is_given() -> None:
    settings = InferenceSettings(modelslab=ModelsLabSettings(api_keys="sk-1"))
    detector = _Detector()
    backend = create_backend(settings, "modelslab", detector=detector)
    try:
        assert backend._detector is detector  # type: ignore[attr-defined]
        assert backend._threshold == 0.25  # type: ignore[attr-defined]
    finally:
        await backend.aclose()

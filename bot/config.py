"""Settings of the Discord side (CONTRACT section 6): token, proxies, database, limits, quotas."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["BotSettings"]


def _env(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())


class BotSettings(BaseSettings):
    """Everything `bot` and `cogs` read from the environment (and `.env`)."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    discord_token: SecretStr | None = Field(None, validation_alias=_env("DISCORD_TOKEN"))
    discord_api_base: str = Field(
        "https://discord.com/api/v10", validation_alias=_env("DISCORD_API_BASE")
    )
    discord_gateway_url: str | None = Field(None, validation_alias=_env("DISCORD_GATEWAY_URL"))
    dev_guild_id: int | None = Field(None, validation_alias=_env("DISCORD_DEV_GUILD"))
    database: Path = Field(Path("data/img2img.sqlite3"), validation_alias=_env("IMG2IMG_DATABASE"))
    max_pending_per_user: int = Field(
        3, ge=1, validation_alias=_env("IMG2IMG_MAX_PENDING_PER_USER")
    )
    max_pending_total: int = Field(100, ge=1, validation_alias=_env("IMG2IMG_MAX_PENDING_TOTAL"))
    daily_quota_user: int = Field(
        100, ge=0, validation_alias=_env("IMG2IMG_DAILY_QUOTA_USER"), description="0: unlimited"
    )
    daily_quota_guild: int = Field(
        0, ge=0, validation_alias=_env("IMG2IMG_DAILY_QUOTA_GUILD"), description="0: unlimited"
    )
    retention_days: int = Field(30, ge=1, validation_alias=_env("IMG2IMG_RETENTION_DAYS"))
    shutdown_grace: float = Field(30.0, ge=0, validation_alias=_env("IMG2IMG_SHUTDOWN_GRACE"))
    progress_interval: float = Field(1.5, gt=0, validation_alias=_env("IMG2IMG_PROGRESS_INTERVAL"))

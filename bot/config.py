"""Settings of the Discord side, in sections: Discord itself, queue limits, the job store."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from inference.settings import SettingsBase

__all__ = ["BotSettings", "DeliverySettings", "DiscordSettings", "LimitSettings", "StoreSettings"]


class DiscordSettings(SettingsBase):
    """The token, and where REST and gateway traffic go (proxies, a test server)."""

    model_config = SettingsConfigDict(env_prefix="DISCORD_")

    token: SecretStr | None = None
    api_base: str = Field("https://discord.com/api/v10", pattern=r"^https?://")
    gateway_url: str | None = Field(None, pattern=r"^wss?://")
    dev_guild: int | None = None  # sync commands to this server only (instant, for trying out)
    shard_count: int | None = Field(None, ge=1)  # gateway shards (None: Discord's recommendation)


class LimitSettings(SettingsBase):
    """Jobs waiting or running, and images per UTC day (0: unlimited)."""

    model_config = SettingsConfigDict(env_prefix="IMG2IMG_")

    max_pending_per_user: int = Field(3, ge=1)
    max_pending_total: int = Field(100, ge=1)
    daily_quota_user: int = Field(100, ge=0)
    daily_quota_guild: int = Field(0, ge=0)


class StoreSettings(SettingsBase):
    """The SQLite job store and how long its records are kept."""

    model_config = SettingsConfigDict(env_prefix="IMG2IMG_")

    database: Path = Path("data/img2img.sqlite3")
    retention_days: int = Field(30, ge=1)


class DeliverySettings(SettingsBase):
    """Posting results while Discord fails: transient errors (5xx, 429, timeouts, resets) are
    retried after `retry_first` seconds, doubling up to `retry_cap`; the interaction's response
    is edited while its token lives (`token_lifetime` seconds, under Discord's 15 minutes),
    then a channel message is sent instead."""

    model_config = SettingsConfigDict(env_prefix="IMG2IMG_DELIVERY_")

    retry_first: float = Field(1.0, gt=0)
    retry_cap: float = Field(60.0, gt=0)
    token_lifetime: float = Field(15 * 60 - 30, gt=0, le=15 * 60)


class BotSettings(SettingsBase):
    """Everything `bot` and `cogs` read from the environment (and `.env`)."""

    model_config = SettingsConfigDict(env_prefix="IMG2IMG_")

    discord: DiscordSettings = Field(default_factory=DiscordSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    shutdown_grace: float = Field(30.0, ge=0)
    progress_interval: float = Field(1.5, gt=0)

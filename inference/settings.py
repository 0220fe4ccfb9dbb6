"""Settings that `inference` reads from the environment (and `.env`); see CONTRACT section 6."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["InferenceSettings", "private_urls_allowed"]


def _env(name: str) -> AliasChoices:
    return AliasChoices(name, name.lower())


class InferenceSettings(BaseSettings):
    """Everything the backends, image ingest and safety need; names match the environment."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    backend: Literal["local", "modelslab"] = Field(
        "local", validation_alias=_env("IMG2IMG_BACKEND")
    )
    models_file: Path = Field(Path("models.toml"), validation_alias=_env("IMG2IMG_MODELS"))
    nsfw_threshold: float | None = Field(
        None, ge=0.0, le=1.0, validation_alias=_env("IMG2IMG_NSFW_THRESHOLD")
    )
    allow_private_urls: bool = Field(False, validation_alias=_env("IMG2IMG_ALLOW_PRIVATE_URLS"))
    max_image_bytes: int = Field(
        25 * 1024 * 1024, ge=1024, validation_alias=_env("IMG2IMG_MAX_IMAGE_BYTES")
    )
    fetch_timeout: float = Field(20.0, gt=0, validation_alias=_env("IMG2IMG_FETCH_TIMEOUT"))

    modelslab_api_key: SecretStr | None = Field(None, validation_alias=_env("MODELSLAB_API_KEY"))
    modelslab_base_url: str = Field(
        "https://modelslab.com", validation_alias=_env("MODELSLAB_BASE_URL")
    )
    modelslab_request_timeout: float = Field(
        30.0, gt=0, validation_alias=_env("MODELSLAB_REQUEST_TIMEOUT")
    )
    modelslab_job_timeout: float = Field(
        300.0, gt=0, validation_alias=_env("MODELSLAB_JOB_TIMEOUT")
    )


def private_urls_allowed() -> bool:
    """Read `IMG2IMG_ALLOW_PRIVATE_URLS` now (tests and operators may change it at run time)."""
    return InferenceSettings().allow_private_urls

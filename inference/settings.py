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

    # The local (diffusers) backend.
    device: Literal["auto", "cuda", "cpu"] = Field("auto", validation_alias=_env("IMG2IMG_DEVICE"))
    batch_size: int = Field(4, ge=1, le=64, validation_alias=_env("IMG2IMG_BATCH_SIZE"))
    pipeline_cache: int = Field(2, ge=1, le=16, validation_alias=_env("IMG2IMG_PIPELINE_CACHE"))
    prompt_model: str | None = Field(None, validation_alias=_env("IMG2IMG_PROMPT_MODEL"))
    tomesd_ratio: float = Field(0.5, ge=0.0, le=0.75, validation_alias=_env("IMG2IMG_TOMESD_RATIO"))
    tomesd_max_downsample: int = Field(
        1, ge=1, le=8, validation_alias=_env("IMG2IMG_TOMESD_MAX_DOWNSAMPLE")
    )

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
    modelslab_img2img_path: str = Field(
        "/api/v1/enterprise/pony/img2img", validation_alias=_env("MODELSLAB_IMG2IMG_PATH")
    )
    # None: derived from the img2img path. "{id}" in it is replaced by the job's id.
    modelslab_fetch_path: str | None = Field(None, validation_alias=_env("MODELSLAB_FETCH_PATH"))
    # Optional spreading: comma-separated keys and/or origins, used round-robin.
    modelslab_api_keys: SecretStr | None = Field(None, validation_alias=_env("MODELSLAB_API_KEYS"))
    modelslab_base_urls: str | None = Field(None, validation_alias=_env("MODELSLAB_BASE_URLS"))
    modelslab_max_in_flight: int = Field(
        5, ge=1, le=1000, validation_alias=_env("MODELSLAB_MAX_IN_FLIGHT")
    )
    modelslab_max_retries: int = Field(
        4, ge=0, le=20, validation_alias=_env("MODELSLAB_MAX_RETRIES")
    )
    # Webhook receiver, off unless MODELSLAB_WEBHOOK_LISTEN ("host:port") is set.
    modelslab_webhook_listen: str | None = Field(
        None, validation_alias=_env("MODELSLAB_WEBHOOK_LISTEN")
    )
    modelslab_webhook_public_url: str | None = Field(
        None, validation_alias=_env("MODELSLAB_WEBHOOK_PUBLIC_URL")
    )


def private_urls_allowed() -> bool:
    """Read `IMG2IMG_ALLOW_PRIVATE_URLS` now (tests and operators may change it at run time)."""
    return InferenceSettings().allow_private_urls

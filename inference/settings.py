"""Settings read from the environment (and `.env`), in sections on one shared base.

Each section is a `SettingsBase` with its own `env_prefix`: a field's variable is the prefix plus
its name in capitals (`ModelsLabSettings.request_timeout` is `MODELSLAB_REQUEST_TIMEOUT`), unless
`_env` names it (a name that does not follow the prefix, or a second accepted name). A composite
(`InferenceSettings`, and the bot's `BotSettings`) holds its sections as fields. `from_env` reads
every section and reports every invalid variable at once. The README's settings table lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, Self, TypeVar, cast
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = [
    "CommaList",
    "EnvReading",
    "InferenceSettings",
    "IngestSettings",
    "InvalidSettings",
    "LocalSettings",
    "ModelsLabSettings",
    "QueueSettings",
    "SecretList",
    "ServerSettings",
    "SettingsBase",
    "env_names",
    "private_urls_allowed",
]


def _env(*names: str) -> AliasChoices:
    """The variable(s) a field reads instead of prefix + name: the documented name first."""
    return AliasChoices(*names)


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split_commas)]
"""A list given as comma-separated text in the environment (`a,b, c`)."""
SecretList = Annotated[list[SecretStr], NoDecode, BeforeValidator(_split_commas)]


class InvalidSettings(ValueError):
    """Some variables are invalid; `problems` has one "invalid settings: NAME: why" per error."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class SettingsBase(BaseSettings):
    """The shared base: `.env` read, unknown variables ignored, fields settable by name."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    @classmethod
    def sections(cls) -> dict[str, type[SettingsBase]]:
        """The fields that are sections of their own, by field name."""
        return {
            name: field.annotation
            for name, field in cls.model_fields.items()
            if isinstance(field.annotation, type) and issubclass(field.annotation, SettingsBase)
        }

    @classmethod
    def read_env(cls) -> EnvReading[Self]:
        """Read every section, then the rest, collecting every invalid variable."""
        problems: list[str] = []
        invalid: set[str] = set()
        built: dict[str, Any] = {}
        for name, section in cls.sections().items():
            try:
                built[name] = section()
            except ValidationError as exc:
                problems += _describe(exc, section)
                invalid.add(name)
                built[name] = section.model_construct()  # defaults; the rest is still checked
        try:
            settings = cls(**built)
        except ValidationError as exc:
            problems += _describe(exc, cls)
            invalid.add("")
            settings = cast(Self, cls.model_construct(**built))
        return EnvReading(settings, problems, frozenset(invalid))

    @classmethod
    def from_env(cls) -> Self:
        """The settings; `InvalidSettings` lists every invalid variable."""
        reading = cls.read_env()
        if reading.problems:
            raise InvalidSettings(reading.problems)
        return reading.settings


S = TypeVar("S", bound=SettingsBase)


@dataclass(frozen=True)
class EnvReading(Generic[S]):
    """Settings as read, invalid parts replaced by their defaults, and what was invalid."""

    settings: S
    problems: list[str]
    invalid: frozenset[str]  # names of the invalid sections; "" for the top level's own fields

    def valid(self, *parts: str) -> bool:
        """Whether these sections ("" for the top level) were read without a problem."""
        return self.invalid.isdisjoint(parts)


def env_names(cls: type[SettingsBase]) -> dict[str, tuple[str, ...]]:
    """Each plain field's variable names (documented name first), sections' fields included."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    sections = cls.sections()
    names: dict[str, tuple[str, ...]] = {}
    for name, field in cls.model_fields.items():
        if name in sections:
            names |= {f"{name}.{k}": v for k, v in env_names(sections[name]).items()}
        elif isinstance(field.validation_alias, AliasChoices):
            names[name] = tuple(str(choice) for choice in field.validation_alias.choices)
        else:
            names[name] = ((prefix + name).upper(),)
    return names


def _describe(exc: ValidationError, cls: type[SettingsBase]) -> list[str]:
    """One line per error, naming the variable rather than the field."""
    by_key = {key.lower(): names[0] for key, names in env_names(cls).items()}
    by_key |= {alias.lower(): names[0] for names in env_names(cls).values() for alias in names}
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        key = str(error["loc"][0]) if error["loc"] else ""
        lines.append(f"invalid settings: {by_key.get(key.lower(), key)}: {error['msg']}")
    return lines


class IngestSettings(SettingsBase):
    """Images that users give: size, time and address limits."""

    model_config = SettingsConfigDict(env_prefix="IMG2IMG_")

    allow_private_urls: bool = False
    max_image_bytes: int = Field(25 * 1024 * 1024, ge=1024)
    # inference.images.DEFAULT_MAX_PIXELS (not imported: the images package imports settings)
    max_image_pixels: int = Field(4096 * 4096, ge=64 * 64)
    fetch_timeout: float = Field(20.0, gt=0)


class LocalSettings(SettingsBase):
    """The local (diffusers) backend's GPU knobs."""

    model_config = SettingsConfigDict(env_prefix="IMG2IMG_")

    device: Literal["auto", "cuda", "cpu"] = "auto"
    batch_size: int = Field(4, ge=1, le=64)
    pipeline_cache: int = Field(2, ge=1, le=16)
    prompt_model: str | None = None
    preview_interval: float = Field(2.0, ge=0, le=3600)
    """Seconds between live previews of a running job (inference.local.preview); 0: none."""


class ModelsLabSettings(SettingsBase):
    """The ModelsLab backend: keys and origins (several are used round-robin), paths, bounds."""

    model_config = SettingsConfigDict(env_prefix="MODELSLAB_")

    api_keys: SecretList = Field(
        default_factory=list, validation_alias=_env("MODELSLAB_API_KEY", "MODELSLAB_API_KEYS")
    )
    base_urls: CommaList = Field(
        default_factory=lambda: ["https://modelslab.com"],
        min_length=1,
        validation_alias=_env("MODELSLAB_BASE_URL", "MODELSLAB_BASE_URLS"),
    )
    request_timeout: float = Field(30.0, gt=0)
    job_timeout: float = Field(300.0, gt=0)
    img2img_path: str = "/api/v1/enterprise/pony/img2img"
    fetch_path: str | None = None  # None: derived from the img2img path; "{id}": the job's id
    max_in_flight: int = Field(5, ge=1, le=1000)
    max_retries: int = Field(4, ge=0, le=20)
    webhook_listen: str | None = None  # "host:port" of the webhook receiver; unset: off
    webhook_public_url: str | None = None


class QueueSettings(SettingsBase):
    """Where jobs go: in-process (`local`) or to GPU worker processes through Redis."""

    model_config = SettingsConfigDict(env_prefix="IMG2IMG_")

    url: SecretStr = Field(SecretStr("local"), validation_alias=_env("IMG2IMG_QUEUE"))
    """`local`, or `redis://[:password@]host:port/db` / `rediss://…` (secret: it may hold a
    password)."""
    worker_lease: float = Field(30.0, gt=0, le=3600)
    queue_backoff: float = Field(5.0, gt=0, le=300)  # longest wait between tries to reach Redis
    shutdown_grace: float = Field(30.0, ge=0, validation_alias=_env("IMG2IMG_SHUTDOWN_GRACE"))

    @field_validator("url", mode="after")
    @classmethod
    def _local_or_redis_url(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value().strip()
        if text.lower() in ("", "local"):
            return SecretStr("local")
        parts = urlsplit(text)
        try:
            parts.port  # noqa: B018  (raises on a port that is not a number)
            database = parts.path.strip("/")
            if parts.scheme not in ("redis", "rediss") or not parts.hostname:
                raise ValueError
            if database and not database.isdigit():
                raise ValueError
        except ValueError:
            raise ValueError(
                "must be `local` or a Redis URL: redis://[:password@]host:port/db "
                "(rediss://… for TLS), e.g. redis://localhost:6379/0"
            ) from None
        return SecretStr(text)

    @property
    def redis_url(self) -> str | None:
        """The Redis URL when jobs go to workers; None for the in-process queue."""
        text = self.url.get_secret_value()
        return None if text == "local" else text


class ServerSettings(SettingsBase):
    """`python -m inference serve`: the ModelsLab-compatible API's keys, links and limits."""

    model_config = SettingsConfigDict(env_prefix="IMG2IMG_SERVER_")

    keys: SecretList = Field(default_factory=list)
    """API keys clients must send (secret); `serve` refuses to start without one."""
    public_url: str | None = None  # None: http://HOST:PORT of the listening socket
    output_ttl: float = Field(86_400.0, gt=0)
    max_in_flight: int = Field(10, ge=1, le=10_000)  # jobs one key may have waiting or running
    max_body_bytes: int = Field(40 * 1024 * 1024, ge=1024)
    wait: float = Field(5.0, ge=0, le=300)  # seconds a generate call waits before `processing`
    read_timeout: float = Field(30.0, gt=0, le=3600)
    """Seconds a client has to send its whole request body (then 408 and the connection closed)."""
    output_memory: int = Field(2 * 1024**3, ge=1024 * 1024)
    """Bytes of output files kept in memory; past it the oldest finished jobs expire early."""

    @field_validator("public_url", mode="after")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
            raise ValueError("must be an http(s) base URL such as https://img.example.com")
        return value.strip().rstrip("/")


class InferenceSettings(SettingsBase):
    """Everything the backends, image ingest and safety need."""

    model_config = SettingsConfigDict(env_prefix="IMG2IMG_")

    backend: Literal["local", "modelslab"] = "local"
    models_file: Path = Field(Path("models.toml"), validation_alias=_env("IMG2IMG_MODELS"))
    nsfw_threshold: float | None = Field(None, ge=0.0, le=1.0)
    metrics_port: int | None = Field(None, ge=1, le=65535)
    """Serve `/metrics` and `/healthz` on this port (bot, worker); None: off."""
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    local: LocalSettings = Field(default_factory=LocalSettings)
    modelslab: ModelsLabSettings = Field(default_factory=ModelsLabSettings)
    # `remote`, not `queue`: a section named `queue` would also read IMG2IMG_QUEUE as JSON
    remote: QueueSettings = Field(default_factory=QueueSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)


def private_urls_allowed() -> bool:
    """Read `IMG2IMG_ALLOW_PRIVATE_URLS` now (tests and operators may change it at run time)."""
    return IngestSettings().allow_private_urls

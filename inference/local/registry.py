"""The models file's entries (docs/reference.md §7), checked: what the local backend serves.

Each entry has a `source`: a hub id, a local diffusers folder, or a single `.safetensors` file.
Relative paths are resolved against the models file's folder (then the working directory). A single
file needs a local diffusers folder with the model's configs (`config = "path"`) to load offline.
The architecture ("sd" for SD 1.x/2.x, "sdxl" for SDXL and Pony) is read from the files or given as
`arch`. `inference.models_file` reads the file. Pure Python: this module never imports torch.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from inference.errors import InvalidRequest
from inference.local.tome import TOME_KEYS, ToMeOptions, parse_tome_options
from inference.models_file import ModelsFile, ModelsFileError, read_models_file
from inference.request import Img2ImgRequest

__all__ = [
    "Arch",
    "LoraEntry",
    "ModelEntry",
    "ModelRegistry",
    "ModelsFileError",
    "Selection",
    "Source",
    "VaeEntry",
    "detect_arch",
    "safetensors_keys",
]

Arch = Literal["sd", "sdxl"]
SourceKind = Literal["hub", "folder", "file"]

_ARCHES: tuple[str, ...] = ("sd", "sdxl")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_KEYS = {
    "models": {"source", "arch", "config", "preview_vae", *TOME_KEYS},
    "vaes": {"source", "config", "subfolder"},
    "loras": {"source", "arch", "weight_name"},
}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class Source:
    """Where weights come from: a hub id, or an absolute folder or file path."""

    location: str
    kind: SourceKind
    config: str | None = None  # a local diffusers folder (or hub id) with the configs
    subfolder: str | None = None

    @property
    def path(self) -> Path:
        return Path(self.location)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    source: Source
    arch: Arch | None  # None: a hub id whose architecture is read when it loads
    tome: ToMeOptions = field(default_factory=ToMeOptions)  # see `inference.local.tome`
    preview_vae: Source | None = None  # an AutoencoderTiny for live previews (None: projection)


@dataclass(frozen=True)
class VaeEntry:
    name: str
    source: Source


@dataclass(frozen=True)
class LoraEntry:
    name: str
    source: Source
    arch: Arch | None = None
    weight_name: str | None = None


@dataclass(frozen=True)
class Selection:
    """The registry entries one request names: its model, VAE (None: the model's own), LoRAs."""

    model: ModelEntry
    vae: VaeEntry | None
    loras: tuple[tuple[LoraEntry, float], ...]


class ModelRegistry:
    """The models file, parsed and checked; looks up the names that requests use."""

    def __init__(
        self,
        models: Mapping[str, ModelEntry],
        *,
        default_model: str | None = None,
        vaes: Mapping[str, VaeEntry] | None = None,
        loras: Mapping[str, LoraEntry] | None = None,
    ) -> None:
        if not models:
            raise ModelsFileError("The models file defines no models: add a [models.NAME] table.")
        self.models = dict(models)
        self.vaes = dict(vaes or {})
        self.loras = dict(loras or {})
        self.default_model = default_model or next(iter(self.models))
        if self.default_model not in self.models:
            raise ModelsFileError(
                f"default_model {self.default_model!r} is not one of the models: "
                f"{', '.join(self.models)}"
            )

    @classmethod
    def load(cls, path: str | Path) -> ModelRegistry:
        """Read a models file; raise `ModelsFileError` saying what to fix."""
        return cls.from_file(read_models_file(path))

    @classmethod
    def from_file(cls, file: ModelsFile) -> ModelRegistry:
        """Check every entry of a read models file."""
        parse = _EntryParser(file.base_dir, file.origin)
        models = {n: parse.model(n, t) for n, t in file.models.items()}
        vaes = {n: parse.vae(n, t) for n, t in file.vaes.items()}
        loras = {n: parse.lora(n, t) for n, t in file.loras.items()}
        return cls(models, default_model=file.default_model, vaes=vaes, loras=loras)

    # -- lookups for requests --------------------------------------------------------------------

    def model(self, name: str | None) -> ModelEntry:
        chosen = name or self.default_model
        if chosen not in self.models:
            raise InvalidRequest(
                f"Unknown model_id {chosen!r}. Known models: {', '.join(sorted(self.models))}.",
                field="model_id",
            )
        return self.models[chosen]

    def vae(self, name: str | None) -> VaeEntry | None:
        if name is None:
            return None
        if name not in self.vaes:
            known = ", ".join(sorted(self.vaes)) or "none are configured"
            raise InvalidRequest(f"Unknown vae {name!r}. Known VAEs: {known}.", field="vae")
        return self.vaes[name]

    def lora(self, name: str) -> LoraEntry:
        if name not in self.loras:
            known = ", ".join(sorted(self.loras)) or "none are configured"
            raise InvalidRequest(
                f"Unknown lora_model {name!r}. Known LoRAs: {known}.", field="lora_model"
            )
        return self.loras[name]

    def select(self, request: Img2ImgRequest) -> Selection:
        """The entries `request` names; `InvalidRequest` listing the known names otherwise."""
        model = self.model(request.model_id)
        vae = self.vae(request.vae)
        loras = []
        for name, strength in zip(request.lora_names, request.lora_strengths, strict=True):
            lora = self.lora(name)
            if lora.arch and model.arch and lora.arch != model.arch:
                raise InvalidRequest(
                    f"LoRA {name!r} is for {lora.arch.upper()} models but {model.name!r} is "
                    f"{model.arch.upper()}: pick a matching model or LoRA.",
                    field="lora_model",
                )
            loras.append((lora, strength))
        return Selection(model=model, vae=vae, loras=tuple(loras))


class _EntryParser:
    def __init__(self, base_dir: Path, origin: str) -> None:
        self.base_dir = base_dir
        self.origin = origin

    def model(self, name: str, table: dict[str, Any]) -> ModelEntry:
        self._check_keys("models", name, table)
        source = self._source("models", name, table)
        arch = self._arch("models", name, table) or detect_arch(source)
        try:
            tome = parse_tome_options(table)
        except ValueError as exc:
            raise self._error("models", name, str(exc)) from None
        preview_vae = self._preview_vae(name, table.get("preview_vae"))
        return ModelEntry(name=name, source=source, arch=arch, tome=tome, preview_vae=preview_vae)

    def vae(self, name: str, table: dict[str, Any]) -> VaeEntry:
        self._check_keys("vaes", name, table)
        return VaeEntry(name=name, source=self._source("vaes", name, table))

    def lora(self, name: str, table: dict[str, Any]) -> LoraEntry:
        self._check_keys("loras", name, table)
        weight_name = table.get("weight_name")
        if weight_name is not None and not isinstance(weight_name, str):
            raise self._error("loras", name, "weight_name must be a file name")
        return LoraEntry(
            name=name,
            source=self._source("loras", name, table, needs_config=False),
            arch=self._arch("loras", name, table),
            weight_name=weight_name,
        )

    def _preview_vae(self, name: str, raw: Any) -> Source | None:
        """A hub id, or a local diffusers folder whose config is an `AutoencoderTiny`'s."""
        if raw is None:
            return None
        wanted = "preview_vae must be the hub id or folder of a diffusers AutoencoderTiny"
        if not isinstance(raw, str) or not raw.strip():
            raise self._error("models", name, wanted)
        location, kind = self._locate("models", name, raw.strip())
        if kind == "file":
            raise self._error("models", name, f"{wanted}, not a single file")
        if kind == "folder":
            config = _read_json(Path(location) / "config.json") or {}
            if config.get("_class_name") != "AutoencoderTiny":
                raise self._error("models", name, f"{wanted}: {raw!r} is not one")
        return Source(location=location, kind=kind)

    def _check_keys(self, section: str, name: str, table: dict[str, Any]) -> None:
        unknown = set(table) - _KEYS[section]
        if unknown:
            allowed = ", ".join(sorted(_KEYS[section]))
            raise self._error(
                section, name, f"unknown key(s) {sorted(unknown)}; allowed: {allowed}"
            )

    def _arch(self, section: str, name: str, table: dict[str, Any]) -> Arch | None:
        arch = table.get("arch")
        if arch is None:
            return None
        if arch not in _ARCHES:
            raise self._error(section, name, 'arch must be "sd" or "sdxl"')
        return cast(Arch, arch)

    def _source(
        self, section: str, name: str, table: dict[str, Any], *, needs_config: bool = True
    ) -> Source:
        raw = table.get("source")
        if not isinstance(raw, str) or not raw.strip():
            raise self._error(section, name, "needs source = hub id, folder or .safetensors file")
        subfolder = table.get("subfolder")
        if subfolder is not None and not isinstance(subfolder, str):
            raise self._error(section, name, "subfolder must be a folder name")
        config = table.get("config")
        if config is not None and not isinstance(config, str):
            raise self._error(section, name, "config must be a folder path or hub id")
        config_location = self._locate(section, name, config)[0] if config else None
        location, kind = self._locate(section, name, raw.strip())
        if kind == "file" and not location.endswith(".safetensors"):
            raise self._error(section, name, "single-file weights must be a .safetensors file")
        if kind == "file" and needs_config and config_location is None:
            raise self._error(
                section,
                name,
                'a single .safetensors file needs config = "<diffusers folder with its configs>" '
                "to load without the model hub",
            )
        return Source(location=location, kind=kind, config=config_location, subfolder=subfolder)

    def _locate(self, section: str, name: str, raw: str) -> tuple[str, SourceKind]:
        path = Path(raw).expanduser()
        candidates = [path] if path.is_absolute() else [self.base_dir / raw, Path.cwd() / raw]
        for candidate in candidates:
            if candidate.is_dir():
                return str(candidate.resolve()), "folder"
            if candidate.is_file():
                return str(candidate.resolve()), "file"
        if _HUB_ID.match(raw) and not raw.endswith((".safetensors", ".ckpt", ".bin")):
            return raw, "hub"
        raise self._error(section, name, f"{raw!r} is neither an existing path nor a hub id")

    def _error(self, section: str, name: str, message: str) -> ModelsFileError:
        return ModelsFileError(f"{self.origin}: [{section}.{name}] {message}")


# -- architecture detection ----------------------------------------------------------------------


def detect_arch(source: Source) -> Arch | None:
    """ "sdxl" or "sd" from the files; None for a hub id (read when it loads)."""
    if source.kind == "file":
        keys = safetensors_keys(source.path)
        if any(k.startswith("conditioner.embedders.1") for k in keys):
            return "sdxl"
        if any(k.startswith(("model.diffusion_model.", "cond_stage_model.")) for k in keys):
            return "sd"
        return _folder_arch(Path(source.config)) if source.config else None
    if source.kind == "folder":
        return _folder_arch(source.path)
    return None


def _folder_arch(folder: Path) -> Arch | None:
    index = _read_json(folder / "model_index.json")
    if index is not None:
        return "sdxl" if "XL" in str(index.get("_class_name", "")) else "sd"
    unet = _read_json(folder / "unet" / "config.json")
    if unet is not None:
        return "sdxl" if unet.get("addition_embed_type") == "text_time" else "sd"
    return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def safetensors_keys(path: Path) -> list[str]:
    """The tensor names in a .safetensors file, read from its JSON header (no torch)."""
    try:
        with path.open("rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            if size > _MAX_HEADER:
                raise ValueError("header too large")
            header = json.loads(handle.read(size))
    except (OSError, ValueError, struct.error) as exc:
        raise ModelsFileError(f"{str(path)!r} is not a readable .safetensors file: {exc}") from None
    return [k for k in header if k != "__metadata__"]

"""Reading the models file (docs/reference.md §7): its default model and its three tables.

This is the one reader of the file: the local backend's registry checks the entries in full, the
bot takes the names for autocomplete. Pure Python (tomllib); no backend is imported.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from inference.errors import BackendUnavailable

__all__ = [
    "SECTIONS",
    "ModelsFile",
    "ModelsFileError",
    "ModelsFileMissing",
    "parse_models_file",
    "read_models_file",
]

SECTIONS = ("models", "vaes", "loras")

Table = dict[str, dict[str, Any]]  # NAME -> that entry's keys, as written


class ModelsFileError(BackendUnavailable):
    """The models file is missing or wrong; the message names the file and the entry."""


class ModelsFileMissing(ModelsFileError):
    """The models file does not exist."""


@dataclass(frozen=True)
class ModelsFile:
    """The file's top level, checked; the entries' own keys are the registry's to check."""

    origin: str  # how messages name the file
    base_dir: Path  # relative sources are resolved against it
    default_model: str | None
    models: Table
    vaes: Table
    loras: Table


def read_models_file(path: str | Path) -> ModelsFile:
    """Read the file at `path`; raise `ModelsFileError` (`ModelsFileMissing`) saying what to fix."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelsFileMissing(
            f"The models file {str(path)!r} does not exist: create it or set IMG2IMG_MODELS."
        ) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ModelsFileError(f"The models file {str(path)!r} cannot be read: {exc}") from None
    return parse_models_file(data, base_dir=path.resolve().parent, origin=str(path))


def parse_models_file(
    data: Mapping[str, Any], *, base_dir: Path, origin: str = "models file"
) -> ModelsFile:
    """The file's parsed TOML `data`, its top level checked."""
    unknown = set(data) - {"default_model", *SECTIONS}
    if unknown:
        raise ModelsFileError(f"{origin}: unknown top-level key(s) {sorted(unknown)}")
    models, vaes, loras = (_table(data, section, origin) for section in SECTIONS)
    default = data.get("default_model")
    if default is not None and not isinstance(default, str):
        raise ModelsFileError(f"{origin}: default_model must be a model name")
    return ModelsFile(origin, base_dir, default, models, vaes, loras)


def _table(data: Mapping[str, Any], section: str, origin: str) -> Table:
    table = data.get(section, {})
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise ModelsFileError(f"{origin}: [{section}] must hold [{section}.NAME] tables")
    return cast(Table, table)

"""Names for autocomplete: models, VAEs and LoRAs the operator configured (no 25-choice limit)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from inference.models_file import ModelsFileMissing, read_models_file

__all__ = ["MAX_SUGGESTION_LENGTH", "Catalog", "load_catalog"]

MAX_SUGGESTION_LENGTH = 100
"""Discord's limit on an autocomplete choice's name and value: a longer suggestion is left out,
never cut (a cut one would submit a name that does not exist)."""


@dataclass(frozen=True)
class Catalog:
    models: list[str] = field(default_factory=list)
    vaes: list[str] = field(default_factory=list)
    loras: list[str] = field(default_factory=list)
    default_model: str | None = None

    def suggest(self, kind: str, typed: str, limit: int = 25) -> list[str]:
        """Names of `kind` ("models", "vaes", "loras") matching what the user typed, those that
        start with it first; none longer than `MAX_SUGGESTION_LENGTH`.

        For LoRAs the user may be typing a comma-separated list: suggestions complete its last
        item and keep the ones before it.
        """
        names: list[str] = getattr(self, kind)
        head, _, last = typed.rpartition(",") if kind == "loras" else ("", "", typed)
        chosen = {n.strip() for n in head.split(",") if n.strip()}
        needle = last.strip().lower()
        starts = [n for n in names if n.lower().startswith(needle) and n not in chosen]
        skip = chosen.union(starts)  # a set: this runs on every keystroke over every name
        inside = [n for n in names if needle in n.lower() and n not in skip]
        prefix = ",".join(n.strip() for n in head.split(",") if n.strip())
        suggestions = (f"{prefix},{n}" if prefix else n for n in starts + inside)
        return [s for s in suggestions if len(s) <= MAX_SUGGESTION_LENGTH][:limit]


def load_catalog(path: Path) -> Catalog:
    """Read the names from the models file; a missing file gives an empty catalog."""
    try:
        file = read_models_file(path)
    except ModelsFileMissing:
        return Catalog()
    return Catalog(
        models=sorted(file.models),
        vaes=sorted(file.vaes),
        loras=sorted(file.loras),
        default_model=file.default_model,
    )

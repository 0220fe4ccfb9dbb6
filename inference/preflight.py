"""Checks before a backend starts, so that an entry point can refuse at once with every problem.

The local backend needs torch and diffusers, the CUDA device `IMG2IMG_DEVICE=cuda` asks for, and
a valid models file whose local files exist; the ModelsLab backend needs a key, http(s) base URLs,
a `MODELSLAB_WEBHOOK_LISTEN` that parses, and a models file that is valid when it exists (it is
optional there). Each check returns one line per problem. torch is imported only through the
`importer` given (tests pass their own).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from inference.local.registry import ModelRegistry
from inference.models_file import ModelsFile, ModelsFileError, ModelsFileMissing, read_models_file
from inference.settings import InferenceSettings

__all__ = [
    "Importer",
    "backend_problems",
    "models_file_problems",
    "modelslab_problems",
    "optional_models_file_problems",
    "runtime_problems",
]

Importer = Callable[[str], Any]

INSTALL_HINT = "install with `pip install -e '.[local]'` or set IMG2IMG_BACKEND=modelslab"
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".bin")


def backend_problems(
    settings: InferenceSettings,
    name: str | None = None,
    *,
    importer: Importer = importlib.import_module,
    request_key: bool = False,
    own_backend: bool = False,
) -> list[str]:
    """What would stop the backend `name` (or `settings.backend`) from starting.

    `request_key`: the request brings its own ModelsLab key (the CLI's request file may).
    `own_backend`: the caller runs the backend even though `IMG2IMG_QUEUE` is set (a worker);
    otherwise a submitter to the remote queue needs nothing here.
    """
    if settings.remote.redis_url is not None and not own_backend:
        return []
    if (name or settings.backend) == "modelslab":
        return modelslab_problems(settings, request_key=request_key)
    return runtime_problems(settings.local.device, importer) + models_file_problems(
        settings.models_file
    )


def modelslab_problems(settings: InferenceSettings, *, request_key: bool = False) -> list[str]:
    """A key, http(s) base URLs, a webhook address that parses, a valid models file if any."""
    from inference.errors import BackendUnavailable
    from inference.modelslab.endpoints import origin_of
    from inference.modelslab.webhook import parse_listen

    lab = settings.modelslab
    problems = []
    if not (lab.api_keys or request_key):
        problems.append(
            "IMG2IMG_BACKEND=modelslab needs MODELSLAB_API_KEY (or MODELSLAB_API_KEYS)."
        )
    problems += [
        f"MODELSLAB_BASE_URL: {url!r} is not an http(s) URL with a host; write it like "
        "https://modelslab.com."
        for url in lab.base_urls
        if origin_of(url) is None
    ]
    if lab.webhook_listen:
        try:
            parse_listen(lab.webhook_listen)
        except BackendUnavailable as exc:
            problems.append(str(exc))
    return problems + optional_models_file_problems(settings.models_file)


def optional_models_file_problems(models_file: Path) -> list[str]:
    """A models file that exists can be read (where the file is optional: a missing one is fine)."""
    try:
        read_models_file(models_file)
    except ModelsFileMissing:
        return []
    except ModelsFileError as exc:
        return [str(exc)]
    return []


def runtime_problems(device: str, importer: Importer = importlib.import_module) -> list[str]:
    """torch and diffusers importable, and a CUDA device when `device` is "cuda"."""
    modules: dict[str, Any] = {}
    failed: list[str] = []
    for module in ("torch", "diffusers"):
        try:
            modules[module] = importer(module)
        except (ImportError, OSError) as exc:  # OSError: a broken install (missing libraries)
            failed.append(f"{module}: {exc}")
    if failed:
        return [
            f"the local backend needs torch and diffusers, which cannot be imported "
            f"({'; '.join(failed)}): {INSTALL_HINT}."
        ]
    torch = modules["torch"]
    if device == "cuda" and not torch.cuda.is_available():
        cuda = torch.version.cuda
        build = f"built for CUDA {cuda}" if cuda else "a CPU-only build"
        return [
            f"IMG2IMG_DEVICE=cuda, but torch {torch.__version__} ({build}) finds no CUDA device: "
            "check the NVIDIA driver (and `--gpus all` for Docker), or set IMG2IMG_DEVICE=auto "
            "or cpu."
        ]
    return []


def models_file_problems(path: Path) -> list[str]:
    """The models file readable and valid, every local file or folder it names there."""
    try:
        file = read_models_file(path)
    except ModelsFileError as exc:
        return [str(exc)]
    missing = [
        f"{file.origin}: [{section}.{name}] {key} {raw!r} does not exist (relative paths are "
        f"looked up in {file.base_dir} and {Path.cwd()}), and is not a hub id (owner/name)"
        for section, name, key, raw in _locations(file)
        if _missing(raw, file.base_dir)
    ]
    if missing:
        return missing
    try:
        ModelRegistry.from_file(file)
    except ModelsFileError as exc:
        return [str(exc)]
    return []


def _locations(file: ModelsFile) -> Iterator[tuple[str, str, str, str]]:
    """(section, entry, key, value) of every `source` and `config` written in the file."""
    for section, table in (("models", file.models), ("vaes", file.vaes), ("loras", file.loras)):
        for name, entry in table.items():
            for key in ("source", "config"):
                value = entry.get(key) if isinstance(entry, dict) else None
                if isinstance(value, str) and value.strip():
                    yield section, name, key, value.strip()


def _missing(raw: str, base_dir: Path) -> bool:
    """A path (not a hub id) that exists neither as written nor relative to `base_dir`."""
    if _HUB_ID.match(raw) and not raw.endswith(_WEIGHT_SUFFIXES):
        return False
    path = Path(raw).expanduser()
    candidates = [path] if path.is_absolute() else [base_dir / path, Path.cwd() / path]
    return not any(candidate.exists() for candidate in candidates)

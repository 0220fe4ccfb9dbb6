"""Dependency direction (docs/reference.md §1): cogs -> bot -> inference, never the other way."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "diffusers", "transformers", "peft", "tomesd", "accelerate", "safetensors")
CONCRETE_BACKENDS = ("inference.local", "inference.modelslab", "inference.backends")
COMPOSITION_ROOTS = {"bot/__main__.py", "inference/__main__.py", "inference/cli.py"}


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, relative imports resolved to absolute names."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def offenders(package: str, forbidden: tuple[str, ...], allowed_files: set[str]) -> list[str]:
    found = []
    for path in sources(package):
        rel = path.relative_to(ROOT).as_posix()
        if rel in allowed_files:
            continue
        for name in imported_modules(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{rel} imports {name}")
    return found


def test_the_import_scanner_sees_imports() -> None:
    # Guard against a scanner that finds nothing (which would make every rule below pass).
    names = imported_modules(ROOT / "inference" / "request.py")
    assert "pydantic" in names and "inference.errors.InvalidRequest" in names


def test_inference_never_imports_discord_bot_or_cogs() -> None:
    assert sources("inference"), "inference/ has no sources"
    assert offenders("inference", ("discord", "bot", "cogs"), set()) == []


def test_torch_and_diffusers_live_only_in_the_local_backend() -> None:
    outside = [p for p in offenders("inference", HEAVY, set()) if "inference/local/" not in p]
    assert outside == []
    assert offenders("bot", HEAVY, set()) == [] and offenders("cogs", HEAVY, set()) == []


def test_bot_never_imports_cogs_except_to_load_them() -> None:
    assert offenders("bot", ("cogs",), {"bot/client.py", "bot/__main__.py"}) == []


@pytest.mark.parametrize("package", ["bot", "cogs"])
def test_only_the_composition_root_names_a_concrete_backend(package: str) -> None:
    assert offenders(package, CONCRETE_BACKENDS, COMPOSITION_ROOTS) == []


def test_importing_inference_loads_neither_torch_nor_discord() -> None:
    code = (
        "import sys, inference, inference.backends, inference.postprocess\n"
        "bad = [m for m in ('torch', 'diffusers', 'discord', 'bot', 'cogs') if m in sys.modules]\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr

"""The checks before a backend starts: torch and diffusers, the CUDA device, the models file."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from inference.preflight import backend_problems, models_file_problems, runtime_problems
from inference.settings import InferenceSettings, LocalSettings, ModelsLabSettings


def fake_torch(*, cuda: bool, built_for: str | None = "12.8") -> Any:
    return SimpleNamespace(
        __version__="2.13.0",
        cuda=SimpleNamespace(is_available=lambda: cuda),
        version=SimpleNamespace(cuda=built_for),
    )


def importer(**modules: Any) -> Any:
    def load(name: str) -> Any:
        if modules.get(name) is None:
            raise ImportError(f"No module named {name!r}")
        return modules[name]

    return load


def test_torch_or_diffusers_missing_names_the_install_command() -> None:
    [problem] = runtime_problems("auto", importer(torch=fake_torch(cuda=False)))
    assert "No module named 'diffusers'" in problem
    assert problem.endswith(
        "install with `pip install -e '.[local]'` or set IMG2IMG_BACKEND=modelslab."
    )
    [both] = runtime_problems("cpu", importer())
    assert "torch: No module named 'torch'; diffusers: No module named 'diffusers'" in both


@pytest.mark.parametrize(("built_for", "said"), [("12.8", "built for CUDA 12.8"), (None, "CPU")])
def test_cuda_asked_for_but_absent(built_for: str | None, said: str) -> None:
    load = importer(torch=fake_torch(cuda=False, built_for=built_for), diffusers=object())
    [problem] = runtime_problems("cuda", load)
    assert problem.startswith("IMG2IMG_DEVICE=cuda, but torch 2.13.0 (")
    assert said in problem and "IMG2IMG_DEVICE=auto or cpu" in problem
    assert runtime_problems("auto", load) == runtime_problems("cpu", load) == []


def test_cuda_present_passes() -> None:
    load = importer(torch=fake_torch(cuda=True), diffusers=object())
    assert runtime_problems("cuda", load) == []


def write_models(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


def test_every_missing_local_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "configs" / "sd").mkdir(parents=True)
    path = write_models(
        tmp_path,
        """
default_model = "hub"
[models.hub]
source = "owner/model"                   # a hub id: not checked here
[models.gone]
source = "weights/gone.safetensors"
config = "configs/sd"                    # exists
[vaes.folder]
source = "/nowhere/vae"
[loras.detail]
source = "loras/detail.safetensors"
""",
    )
    problems = models_file_problems(path)
    assert [p.split("]")[0].split("[")[1] for p in problems] == [
        "models.gone",
        "vaes.folder",
        "loras.detail",
    ]
    assert "source 'weights/gone.safetensors' does not exist" in problems[0]
    assert f"looked up in {tmp_path}" in problems[0]


def test_a_missing_or_invalid_models_file(tmp_path: Path) -> None:
    [missing] = models_file_problems(tmp_path / "absent.toml")
    assert "does not exist: create it or set IMG2IMG_MODELS" in missing
    [invalid] = models_file_problems(write_models(tmp_path, "[models.a]\nsourse = 'x/y'\n"))
    assert "[models.a] unknown key(s) ['sourse']" in invalid
    assert models_file_problems(write_models(tmp_path, "[models.a]\nsource = 'x/y'\n")) == []


def test_the_backend_in_the_settings_is_checked(tmp_path: Path) -> None:
    hosted = InferenceSettings(backend="modelslab", modelslab=ModelsLabSettings(api_keys=[]))
    assert "needs MODELSLAB_API_KEY" in backend_problems(hosted)[0]
    keyed = ModelsLabSettings(api_keys="sk-1")
    assert backend_problems(hosted.model_copy(update={"modelslab": keyed})) == []
    local = InferenceSettings(
        backend="local", models_file=tmp_path / "absent.toml", local=LocalSettings(device="cuda")
    )
    load = importer(torch=fake_torch(cuda=False), diffusers=object())
    problems = backend_problems(local, importer=load)
    assert [p.split(" ")[0] for p in problems] == ["IMG2IMG_DEVICE=cuda,", "The"]
    assert backend_problems(local, "modelslab", importer=load) != problems  # the name wins


def test_modelslab_settings_are_checked_before_any_job(tmp_path: Path) -> None:
    """Broken base URL, webhook address or models file: refused at start, all at once."""
    lab = ModelsLabSettings(
        api_keys="sk-1", base_urls="https://ok.test,modelslab.com", webhook_listen="8088"
    )
    broken = InferenceSettings(
        backend="modelslab", modelslab=lab, models_file=write_models(tmp_path, "[models")
    )
    problems = backend_problems(broken)
    assert len(problems) == 3, problems
    assert problems[0].startswith("MODELSLAB_BASE_URL: 'modelslab.com' is not an http(s) URL")
    assert "MODELSLAB_WEBHOOK_LISTEN must look like 0.0.0.0:8088" in problems[1]
    assert str(tmp_path / "models.toml") in problems[2]
    fine = ModelsLabSettings(api_keys="sk-1", webhook_listen="127.0.0.1:8088")
    absent = tmp_path / "absent.toml"  # optional with this backend
    assert (
        backend_problems(broken.model_copy(update={"modelslab": fine, "models_file": absent})) == []
    )

"""The models file: sources, architecture detection and name lookups (no torch needed)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from inference.errors import InvalidRequest
from inference.local.registry import ModelRegistry, ModelsFileError, safetensors_keys
from inference.request import Img2ImgRequest

ROOT = Path(__file__).resolve().parent.parent


def fake_safetensors(path: Path, keys: list[str]) -> Path:
    """A valid .safetensors file whose tensors are one-element placeholders."""
    header: dict[str, object] = {}
    offset = 0
    for key in keys:
        header[key] = {"dtype": "F32", "shape": [1], "data_offsets": [offset, offset + 4]}
        offset += 4
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)
    return path


def diffusers_folder(path: Path, class_name: str, unet: dict[str, object] | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    if unet is not None:
        (path / "unet").mkdir()
        (path / "unet" / "config.json").write_text(json.dumps(unet))
    return path


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    diffusers_folder(tmp_path / "sd15", "StableDiffusionPipeline")
    diffusers_folder(tmp_path / "xl", "StableDiffusionXLPipeline")
    unet_only = tmp_path / "unet-only"
    (unet_only / "unet").mkdir(parents=True)
    (unet_only / "unet" / "config.json").write_text(
        json.dumps({"addition_embed_type": "text_time"})
    )
    fake_safetensors(
        tmp_path / "pony.safetensors", ["conditioner.embedders.1.model.ln_final.weight"]
    )
    fake_safetensors(tmp_path / "v15.safetensors", ["model.diffusion_model.out.0.weight"])
    fake_safetensors(tmp_path / "detail.safetensors", ["lora_unet_down.lora_up.weight"])
    return tmp_path


def write(models_dir: Path, text: str) -> Path:
    path = models_dir / "models.toml"
    path.write_text(text)
    return path


GOOD = """
default_model = "sd15"
[models.sd15]
source = "sd15"
[models.pony]
source = "pony.safetensors"
config = "xl"
[models.v15file]
source = "v15.safetensors"
config = "sd15"
[models.xl]
source = "xl"
[models.unet-only]
source = "unet-only"
[models.hub]
source = "stable-diffusion-v1-5/stable-diffusion-v1-5"
[models.hub-xl]
source = "someone/some-xl"
arch = "sdxl"
[vaes.ft-mse]
source = "stabilityai/sd-vae-ft-mse"
[loras.detail]
source = "detail.safetensors"
[loras.xl-only]
source = "detail.safetensors"
arch = "sdxl"
"""


def test_sources_and_architectures_are_read_from_the_files(models_dir: Path) -> None:
    registry = ModelRegistry.load(write(models_dir, GOOD))
    kinds = {name: (m.source.kind, m.arch) for name, m in registry.models.items()}
    assert kinds == {
        "sd15": ("folder", "sd"),
        "pony": ("file", "sdxl"),
        "v15file": ("file", "sd"),
        "xl": ("folder", "sdxl"),
        "unet-only": ("folder", "sdxl"),
        "hub": ("hub", None),
        "hub-xl": ("hub", "sdxl"),
    }
    assert registry.models["pony"].source.config == str((models_dir / "xl").resolve())
    assert registry.models["sd15"].source.location == str((models_dir / "sd15").resolve())
    assert registry.vaes["ft-mse"].source.kind == "hub"
    assert registry.loras["detail"].source.kind == "file"
    assert registry.default_model == "sd15"


def test_relative_paths_resolve_against_the_models_file(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    registry = ModelRegistry.load(write(models_dir, GOOD))
    assert registry.models["sd15"].source.kind == "folder"


def test_select_resolves_the_names_a_request_uses(models_dir: Path) -> None:
    registry = ModelRegistry.load(write(models_dir, GOOD))
    request = Img2ImgRequest(
        prompt="x", vae="ft-mse", lora_model="detail", lora_strength="0.25", seed=1
    )
    selection = registry.select(request)
    assert selection.model.name == "sd15"  # the default model
    assert selection.vae is not None and selection.vae.name == "ft-mse"
    assert [(lora.name, s) for lora, s in selection.loras] == [("detail", 0.25)]


@pytest.mark.parametrize(
    ("fields", "field", "known"),
    [
        ({"model_id": "nope"}, "model_id", "hub, hub-xl, pony, sd15, unet-only, v15file, xl"),
        ({"vae": "nope"}, "vae", "ft-mse"),
        ({"lora_model": "detail,nope"}, "lora_model", "detail, xl-only"),
    ],
)
def test_unknown_names_are_refused_with_the_known_ones(
    models_dir: Path, fields: dict[str, str], field: str, known: str
) -> None:
    registry = ModelRegistry.load(write(models_dir, GOOD))
    with pytest.raises(InvalidRequest) as caught:
        registry.select(Img2ImgRequest(prompt="x", **fields))
    assert caught.value.field == field
    assert "'nope'" in str(caught.value) and known in str(caught.value)


def test_a_lora_for_another_architecture_is_refused(models_dir: Path) -> None:
    registry = ModelRegistry.load(write(models_dir, GOOD))
    with pytest.raises(InvalidRequest, match="SDXL models but 'sd15' is SD"):
        registry.select(Img2ImgRequest(prompt="x", lora_model="xl-only"))
    registry.select(Img2ImgRequest(prompt="x", model_id="xl", lora_model="xl-only"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[models.a]\nsource = "v15.safetensors"\n', "needs config ="),
        ('[models.a]\nsource = "missing/dir/x"\n', "neither an existing path nor a hub id"),
        ('[models.a]\nsource = "gone.safetensors"\n', "neither an existing path"),
        ('[models.a]\nsource = "sd15"\narch = "sd3"\n', 'arch must be "sd" or "sdxl"'),
        ('[models.a]\nsource = "sd15"\nweights = 1\n', "unknown key(s) ['weights']"),
        ('[models.a]\nsourc = "sd15"\n', "unknown key(s) ['sourc']"),
        ('default_model = "b"\n[models.a]\nsource = "sd15"\n', "default_model 'b'"),
        ("", "defines no models"),
        ('[models.a]\nsource = "sd15"\n[extra]\n', "unknown top-level key"),
        ("[models.a\n", "cannot be read"),
        (
            '[models.a]\nsource = "sd15"\ntomesd_ratio = 0.9\n',
            "tomesd_ratio must be a number from 0",
        ),
        ('[models.a]\nsource = "sd15"\ntomesd_ratio = -0.1\n', "from 0 to 0.75"),
        ('[models.a]\nsource = "sd15"\ntomesd_ratio = "half"\n', "not 'half'"),
        ('[models.a]\nsource = "sd15"\ntomesd_ratio = true\n', "not True"),
        ('[models.a]\nsource = "sd15"\ntomesd_ratio = nan\n', "not nan"),
        ('[models.a]\nsource = "sd15"\ntomesd_max_downsample = 3\n', "one of 1, 2, 4, 8"),
        ('[models.a]\nsource = "sd15"\ntomesd_max_downsample = 2.0\n', "not 2.0"),
        ('[models.a]\nsource = "sd15"\ntomesd = 0.5\n', "unknown key(s) ['tomesd']"),
        (
            '[vaes.v]\nsource = "sd15"\ntomesd_ratio = 0.5\n[models.a]\nsource = "sd15"\n',
            "[vaes.v] unknown key(s) ['tomesd_ratio']",  # ToMe is per model
        ),
    ],
)
def test_mistakes_in_the_models_file_are_explained(
    models_dir: Path, text: str, message: str
) -> None:
    with pytest.raises(ModelsFileError) as caught:
        ModelRegistry.load(write(models_dir, text))
    assert message in str(caught.value)


def test_a_models_file_error_names_the_file_and_the_entry(models_dir: Path) -> None:
    text = '[models.pony]\nsource = "pony.safetensors"\nconfig = "xl"\ntomesd_ratio = 1\n'
    path = write(models_dir, text)
    with pytest.raises(ModelsFileError) as caught:
        ModelRegistry.load(path)
    assert str(caught.value).startswith(f"{path}: [models.pony] tomesd_ratio must be")


def test_tome_settings_per_model_are_read(models_dir: Path) -> None:
    text = (
        GOOD
        + '[models.pony-fast]\nsource = "pony.safetensors"\nconfig = "xl"\n'
        + "tomesd_ratio = 0.6\ntomesd_max_downsample = 4\n"
        + '[models.sd15-off]\nsource = "sd15"\ntomesd_ratio = 0\n'
    )
    registry = ModelRegistry.load(write(models_dir, text))
    tome = {name: (m.tome.ratio, m.tome.max_downsample) for name, m in registry.models.items()}
    assert tome["pony-fast"] == (0.6, 4)
    assert tome["sd15-off"] == (0.0, None)
    assert tome["pony"] == (None, None)  # the defaults: see inference.local.tome


def test_a_missing_models_file_says_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(ModelsFileError, match="IMG2IMG_MODELS"):
        ModelRegistry.load(tmp_path / "models.toml")


def test_safetensors_keys_reads_only_the_header(models_dir: Path) -> None:
    assert safetensors_keys(models_dir / "pony.safetensors") == [
        "conditioner.embedders.1.model.ln_final.weight"
    ]
    (models_dir / "broken.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(ModelsFileError, match="not a readable"):
        safetensors_keys(models_dir / "broken.safetensors")


def test_importing_and_using_the_registry_and_backend_does_not_import_torch(
    models_dir: Path,
) -> None:
    code = (
        "import sys\n"
        "from inference.local.registry import ModelRegistry\n"
        "from inference.local.backend import LocalBackend\n"
        f"LocalBackend(ModelRegistry.load({str(write(models_dir, GOOD))!r}))\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "print(heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stdout + run.stderr

"""Live previews through a tiny VAE (a model's `preview_vae`): the models-file key, the decoder
(used when configured, at a reduced latent size), and the fallback to the projection."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_preview import Job, decode
from tiny_models import build_tiny_autoencoder

from inference.local.engine import Engine
from inference.local.loading import load_preview_vae
from inference.local.preview import PREVIEW_SIDE, PreviewDecoders, decode_latents, project_latents
from inference.local.registry import ModelRegistry, ModelsFileError, Source
from inference.models_file import parse_models_file

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


@pytest.fixture(scope="module")
def taesd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("preview-vae") / "taesd"
    build_tiny_autoencoder(folder)
    return folder


def load_cpu(source: Source) -> Any:
    return load_preview_vae(source, device="cpu", dtype=torch.float32)


def latents(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# -- the models-file key --------------------------------------------------------------------------


def registry_with(tmp_path: Path, preview_vae: Any) -> ModelRegistry:
    (tmp_path / "model").mkdir(exist_ok=True)
    table = {"source": "model", "arch": "sd", "preview_vae": preview_vae}
    return ModelRegistry.from_file(parse_models_file({"models": {"m": table}}, base_dir=tmp_path))


def test_preview_vae_key_takes_a_tiny_vae_folder_or_a_hub_id(tmp_path: Path, taesd: Path) -> None:
    assert registry_with(tmp_path, str(taesd)).models["m"].preview_vae == Source(
        location=str(taesd.resolve()), kind="folder"
    )
    hub = registry_with(tmp_path, "madebyollin/taesd").models["m"].preview_vae
    assert hub == Source(location="madebyollin/taesd", kind="hub")
    (tmp_path / "model" / "model_index.json").write_text("{}", encoding="utf-8")
    without = ModelRegistry.from_file(
        parse_models_file({"models": {"m": {"source": "model"}}}, base_dir=tmp_path)
    )
    assert without.models["m"].preview_vae is None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (3, "hub id or folder of a diffusers AutoencoderTiny"),
        ("  ", "hub id or folder of a diffusers AutoencoderTiny"),
        ("weights.safetensors", "not a single file"),
        ("kl-vae", "'kl-vae' is not one"),
        ("no/such/folder", "neither an existing path nor a hub id"),
    ],
)
def test_preview_vae_key_is_checked(tmp_path: Path, value: Any, message: str) -> None:
    (tmp_path / "weights.safetensors").write_bytes(b"")
    (tmp_path / "kl-vae").mkdir()
    (tmp_path / "kl-vae" / "config.json").write_text(
        '{"_class_name": "AutoencoderKL"}', encoding="utf-8"
    )
    with pytest.raises(ModelsFileError, match=r"\[models\.m\]") as caught:
        registry_with(tmp_path, value)
    assert message in str(caught.value)


# -- the decoder ----------------------------------------------------------------------------------


def test_decoder_output_is_rgb_uint8_at_8x_the_latents(taesd: Path) -> None:
    decoder = load_cpu(Source(str(taesd), "folder"))
    pixels = decode_latents(decoder, latents(2, 4, 8, 6))
    assert pixels.shape == (2, 64, 48, 3) and pixels.dtype == torch.uint8
    assert len(np.unique(pixels.numpy())) > 50  # an image, not a constant


def test_large_latents_are_shrunk_before_decoding(taesd: Path) -> None:
    decoder = load_cpu(Source(str(taesd), "folder"))
    seen: list[tuple[int, ...]] = []
    decoder.decoder.register_forward_hook(lambda module, args, out: seen.append(args[0].shape))
    pixels = decode_latents(decoder, latents(1, 4, 128, 96))  # a 1024 x 768 image
    assert seen == [(1, 4, PREVIEW_SIDE // 8, 24)]
    assert pixels.shape == (1, PREVIEW_SIDE, 192, 3)


def test_loading_a_tiny_vae_logs_no_library_noise(taesd: Path) -> None:
    """diffusers warns that the `block_out_channels` it saved itself are unexpected: dropped."""
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    emitter = logging.getLogger("diffusers.configuration_utils")
    handler = Collect(logging.DEBUG)
    emitter.addHandler(handler)
    try:
        load_cpu(Source(str(taesd), "folder"))
    finally:
        emitter.removeHandler(handler)
    assert not [m for m in seen if "AutoencoderTiny" in m], seen


def test_configured_decoder_is_loaded_once_and_used(taesd: Path) -> None:
    loads: list[Source] = []

    def load(source: Source) -> Any:
        loads.append(source)
        return load_cpu(source)

    decoders = PreviewDecoders(load)
    source = Source(str(taesd), "folder")
    batch = latents(1, 4, 8, 8, seed=1)
    first = decoders.pixels(batch, "sd", source)
    second = decoders.pixels(batch, "sd", source)
    assert loads == [source]
    assert torch.equal(first, second)
    projected = project_latents(batch, "sd")
    assert first.shape == (1, 64, 64, 3) != projected.shape  # decoded: 8x the latents
    small = torch.nn.functional.interpolate(first.permute(0, 3, 1, 2).float(), size=(8, 8))
    assert (small.permute(0, 2, 3, 1) - projected.float()).abs().mean() > 10
    # A model without one keeps the projection.
    assert torch.equal(decoders.pixels(batch, "sd", None), projected)


def test_missing_decoder_warns_once_and_falls_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    decoders = PreviewDecoders(load_cpu)
    source = Source(str(tmp_path / "deleted"), "folder")
    batch = latents(1, 4, 8, 8)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert torch.equal(
                decoders.pixels(batch, "sdxl", source), project_latents(batch, "sdxl")
            )
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "latent projection" in warnings[0].getMessage()
    assert str(tmp_path / "deleted") in warnings[0].getMessage()


def test_uncached_hub_decoder_offline_warns_once_and_falls_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from inference.local import hub

    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    decoders = PreviewDecoders(load_cpu)
    source = Source("img2img-tests/never-cached-taesd", "hub")
    batch = latents(1, 4, 8, 8)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            assert torch.equal(decoders.pixels(batch, "sd", source), project_latents(batch, "sd"))
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "never-cached-taesd" in warnings[0].getMessage()
    assert "latent projection" in warnings[0].getMessage()


def test_decoder_that_fails_warns_once_and_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def decode(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("expected 16 channels")

    loads: list[Source] = []

    def load(source: Source) -> Any:
        loads.append(source)
        return Broken()

    decoders = PreviewDecoders(load)
    source = Source("owner/taesd3", "hub")
    batch = latents(1, 4, 8, 8)
    with caplog.at_level(logging.WARNING, logger="inference.local.preview"):
        for _ in range(2):
            assert torch.equal(decoders.pixels(batch, "sd", source), project_latents(batch, "sd"))
    assert len(loads) == 1
    assert len([r for r in caplog.records if r.name == "inference.local.preview"]) == 1


# -- the engine: a model's preview_vae makes its previews -----------------------------------------


def test_engine_previews_through_the_models_tiny_vae(
    engine: Engine, registry: ModelRegistry, taesd: Path
) -> None:
    tiny = registry.models["tiny"]
    with_vae = dataclasses.replace(
        tiny, name="tiny-taesd", preview_vae=Source(str(taesd.resolve()), "folder")
    )
    both = ModelRegistry({"tiny": tiny, "tiny-taesd": with_vae})
    engine.preview_interval = 1e-9
    engine.preview_decoders = PreviewDecoders(load_cpu)
    plain = Job(both, seed=3, safety_checker="no")
    decoded = Job(both, seed=3, safety_checker="no", model_id="tiny-taesd")
    engine.run([plain.item])
    engine.run([decoded.item])
    assert plain.previews and len(decoded.previews) == len(plain.previews)
    first = [np.asarray(decode(job.previews[0][2]), dtype=float) for job in (plain, decoded)]
    assert first[1].shape == (PREVIEW_SIDE, PREVIEW_SIDE, 3)
    assert np.abs(first[0] - first[1]).mean() > 10  # the same latents, decoded, not projected

"""Tiny random-weight Stable Diffusion models, built offline from configs for the local backend.

Everything is saved the way real models are (diffusers folders, a LoRA file, a VAE folder, an
original-format single-file checkpoint) so the tests load them through the backend's real loading
code. The configs follow diffusers' own tests (`get_dummy_components`), with the SD-1.x block layout
(attention in the first, full-resolution block) so that ToMe and the single-file key layout behave
like on real SD.
"""

from __future__ import annotations

import atexit
import functools
import io
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

torch.set_num_threads(1)  # 2-core machines shared with other test processes

VOCAB_SIZE = 1000
_MERGES = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("i", "n"), ("e", "r</w>")]
BOS_ID = 512 + len(_MERGES)  # <|startoftext|>, after the 2 x 256 byte tokens and the merges
EOS_ID = BOS_ID + 1  # <|endoftext|>, also the padding


# The scheduler config of the real SD 1.5 (PNDMScheduler drops `clip_sample` when saving).
SD15_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}


@dataclass(frozen=True)
class TinyModels:
    root: Path
    sd: Path  # diffusers folder, SD 1.x layout
    sdxl: Path  # diffusers folder, SDXL layout
    single_file: Path  # original (LDM) layout .safetensors of `sd`'s weights
    lora: Path  # diffusers-format LoRA file for `sd`
    vae: Path  # a second VAE folder (different weights)
    vae_file: Path  # the same VAE as one original-layout .safetensors file
    prompt_lm: Path  # a tiny GPT-2 causal LM with its tokenizer, for enhance_prompt
    models_file: Path  # models.toml naming all of the above


def _bytes_to_unicode() -> dict[int, str]:
    visible = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = visible[:]
    extra = 0
    for b in range(256):
        if b not in visible:
            visible.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(visible, (chr(c) for c in chars), strict=True))


def _clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    byte_chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for char in byte_chars:
        vocab[char] = len(vocab)
    for char in byte_chars:
        vocab[char + "</w>"] = len(vocab)
    merges = list(_MERGES)
    for left, right in merges:
        vocab[left + right] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    assert (vocab["<|startoftext|>"], vocab["<|endoftext|>"]) == (BOS_ID, EOS_ID)
    assert len(vocab) <= VOCAB_SIZE
    return vocab, merges


def write_vocab_files(folder: Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
    """vocab.json + merges.txt beside tokenizer.json: transformers 4 needs them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_clip_tokenizer() -> Any:
    """A byte-level BPE CLIP tokenizer that fits a 1000-token vocab (transformers 5 API)."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _save_pipeline(pipe: Any, folder: Path) -> None:
    pipe.save_pretrained(folder, safe_serialization=True)
    vocab, merges = _clip_vocab()
    for name in ("tokenizer", "tokenizer_2"):
        if (folder / name).is_dir():
            write_vocab_files(folder / name, vocab, merges)


def _text_config(**overrides: Any) -> Any:
    from transformers import CLIPTextConfig

    options: dict[str, Any] = {
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "hidden_size": 32,
        "intermediate_size": 37,
        "layer_norm_eps": 1e-05,
        "num_attention_heads": 4,
        "num_hidden_layers": 5,
        "pad_token_id": EOS_ID,
        "vocab_size": VOCAB_SIZE,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
        "projection_dim": 32,
    }
    options.update(overrides)
    return CLIPTextConfig(**options)


def _sd_scheduler() -> Any:
    from diffusers import PNDMScheduler

    return PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        skip_prk_steps=True,
        set_alpha_to_one=False,
    )


def make_vae(seed: int) -> Any:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=[32, 32, 64, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=128,
    )


def build_tiny_autoencoder(folder: Path, seed: int = 40) -> Any:
    """A random-weight diffusers `AutoencoderTiny` (TAESD's layout, 8 channels), saved to
    `folder`: a models file's `preview_vae`. Its decoder's weights are drawn wider than the
    default initialisation, which decodes any latent to a near-black image."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    vae = AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
    )
    with torch.no_grad():
        for parameter in vae.decoder.parameters():
            parameter.normal_(0.0, 0.1)
    vae.save_pretrained(folder, safe_serialization=True)
    return vae


def build_sd(folder: Path, seed: int = 0) -> Any:
    """A tiny SD 1.x img2img pipeline (about 2.5 M parameters), saved to `folder`."""
    from diffusers import StableDiffusionImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    vae = make_vae(seed + 1)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config())
    tokenizer = make_clip_tokenizer()
    pipe = StableDiffusionImg2ImgPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=_sd_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    _save_pipeline(pipe, folder)
    (folder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(SD15_SCHEDULER_CONFIG), encoding="utf-8"
    )
    return pipe


def build_sdxl(folder: Path, seed: int = 10) -> None:
    """A tiny SDXL img2img pipeline (two text encoders, text_time conditioning), saved."""
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 time ids * 8 + pooled 32
        cross_attention_dim=64,
        norm_num_groups=8,
    )
    vae = make_vae(seed + 1)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_text_config())
    text_encoder_2 = CLIPTextModelWithProjection(_text_config())
    tokenizer = make_clip_tokenizer()
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipe = StableDiffusionXLImg2ImgPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        scheduler=scheduler,
        requires_aesthetics_score=False,
        force_zeros_for_empty_prompt=True,
    )
    _save_pipeline(pipe, folder)


def build_lora(pipe: Any, path: Path, seed: int = 20) -> None:
    """A rank-4 LoRA on the UNet's attention projections, random (non-zero) weights, saved."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    torch.manual_seed(seed)
    unet = pipe.unet
    config = LoraConfig(
        r=4,
        lora_alpha=4,
        init_lora_weights=False,
        target_modules=["to_q", "to_k", "to_v", "to_out.0"],
    )
    unet.add_adapter(config)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    path.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        save_directory=str(path.parent),
        unet_lora_layers=layers,
        weight_name=path.name,
        safe_serialization=True,
    )
    unet.delete_adapters(unet.active_adapters())


# -- original (LDM / A1111) single-file layout ---------------------------------------------------
# After diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py (Apache-2.0), for the
# tiny layout above: two UNet blocks, two resnets per block, attention in the first block only.


def _unet_layer_map(blocks: int, per_block: int) -> list[tuple[str, str]]:
    mapping: list[tuple[str, str]] = []
    step = per_block + 1
    for i in range(blocks):
        for j in range(per_block):
            mapping.append((f"input_blocks.{step * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            mapping.append(
                (f"input_blocks.{step * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}.")
            )
        for j in range(step):
            mapping.append((f"output_blocks.{step * i + j}.0.", f"up_blocks.{i}.resnets.{j}."))
            mapping.append((f"output_blocks.{step * i + j}.1.", f"up_blocks.{i}.attentions.{j}."))
        if i < blocks - 1:
            mapping.append(
                (f"input_blocks.{step * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv.")
            )
            # up block 0 has no attention in SD's layout, so its upsampler is the second module
            mapping.append(
                (
                    f"output_blocks.{step * i + per_block}.{1 if i == 0 else 2}.",
                    f"up_blocks.{i}.upsamplers.0.",
                )
            )
    mapping.append(("middle_block.1.", "mid_block.attentions.0."))
    for j in range(2):
        mapping.append((f"middle_block.{2 * j}.", f"mid_block.resnets.{j}."))
    return mapping


_UNET_TOP = [
    ("time_embed.0.", "time_embedding.linear_1."),
    ("time_embed.2.", "time_embedding.linear_2."),
    ("input_blocks.0.0.", "conv_in."),
    ("out.0.", "conv_norm_out."),
    ("out.2.", "conv_out."),
]
_UNET_RESNET = [
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("emb_layers.1", "time_emb_proj"),
    ("skip_connection", "conv_shortcut"),
]


def _convert_unet(state: dict[str, Any]) -> dict[str, Any]:
    layer_map = _unet_layer_map(blocks=2, per_block=2)
    out = {}
    for key, value in state.items():
        new = key
        for sd, hf in _UNET_TOP:
            if new.startswith(hf):
                new = sd + new[len(hf) :]
        if "resnets" in key:
            for sd, hf in _UNET_RESNET:
                new = new.replace(hf, sd)
        for sd, hf in layer_map:
            new = new.replace(hf, sd)
        out["model.diffusion_model." + new] = value
    return out


def _convert_vae(state: dict[str, Any]) -> dict[str, Any]:
    mapping = [("nin_shortcut", "conv_shortcut"), ("norm_out", "conv_norm_out")]
    mapping.append(("mid.attn_1.", "mid_block.attentions.0."))
    for i in range(4):
        mapping.append((f"encoder.down.{i}.block.", f"encoder.down_blocks.{i}.resnets."))
        if i < 3:
            mapping.append((f"down.{i}.downsample.", f"down_blocks.{i}.downsamplers.0."))
            mapping.append((f"up.{3 - i}.upsample.", f"up_blocks.{i}.upsamplers.0."))
        mapping.append((f"decoder.up.{3 - i}.block.", f"decoder.up_blocks.{i}.resnets."))
    for i in range(2):
        mapping.append((f"mid.block_{i + 1}.", f"mid_block.resnets.{i}."))
    attn = [
        ("norm.", "group_norm."),
        ("q.", "to_q."),
        ("k.", "to_k."),
        ("v.", "to_v."),
        ("proj_out.", "to_out.0."),
    ]
    out = {}
    for key, value in state.items():
        new = key
        for sd, hf in mapping:
            new = new.replace(hf, sd)
        if "attn_1" in new:
            for sd, hf in attn:
                new = new.replace(hf, sd)
            if new.endswith((".q.weight", ".k.weight", ".v.weight", ".proj_out.weight")):
                value = value.reshape(*value.shape, 1, 1)
        out["first_stage_model." + new] = value
    return out


def _convert_text_encoder(state: dict[str, Any]) -> dict[str, Any]:
    prefix = "cond_stage_model.transformer."
    return {
        prefix + (k if k.startswith("text_model.") else "text_model." + k): v
        for k, v in state.items()
    }


def build_vae_file(vae: Any, path: Path) -> None:
    """Save a VAE as a standalone original-layout file (like vae-ft-mse-840000-ema-pruned)."""
    from safetensors.torch import save_file

    prefix = len("first_stage_model.")
    state = {k[prefix:]: v.contiguous() for k, v in _convert_vae(vae.state_dict()).items()}
    save_file(state, str(path))


def build_single_file(pipe: Any, path: Path) -> None:
    """Save `pipe`'s UNet, VAE and text encoder as one original-layout .safetensors file."""
    from safetensors.torch import save_file

    state = {
        **_convert_unet(pipe.unet.state_dict()),
        **_convert_vae(pipe.vae.state_dict()),
        **_convert_text_encoder(pipe.text_encoder.state_dict()),
    }
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def build_prompt_lm(folder: Path, seed: int = 30) -> None:
    """A tiny random GPT-2 and a byte-level BPE tokenizer, saved like a hub model."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {char: i for i, char in enumerate(_bytes_to_unicode().values())}
    merges = [("Ġ", "a"), ("Ġ", "c"), ("a", "t"), ("Ġ", "t"), ("h", "e")]
    for left, right in merges:
        vocab[left + right] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    GPT2Tokenizer(vocab=vocab, merges=merges).save_pretrained(folder)
    write_vocab_files(folder, vocab, merges)
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(vocab),
        n_positions=96,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=len(vocab) - 1,
        eos_token_id=len(vocab) - 1,
    )
    GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)


def write_models_file(root: Path, **paths: Path) -> Path:
    text = f"""default_model = "tiny"

[models.tiny]
source = "{paths["sd"]}"

[models.tiny-xl]
source = "{paths["sdxl"]}"

[models.tiny-file]
source = "{paths["single_file"]}"
config = "{paths["sd"]}"

[vaes.other]
source = "{paths["vae"]}"

[vaes.other-file]
source = "{paths["vae_file"]}"
config = "{paths["vae"]}"

[loras.detail]
source = "{paths["lora"]}"

[loras.detail-copy]
source = "{paths["lora"]}"
"""
    path = root / "models.toml"
    path.write_text(text, encoding="utf-8")
    return path


def build_all(root: Path) -> TinyModels:
    """Build every tiny artefact under `root` (about 10 s on one CPU thread)."""
    root.mkdir(parents=True, exist_ok=True)
    paths = {
        "sd": root / "tiny-sd",
        "sdxl": root / "tiny-sdxl",
        "single_file": root / "tiny-sd-file.safetensors",
        "lora": root / "loras" / "detail.safetensors",
        "vae": root / "other-vae",
        "vae_file": root / "other-vae.safetensors",
        "prompt_lm": root / "prompt-lm",
    }
    pipe = build_sd(paths["sd"])
    build_single_file(pipe, paths["single_file"])
    build_lora(pipe, paths["lora"])
    vae = make_vae(seed=99)
    vae.save_pretrained(paths["vae"], safe_serialization=True)
    build_vae_file(vae, paths["vae_file"])
    build_sdxl(paths["sdxl"])
    build_prompt_lm(paths["prompt_lm"])
    models_file = write_models_file(root, **paths)
    return TinyModels(root=root, models_file=models_file, **paths)


@functools.cache
def tiny_models() -> TinyModels:
    """The tiny models, built once per test process into a temporary folder."""
    root = Path(tempfile.mkdtemp(prefix="img2img-tiny-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return build_all(root)


def gradient_image(width: int = 96, height: int = 64) -> Image.Image:
    """A deterministic, structured RGB test picture."""
    import numpy as np

    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height)], -1)
    return Image.fromarray(pixels.astype("uint8"), "RGB")


def png_bytes(image: Image.Image | None = None) -> bytes:
    buffer = io.BytesIO()
    (image or gradient_image()).save(buffer, "PNG")
    return buffer.getvalue()

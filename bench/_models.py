"""Random-weight models for the GPU benches: SD-1.5-sized, SDXL-sized, or the tests' tiny ones.

Built from configs (no model hub), initialised directly on the target device, saved as diffusers
folders with a random LoRA and a second VAE, and named in a models.toml for the local backend.
Random weights give meaningless pictures but exactly the compute and memory of the real models.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import tiny_models  # noqa: E402
import torch  # noqa: E402

SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SDXL_UNET: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [320, 640, 1280],
    "layers_per_block": 2,
    "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [5, 10, 20],
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,  # 6 time ids x 256 + pooled 1280
}
VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 512,
}
CLIP_L: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}
CLIP_BIG_G: dict[str, Any] = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": 1280,
    "hidden_act": "gelu",
}


@dataclass(frozen=True)
class BenchModels:
    models_file: Path
    model: str  # its name in the models file
    source: Path  # its diffusers folder
    arch: str  # "sd" or "sdxl"
    size: int  # the side the benches use, px
    device: str


def _text(config: dict[str, Any], with_projection: bool = False) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    options = {
        "vocab_size": 49408,
        "max_position_embeddings": 77,
        "bos_token_id": tiny_models.BOS_ID,
        "eos_token_id": tiny_models.EOS_ID,
        "pad_token_id": tiny_models.EOS_ID,
        **config,
    }
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(CLIPTextConfig(**options))


def _scheduler() -> Any:
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )


def _build_pipeline(arch: str, folder: Path, device: str) -> Any:
    from diffusers import (
        AutoencoderKL,
        StableDiffusionImg2ImgPipeline,
        StableDiffusionXLImg2ImgPipeline,
        UNet2DConditionModel,
    )

    torch.manual_seed(0)
    tokenizer = tiny_models.make_clip_tokenizer()
    with torch.device(device):
        if arch == "sdxl":
            pipe = StableDiffusionXLImg2ImgPipeline(
                unet=UNet2DConditionModel(**SDXL_UNET),
                vae=AutoencoderKL(**VAE, scaling_factor=0.13025, force_upcast=True),
                text_encoder=_text(CLIP_L),
                text_encoder_2=_text(CLIP_BIG_G, with_projection=True),
                tokenizer=tokenizer,
                tokenizer_2=tokenizer,
                scheduler=_scheduler(),
                requires_aesthetics_score=False,
            )
        else:
            pipe = StableDiffusionImg2ImgPipeline(
                unet=UNet2DConditionModel(**SD15_UNET),
                vae=AutoencoderKL(**VAE),
                text_encoder=_text(CLIP_L),
                tokenizer=tokenizer,
                scheduler=_scheduler(),
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
    pipe.to(torch.float16)
    tiny_models._save_pipeline(pipe, folder)
    return pipe


def _build_lora(pipe: Any, path: Path) -> None:
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    unet = pipe.unet
    unet.add_adapter(
        LoraConfig(
            r=8,
            lora_alpha=8,
            init_lora_weights=False,
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        )
    )
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    path.parent.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        save_directory=str(path.parent), unet_lora_layers=layers, weight_name=path.name
    )
    unet.delete_adapters(unet.active_adapters())


def build(kind: str, root: Path, device: str) -> BenchModels:
    """kind: "tiny" (CPU-sized, 64 px), "sd15" (512 px) or "sdxl" (1024 px)."""
    if kind == "tiny":
        tiny = tiny_models.build_all(root)
        return BenchModels(tiny.models_file, "tiny", tiny.sd, "sd", 64, device)
    arch = "sdxl" if kind == "sdxl" else "sd"
    folder = root / kind
    pipe = _build_pipeline(arch, folder, device)
    _build_lora(pipe, root / "loras" / f"{kind}-lora.safetensors")
    torch.manual_seed(1)
    from diffusers import AutoencoderKL

    with torch.device(device):
        other_vae = AutoencoderKL(**VAE).to(torch.float16)
    other_vae.save_pretrained(root / f"{kind}-vae")
    del pipe, other_vae
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    models_file = root / "models.toml"
    models_file.write_text(
        f'default_model = "{kind}"\n'
        f'[models.{kind}]\nsource = "{folder}"\n'
        f'[vaes.other]\nsource = "{root / f"{kind}-vae"}"\n'
        f'[loras.detail]\nsource = "{root / "loras" / f"{kind}-lora.safetensors"}"\n',
        encoding="utf-8",
    )
    return BenchModels(models_file, kind, folder, arch, 1024 if arch == "sdxl" else 512, device)

"""ToMe (`tomesd`) on the tiny SD and SDXL models: it takes effect on both, stays reproducible,
and follows the models file's per-model settings (inference.local.tome).

The tiny UNets keep the real block layouts where it matters: SD has attention in its first down
block (downsample 1), SDXL from its second (downsample 2), as real SDXL and Pony do. Local folders
only: nothing here asks the hub.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from test_local_engine import assert_batch_equals_alone, differ, generate
from tiny_models import TinyModels

from inference.local.engine import Engine
from inference.local.registry import ModelRegistry
from inference.local.tome import ToMeOptions, first_attention_downsample, resolve_tome

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")

SD15_BLOCKS = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
SDXL_BLOCKS = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")


@pytest.fixture(scope="module")
def tome_registry(models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    """The tiny models under several names, some with their own ToMe settings."""
    entries = {
        "tiny": (models.sd, ""),
        "sd-level-2": (models.sd, "tomesd_max_downsample = 2"),
        "tiny-xl": (models.sdxl, ""),
        "xl-off": (models.sdxl, "tomesd_ratio = 0"),
        "xl-level-1": (models.sdxl, "tomesd_max_downsample = 1"),
        "xl-light": (models.sdxl, "tomesd_ratio = 0.2"),
    }
    text = "".join(
        f'[models.{name}]\nsource = "{source}"\n{extra}\n'
        for name, (source, extra) in entries.items()
    )
    path = tmp_path_factory.mktemp("tome") / "models.toml"
    path.write_text(text, encoding="utf-8")
    return ModelRegistry.load(path)


@pytest.fixture(scope="module")
def tome_engine() -> Iterator[Engine]:
    engine = Engine(device="cpu", batch_size=4, cache_size=6)
    yield engine
    engine.close()


def xl(engine: Engine, registry: ModelRegistry, model_id: str, **fields: object) -> np.ndarray:
    (image,) = generate(engine, registry, model_id=model_id, seed=31, **fields)
    return image


# -- the defaults ---------------------------------------------------------------------------------


def test_the_default_level_is_the_first_down_block_with_attention(models: TinyModels) -> None:
    assert first_attention_downsample(SD15_BLOCKS) == 1
    assert first_attention_downsample(SDXL_BLOCKS) == 2
    assert first_attention_downsample(("DownBlock2D", "DownBlock2D")) == 2  # the mid block
    for folder, level in ((models.sd, 1), (models.sdxl, 2)):
        config = json.loads((folder / "unet" / "config.json").read_text())
        assert first_attention_downsample(config["down_block_types"]) == level


def test_models_file_settings_override_the_defaults() -> None:
    xl_config = {"down_block_types": list(SDXL_BLOCKS)}
    assert resolve_tome(ToMeOptions(), "sdxl", xl_config) == (0.4, 2)
    assert resolve_tome(ToMeOptions(), "sd", {"down_block_types": SD15_BLOCKS}) == (0.5, 1)
    assert resolve_tome(ToMeOptions(ratio=0.0, max_downsample=4), "sdxl", xl_config) == (0.0, 4)


# -- on the tiny models ---------------------------------------------------------------------------


@pytest.mark.parametrize("model_id", ["tiny-xl", "tiny"])
def test_tomesd_changes_the_image(
    tome_engine: Engine, tome_registry: ModelRegistry, model_id: str
) -> None:
    on = xl(tome_engine, tome_registry, model_id, tomesd="yes")
    off = xl(tome_engine, tome_registry, model_id, tomesd="no")
    assert differ(on, off) > 0.5


def test_tomesd_on_sdxl_is_reproducible(tome_engine: Engine, tome_registry: ModelRegistry) -> None:
    first = xl(tome_engine, tome_registry, "tiny-xl", tomesd="yes")
    xl(tome_engine, tome_registry, "tiny-xl", tomesd="yes", prompt="something else")
    torch.rand(100)  # the global RNG moves on between calls
    assert np.array_equal(first, xl(tome_engine, tome_registry, "tiny-xl", tomesd="yes"))


def test_an_sdxl_batch_with_tomesd_equals_the_jobs_run_alone(
    tome_engine: Engine, tome_registry: ModelRegistry
) -> None:
    common = {"model_id": "tiny-xl", "tomesd": "yes"}
    assert_batch_equals_alone(
        tome_engine,
        tome_registry,
        [
            {**common, "prompt": "a red fox", "seed": 100},
            {**common, "prompt": "a blue bird", "seed": 200, "samples": 2},
        ],
    )


def test_per_model_settings_are_honoured(tome_engine: Engine, tome_registry: ModelRegistry) -> None:
    off = xl(tome_engine, tome_registry, "tiny-xl", tomesd="no")
    default = xl(tome_engine, tome_registry, "tiny-xl", tomesd="yes")
    assert np.array_equal(xl(tome_engine, tome_registry, "xl-off", tomesd="yes"), off)
    # downsample 1 reaches no attention on SDXL: what tomesd's own default did
    assert np.array_equal(xl(tome_engine, tome_registry, "xl-level-1", tomesd="yes"), off)
    light = xl(tome_engine, tome_registry, "xl-light", tomesd="yes")
    assert differ(light, off) > 0.1 and differ(light, default) > 0.1
    applied = {
        name: tome_engine.cache.get(tome_registry.model(name)).tome
        for name in ("tiny-xl", "xl-light", "xl-off")
    }
    assert applied == {"tiny-xl": (0.4, 2), "xl-light": (0.2, 2), "xl-off": None}


def test_a_deeper_level_on_sd_changes_the_image(
    tome_engine: Engine, tome_registry: ModelRegistry
) -> None:
    level_1 = xl(tome_engine, tome_registry, "tiny", tomesd="yes")
    level_2 = xl(tome_engine, tome_registry, "sd-level-2", tomesd="yes")  # adds the mid block
    assert differ(level_1, level_2) > 0.1
    assert tome_engine.cache.get(tome_registry.model("sd-level-2")).tome == (0.5, 2)

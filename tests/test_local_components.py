"""Per-batch pipeline set-up against a recording fake pipeline (only what changed is redone), and
on the tiny model where the pixels tell what is switched on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tiny_models import TinyModels, gradient_image

from inference.errors import InvalidRequest
from inference.local import components
from inference.local.loading import LoadedModel
from inference.local.registry import LoraEntry, ModelEntry, Source, VaeEntry


class FakePipe:
    def __init__(self, refuse: set[str] | None = None, *, refuse_set: bool = False) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.vae: Any = "own-vae"
        self.refuse = refuse or set()
        self.refuse_set = refuse_set

    def load_lora_weights(self, source: str, **options: Any) -> None:
        self.calls.append(("load", options["adapter_name"]))
        if options["adapter_name"] in self.refuse:
            raise RuntimeError("size mismatch for down_blocks.0...\nmore detail")

    def set_adapters(self, names: list[str], adapter_weights: list[float]) -> None:
        self.calls.append(("set", tuple(names), tuple(adapter_weights)))
        if self.refuse_set:
            raise ValueError("adapter weights do not fit")

    def enable_lora(self) -> None:
        self.calls.append(("enable",))

    def disable_lora(self) -> None:
        self.calls.append(("disable",))

    def delete_adapters(self, names: list[str]) -> None:
        self.calls.append(("delete", tuple(names)))


def model(pipe: FakePipe) -> LoadedModel:
    return LoadedModel(name="m", arch="sd", pipe=pipe, base_scheduler={}, own_vae=pipe.vae)


def lora(name: str) -> LoraEntry:
    return LoraEntry(name, Source(f"/{name}.safetensors", "file"))


def test_loras_load_once_and_switch_by_strength() -> None:
    pipe = FakePipe()
    loaded = model(pipe)
    components.apply_loras(loaded, ((lora("a"), 1.0),))
    components.apply_loras(loaded, ((lora("a"), 1.0),))  # same state: nothing to do
    components.apply_loras(loaded, ((lora("a"), 0.5), (lora("b"), 1.0)))
    components.apply_loras(loaded, ())
    components.apply_loras(loaded, ((lora("b"), 0.25),))
    assert pipe.calls == [
        ("load", "a"),
        ("enable",),
        ("set", ("a",), (1.0,)),
        ("load", "b"),
        ("enable",),
        ("set", ("a", "b"), (0.5, 1.0)),
        ("disable",),
        ("enable",),
        ("set", ("b",), (0.25,)),
    ]


def test_loaded_loras_are_bounded_by_deleting_unused_ones() -> None:
    pipe = FakePipe()
    loaded = model(pipe)
    count = components.MAX_LOADED_LORAS + 2
    for index in range(count):
        components.apply_loras(loaded, ((lora(f"l{index}"), 1.0),))
    assert len(loaded.loras) == components.MAX_LOADED_LORAS
    deleted = [c[1][0] for c in pipe.calls if c[0] == "delete"]
    assert deleted == ["l0", "l1"]  # the least recently used


def test_a_lora_that_fails_to_load_is_refused_and_forgotten() -> None:
    pipe = FakePipe(refuse={"bad"})
    loaded = model(pipe)
    with pytest.raises(InvalidRequest) as caught:
        components.apply_loras(loaded, ((lora("bad"), 1.0),))
    assert caught.value.field == "lora_model"
    assert "another architecture" in str(caught.value) and "size mismatch" not in str(caught.value)
    assert "more detail" not in str(caught.value)
    assert "bad" not in loaded.loras and ("delete", ("bad",)) in pipe.calls
    components.apply_loras(loaded, ())  # nothing loaded: nothing to disable
    assert pipe.calls[-1] == ("delete", ("bad",))


def test_a_failed_set_adapters_makes_the_next_batch_switch_loras_off() -> None:
    pipe = FakePipe(refuse_set=True)
    loaded = model(pipe)
    with pytest.raises(ValueError):
        components.apply_loras(loaded, ((lora("a"), 1.0),))  # "a" loaded and switched on
    components.apply_loras(loaded, ())
    assert pipe.calls[-1] == ("disable",)


def test_lora_names_peft_refuses_load_under_distinct_adapter_ids() -> None:
    pipe = FakePipe()
    loaded = model(pipe)
    components.apply_loras(loaded, ((lora("a.b"), 1.0), (lora("a_b"), 0.5), (lora("é"), 1.0)))
    adapters = [c[1] for c in pipe.calls if c[0] == "load"]
    assert adapters == ["a_b", "a_b_2", "_"]
    assert ("set", ("a_b", "a_b_2", "_"), (1.0, 0.5, 1.0)) in pipe.calls
    assert list(loaded.loras) == ["a.b", "a_b", "é"]  # the names users see


def test_vaes_load_once_per_model_and_the_own_one_comes_back() -> None:
    pipe = FakePipe()
    loaded = model(pipe)
    loads: list[str] = []

    def load(entry: VaeEntry) -> str:
        loads.append(entry.name)
        return f"vae-{entry.name}"

    other = VaeEntry("other", Source("/other", "folder"))
    components.apply_vae(loaded, other, load)
    assert pipe.vae == "vae-other"
    components.apply_vae(loaded, None, load)
    assert pipe.vae == "own-vae"
    components.apply_vae(loaded, other, load)
    assert pipe.vae == "vae-other" and loads == ["other"]


# -- on the tiny model (tests/tiny_models.py) ---------------------------------------------------


@pytest.fixture
def tiny(models: TinyModels) -> LoadedModel:
    import torch

    from inference.local.loading import load_model

    entry = ModelEntry("tiny", Source(str(models.sd), "folder"), "sd")
    return load_model(entry, device="cpu", dtype=torch.float32)


def image(loaded: LoadedModel) -> np.ndarray:
    """A few denoising steps at 64x64, seeded: the same pipeline state gives the same pixels."""
    import torch

    out = loaded.pipe(
        prompt="a red fox",
        image=gradient_image(64, 64),
        strength=0.3,
        num_inference_steps=10,
        generator=torch.Generator().manual_seed(1),
        output_type="np",
    )
    return np.asarray(out.images[0], dtype=np.float64) * 255  # 0..1 floats as 8-bit levels


def test_a_lora_load_failing_partway_leaves_no_lora_on(
    tiny: LoadedModel, models: TinyModels, tmp_path: Path
) -> None:
    before = image(tiny)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\0" * 64)
    detail = LoraEntry("detail", Source(str(models.lora), "file"))
    with pytest.raises(InvalidRequest):
        components.apply_loras(
            tiny, ((detail, 1.0), (LoraEntry("broken", Source(str(broken), "file")), 1.0))
        )
    components.apply_loras(tiny, ())
    assert np.array_equal(image(tiny), before)


def test_a_lora_named_with_dots_loads_and_changes_the_image(
    tiny: LoadedModel, models: TinyModels
) -> None:
    before = image(tiny)
    dotted = LoraEntry("lcm-lora-sdv1.5", Source(str(models.lora), "file"))
    components.apply_loras(tiny, ((dotted, 1.0),))
    assert list(tiny.loras) == ["lcm-lora-sdv1.5"]
    assert float(np.abs(image(tiny) - before).mean()) > 0.5

"""Per-batch pipeline set-up against a recording fake pipeline: only what changed is redone."""

from __future__ import annotations

from typing import Any

import pytest

from inference.errors import InvalidRequest
from inference.local import components
from inference.local.loading import LoadedModel
from inference.local.registry import LoraEntry, Source, VaeEntry


class FakePipe:
    def __init__(self, refuse: set[str] | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.vae: Any = "own-vae"
        self.refuse = refuse or set()

    def load_lora_weights(self, source: str, **options: Any) -> None:
        self.calls.append(("load", options["adapter_name"]))
        if options["adapter_name"] in self.refuse:
            raise RuntimeError("size mismatch for down_blocks.0...\nmore detail")

    def set_adapters(self, names: list[str], adapter_weights: list[float]) -> None:
        self.calls.append(("set", tuple(names), tuple(adapter_weights)))

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

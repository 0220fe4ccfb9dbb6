"""Loads from several threads of one process at once (a backend closing while its worker thread
still loads, beside the next backend's worker) each get real weights, never `meta` ones."""

from __future__ import annotations

import threading
from typing import Any

import torch
from tiny_models import TinyModels

from inference.local.loading import load_model, load_vae
from inference.local.registry import ModelRegistry


def _meta_parameters(module: Any) -> list[str]:
    return [name for name, p in module.named_parameters() if p.device.type == "meta"]


def test_concurrent_loads_each_get_real_weights(
    models: TinyModels, registry: ModelRegistry
) -> None:
    entry, vae = registry.model("tiny"), registry.vae("other")
    assert vae is not None
    loaded: list[Any] = []
    failures: list[BaseException] = []
    start = threading.Barrier(4)

    def load(what: str) -> None:
        start.wait()
        try:
            if what == "model":
                loaded.append(load_model(entry, device="cpu", dtype=torch.float32).pipe.unet)
            else:
                loaded.append(load_vae(vae, device="cpu", dtype=torch.float32))
        except Exception as exc:  # reported below with the others
            failures.append(exc)

    threads = [threading.Thread(target=load, args=(w,)) for w in ("model", "vae", "model", "vae")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(loaded) == 4
    assert [_meta_parameters(module) for module in loaded] == [[]] * 4

"""Loading pipelines, VAEs and preview VAEs from registry entries; the LRU cache of loaded models.

Hub ids, local diffusers folders and single `.safetensors` files (with a local config folder) all
go through diffusers' own loaders. A hub id loads from the local cache only with HF_HUB_OFFLINE=1 or
when the hub cannot be reached (`inference.local.hub`), and fails at once when it is not cached
(the error says what to do for now, the log how to fix it).
fp16 on CUDA, fp32 on CPU. SD pipelines load without diffusers' safety checker: detection runs in
`inference.postprocess` for every backend alike.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from inference.errors import BackendError, BackendUnavailable
from inference.local.hub import cache_only, hub_repo
from inference.local.quiet import silence_known_noise
from inference.local.registry import Arch, ModelEntry, Source, VaeEntry

__all__ = [
    "LoadedModel",
    "PipelineCache",
    "default_dtype",
    "free_memory",
    "freeze_imports",
    "load_model",
    "load_preview_vae",
    "load_vae",
    "module_loading",
    "resolve_device",
]

log = logging.getLogger(__name__)
_imports_frozen = False
_LOADING = threading.RLock()


@contextmanager
def module_loading() -> Iterator[None]:
    """Hold while building torch modules from weights (models, VAEs, LoRAs, the prompt model).

    diffusers, transformers and accelerate load by patching torch process-wide (empty-weight
    `register_parameter`, skipped `nn.init`, the default dtype) and restore it on exit. Two loads
    at once in one process interleave those patches and leave weights on the `meta` device
    ("Unsupported device type 'meta'"), so loads take turns. A backend closing while its worker
    thread still loads must not break the next backend's load either.
    """
    with _LOADING:
        yield


@dataclass(eq=False)
class LoadedModel:
    """A pipeline in memory and the per-batch state applied to it (see `components`)."""

    name: str
    arch: Arch
    pipe: Any
    base_scheduler: dict[str, Any]
    own_vae: Any
    vaes: dict[str, Any] = field(default_factory=dict)  # swapped-in VAEs, by name
    vae_name: str | None = None
    loras: OrderedDict[str, str] = field(default_factory=OrderedDict)  # name: adapter, LRU order
    lora_state: tuple[tuple[str, float], ...] | None = ()  # None: unknown, the next batch sets it
    tome: tuple[float, int] | None = None  # (ratio, max_downsample) while patched


def resolve_device(setting: str) -> str:
    """ "cuda" or "cpu" for IMG2IMG_DEVICE ("auto" picks CUDA when a GPU is visible)."""
    if setting == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if setting == "cuda":
        raise BackendUnavailable(
            "IMG2IMG_DEVICE is cuda but no CUDA GPU is visible: fix the driver or use auto/cpu."
        )
    return "cpu"


def default_dtype(device: str) -> torch.dtype:
    return torch.float16 if device.startswith("cuda") else torch.float32


def _dtype_option(dtype: torch.dtype) -> dict[str, Any]:
    """diffusers renamed `torch_dtype` to `dtype` (0.42 warns on the old name)."""
    from diffusers.utils import deprecation_utils

    name = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
    return {name: dtype}


def _quiet_loading() -> None:
    silence_known_noise()  # before diffusers imports its pipelines
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for module in (diffusers_logging, transformers_logging):
        cast(Any, module).disable_progress_bar()


def _pipeline_class(arch: Arch) -> Any:
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

    return StableDiffusionXLImg2ImgPipeline if arch == "sdxl" else StableDiffusionImg2ImgPipeline


def _hub_arch(location: str, hub: dict[str, Any]) -> Arch:
    from diffusers import DiffusionPipeline

    config = DiffusionPipeline.load_config(location, **hub)
    return "sdxl" if "XL" in str(config.get("_class_name", "")) else "sd"


def _hub_options(source: Source, filename: str, what: str, instead: str) -> dict[str, Any]:
    """`local_files_only` for a hub id the hub cannot serve now (see `inference.local.hub`)."""
    repo = hub_repo(source)
    if repo is None:
        return {}
    only = cache_only(repo, filename, what=what, instead=instead)
    return {"local_files_only": True} if only else {}


def load_model(
    entry: ModelEntry,
    *,
    device: str,
    dtype: torch.dtype,
    make_room: Callable[[], None] = lambda: None,
) -> LoadedModel:
    """Load `entry` onto `device`; `BackendUnavailable`/`BackendError` say what went wrong.
    `make_room` runs once the checks passed, just before the weights are read (a
    `PipelineCache` evicts then; a load outside a cache has nothing to evict)."""
    source = entry.source
    _quiet_loading()
    hub = _hub_options(
        source, "model_index.json", f"Model {entry.name!r}", "choose another model (model_id)"
    )
    try:
        arch = entry.arch or _hub_arch(source.location, hub)
        cls = _pipeline_class(arch)
        extra: dict[str, Any] = {**_dtype_option(dtype), **hub}
        if arch == "sd":
            extra.update(safety_checker=None, requires_safety_checker=False)
        make_room()
        with module_loading():
            if source.kind == "file":
                pipe = cls.from_single_file(source.location, config=source.config, **extra)
            else:
                pipe = cls.from_pretrained(source.location, **extra)
        pipe.to(device)
    except OSError as exc:
        raise BackendUnavailable(f"Model {entry.name!r} could not be loaded: {exc}") from exc
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise BackendError(f"Model {entry.name!r} could not be loaded: {exc}") from exc
    pipe.set_progress_bar_config(disable=True)
    log.info("loaded model %s (%s) on %s as %s", entry.name, arch, device, dtype)
    return LoadedModel(
        name=entry.name,
        arch=arch,
        pipe=pipe,
        base_scheduler=dict(pipe.scheduler.config),
        own_vae=pipe.vae,
    )


def load_vae(entry: VaeEntry, *, device: str, dtype: torch.dtype) -> Any:
    from diffusers import AutoencoderKL as _AutoencoderKL

    autoencoder: Any = _AutoencoderKL
    source: Source = entry.source
    _quiet_loading()
    config = f"{source.subfolder}/config.json" if source.subfolder else "config.json"
    what, instead = f"VAE {entry.name!r}", "choose another VAE or none (vae)"
    options = {**_dtype_option(dtype), **_hub_options(source, config, what, instead)}
    if source.kind != "file" and source.subfolder:
        options["subfolder"] = source.subfolder
    try:
        with module_loading():
            if source.kind == "file":
                vae = autoencoder.from_single_file(source.location, config=source.config, **options)
            else:
                vae = autoencoder.from_pretrained(source.location, **options)
    except OSError as exc:
        raise BackendUnavailable(f"VAE {entry.name!r} could not be loaded: {exc}") from exc
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise BackendError(f"VAE {entry.name!r} could not be loaded: {exc}") from exc
    return vae.to(device)


def load_preview_vae(source: Source, *, device: str, dtype: torch.dtype) -> Any:
    """A model's `preview_vae`: a diffusers `AutoencoderTiny` (TAESD) for live previews.

    Errors are diffusers' own; `BackendUnavailable` (logged) when the hub cannot serve it."""
    from diffusers import AutoencoderTiny as _AutoencoderTiny

    autoencoder: Any = _AutoencoderTiny
    _quiet_loading()
    what = f"Preview VAE {source.location!r} (previews use the latent projection)"
    options = {**_dtype_option(dtype), **_hub_options(source, "config.json", what, "nothing")}
    with module_loading():
        vae = autoencoder.from_pretrained(source.location, **options)
    return vae.to(device).eval()


def freeze_imports() -> None:
    """Import the pipeline classes, then hide every object alive so far from the cyclic GC.

    torch, diffusers and transformers leave some 400,000 long-lived objects (modules, classes,
    functions). Each full collection walks them all: about 350 ms on one CPU, holding the GIL,
    so the bot's event loop stalls with it. Frozen objects are still freed by reference counting.
    Done once per process, before any model loads: models are not frozen, so that an evicted one
    stays collectable.
    """
    global _imports_frozen
    if _imports_frozen:
        return
    _quiet_loading()
    _pipeline_class("sd")
    _pipeline_class("sdxl")
    gc.freeze()
    _imports_frozen = True


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class PipelineCache:
    """Keeps at most `size` models loaded, evicting the least recently used to load another.

    The eviction waits for the loader's checks (the hub or its cache can serve the model, its
    architecture) but not for the load: a model that cannot load then evicts nothing, and the
    next request for the cached one needs no reload. It must not wait longer: on CUDA the evicted
    model has to leave GPU memory before the new one's weights arrive (two SDXL models in fp16
    take some 14 GB), so loading first could run out of memory. A load that fails while reading
    the weights (a damaged file) still costs the evicted model.
    """

    def __init__(
        self, loader: Callable[[ModelEntry, Callable[[], None]], LoadedModel], size: int
    ) -> None:
        """`loader(entry, make_room)` calls `make_room()` once it is about to read weights."""
        if size < 1:
            raise ValueError("the cache must hold at least one model")
        self._loader = loader
        self._size = size
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()

    def __contains__(self, name: str) -> bool:
        return name in self._models

    def get(self, entry: ModelEntry) -> LoadedModel:
        model = self._models.get(entry.name)
        if model is not None:
            self._models.move_to_end(entry.name)
            return model
        model = self._loader(entry, self._evict_for_one)
        self._models[entry.name] = model
        return model

    def _evict_for_one(self) -> None:
        while len(self._models) >= self._size:
            name = next(iter(self._models))
            del self._models[name]  # drop the only reference before freeing memory
            log.info("unloading model %s", name)
            free_memory()

    def clear(self) -> None:
        self._models.clear()
        free_memory()

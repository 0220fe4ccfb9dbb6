"""Per-batch pipeline set-up: the VAE, the LoRA adapters and their strengths, ToMe.

A cached pipeline is shared by consecutive batches with different options, so each batch states
what it needs and these functions change only what differs from the pipeline's current state.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable
from typing import Any

from inference.errors import InvalidRequest
from inference.local.hub import cache_only, cached_folder, hub_repo
from inference.local.loading import LoadedModel, module_loading
from inference.local.registry import LoraEntry, VaeEntry
from inference.local.tome import ToMeOptions, resolve_tome

__all__ = ["MAX_LOADED_LORAS", "apply_loras", "apply_tome", "apply_vae"]

log = logging.getLogger(__name__)

MAX_LOADED_LORAS = 8  # adapters kept loaded per model; unused ones beyond this are deleted
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")  # characters kept out of PEFT adapter names


def apply_vae(model: LoadedModel, entry: VaeEntry | None, load: Callable[[VaeEntry], Any]) -> None:
    """Use `entry`'s VAE (loaded once per model), or the model's own for None."""
    name = entry.name if entry else None
    if model.vae_name == name:
        return
    if entry is None:
        model.pipe.vae = model.own_vae
    else:
        if entry.name not in model.vaes:
            model.vaes[entry.name] = load(entry)
        model.pipe.vae = model.vaes[entry.name]
    model.vae_name = name


def apply_loras(model: LoadedModel, loras: tuple[tuple[LoraEntry, float], ...]) -> None:
    """Activate exactly `loras` with their strengths (loading those not loaded yet)."""
    wanted = tuple((entry.name, strength) for entry, strength in loras)
    if wanted == model.lora_state:
        return
    try:
        _switch_loras(model, loras)
    except BaseException:
        # PEFT switches each adapter on as it loads, and a later load or `set_adapters` may then
        # fail: which adapters are on is unknown, so the next batch sets its own in any case.
        model.lora_state = None
        raise
    model.lora_state = wanted
    _trim_loras(model, keep={n for n, _ in wanted})


def _switch_loras(model: LoadedModel, loras: tuple[tuple[LoraEntry, float], ...]) -> None:
    pipe = model.pipe
    for entry, _ in loras:
        if entry.name in model.loras:
            model.loras.move_to_end(entry.name)
        else:
            _load_lora(model, entry)
    if loras:
        pipe.enable_lora()
        adapters = [model.loras[entry.name] for entry, _ in loras]
        pipe.set_adapters(adapters, adapter_weights=[s for _, s in loras])
    elif model.loras:
        pipe.disable_lora()


def _load_lora(model: LoadedModel, entry: LoraEntry) -> None:
    location, options = _lora_location(entry)
    adapter = _adapter_id(model, entry.name)
    options["adapter_name"] = adapter
    if entry.weight_name:
        options["weight_name"] = entry.weight_name
    try:
        with module_loading():
            model.pipe.load_lora_weights(location, **options)
    except (ValueError, RuntimeError, KeyError, TypeError, OSError) as exc:
        _forget_adapter(model, adapter)
        raise _lora_failure(model, entry, exc) from exc
    model.loras[entry.name] = adapter
    log.info("loaded LoRA %s into %s as adapter %s", entry.name, model.name, adapter)


def _adapter_id(model: LoadedModel, name: str) -> str:
    """The PEFT adapter name for the LoRA entry `name`, unique among the model's adapters.

    PEFT names modules after adapters and refuses "." in them (KeyError), and models-file names
    like `lcm-lora-sdv1.5` are common: those load under a sanitised id, users still see `name`.
    """
    base = _UNSAFE.sub("_", name) or "lora"
    taken = set(model.loras.values())
    adapter, count = base, 1
    while adapter in taken:
        count += 1
        adapter = f"{base}_{count}"
    return adapter


def _lora_location(entry: LoraEntry) -> tuple[str, dict[str, Any]]:
    """Where `entry` loads from, with the options that takes: a hub id the hub cannot serve now
    loads from its cached copy, or fails at once (see `inference.local.hub`)."""
    repo = hub_repo(entry.source)
    what = f"LoRA {entry.name!r}"
    instead = "leave it out or choose another LoRA (lora_model)"
    fix = "set its `source` in the models file to a local .safetensors file"
    if repo is None or not cache_only(
        repo, entry.weight_name, what=what, instead=instead, local_fix=fix
    ):
        return entry.source.location, {}
    if entry.weight_name:
        return repo, {"local_files_only": True}
    # diffusers picks the weights file by listing the repository, which needs the hub
    return cached_folder(repo) or repo, {}


def _lora_failure(model: LoadedModel, entry: LoraEntry, exc: Exception) -> InvalidRequest:
    """What the requester sees: which LoRA, and what to do. The exception (it may quote paths or
    library internals) goes to the log."""
    log.warning(
        "LoRA %s could not be loaded into model %s: %s: %s",
        entry.name,
        model.name,
        type(exc).__name__,
        exc,
    )
    if isinstance(exc, OSError):
        reason = "its weights could not be read on this machine"
    else:
        reason = f"it does not fit this {model.arch.upper()} model (made for another architecture?)"
    return InvalidRequest(
        f"LoRA {entry.name!r} could not be loaded into model {model.name!r}: {reason}. "
        "Leave it out or choose another LoRA; the log has the details.",
        field="lora_model",
    )


def _forget_adapter(model: LoadedModel, name: str) -> None:
    with contextlib.suppress(ValueError, KeyError, AttributeError):  # nothing of it was loaded
        model.pipe.delete_adapters([name])


def _trim_loras(model: LoadedModel, keep: set[str]) -> None:
    for name, adapter in list(model.loras.items()):
        if len(model.loras) <= MAX_LOADED_LORAS:
            break
        if name not in keep:
            model.pipe.delete_adapters([adapter])
            del model.loras[name]


def apply_tome(model: LoadedModel, enabled: bool, options: ToMeOptions) -> None:
    """Patch the UNet with ToMe at the model's settings (`inference.local.tome`) or remove it.

    `use_rand=False`: ToMe's random choice draws from a generator copied off the global RNG, so
    the same seed could give different images; without it a job's output is reproducible and
    independent of the batch it ran in.
    """
    import tomesd

    ratio, level = resolve_tome(options, model.arch, model.pipe.unet.config)
    wanted = (ratio, level) if enabled and ratio > 0 else None
    if wanted == model.tome:
        return
    if wanted is None:
        tomesd.remove_patch(model.pipe)
    else:
        tomesd.apply_patch(model.pipe, ratio=ratio, max_downsample=level, use_rand=False)
        log.info("ToMe on %s: ratio %s, max_downsample %s", model.name, ratio, level)
    model.tome = wanted

"""Known noise from diffusers, transformers, peft and huggingface_hub, dropped where it is emitted.

Each filter drops one message, at the logger (or for the warning) that emits it, and nothing else:
- transformers: "`CLIPImageProcessor` requires torchvision (not installed); falling back to ...Pil"
  when diffusers imports its pipelines. The PIL fallback is what we want (no torchvision needed).
- diffusers: "There are modules in X that should be kept in float32: []" on every `.to(dtype)`
  (single-file loads, SDXL's VAE upcast); with an empty list there is nothing to keep.
- diffusers: "No LoRA keys associated to CLIPTextModel ... This is safe to ignore" for LoRAs that
  train the UNet only, the usual kind. (The same message for the UNet itself is kept.)
- peft: "Already found a `peft_config` attribute in the model", when a second LoRA loads: several
  adapters at once is what `lora_model` asks for.
- diffusers: "The config attributes {'block_out_channels': ...} were passed to AutoencoderTiny, but
  are not expected" when a preview VAE (TAESD) saved by diffusers itself is loaded.
- huggingface_hub: "The `local_dir_use_symlinks` argument is deprecated", passed by diffusers
  when it reads a hub id's configs.
The "Token indices sequence length" warning is avoided where prompts are tokenized
(`inference.local.windows`): long prompts are windowed on purpose.
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["silence_known_noise"]


class _DropMessage(logging.Filter):
    """Drops the records whose message contains every one of `fragments`."""

    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not all(fragment in message for fragment in self.fragments)


_LOG_FILTERS = {
    "transformers.utils.import_utils": _DropMessage(
        "requires torchvision (not installed); falling back to"
    ),
    "diffusers.models.modeling_utils": _DropMessage("should be kept in float32: []."),
    "diffusers.loaders.lora_base": _DropMessage("No LoRA keys associated to", "safe to ignore"),
    "diffusers.configuration_utils": _DropMessage(
        "block_out_channels", "were passed to AutoencoderTiny, but are not expected"
    ),
}
_WARNINGS = (  # (the start of the message, its category)
    ("Already found a `peft_config` attribute in the model", UserWarning),
    ("The `local_dir_use_symlinks` argument is deprecated", UserWarning),
)


def silence_known_noise() -> None:
    """Install the filters; call before diffusers' pipelines are imported. Idempotent."""
    for name, noise in _LOG_FILTERS.items():
        logging.getLogger(name).addFilter(noise)  # a filter already there is not added twice
    # Added again on every call: `warnings.catch_warnings` (pytest's, for one) restores the list.
    for message, category in _WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)

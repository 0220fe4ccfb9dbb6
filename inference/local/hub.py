"""Hub ids in the models file: loaded from the Hugging Face Hub when it answers, else its cache.

Left alone, huggingface_hub retries an unreachable hub for about 30 s and diffusers then reports
that the repository "does not appear to have a file named model_index.json". Before a hub id
loads, `cache_only` asks the hub once, without retries (within HF_HUB_ETAG_TIMEOUT, 10 s by
default; a failed name lookup or a refused connection answers at once), and decides: the hub
answers, so load as usual; it does not but the model is cached, so load from the cache only; or
neither, so raise `BackendUnavailable` saying how to fix it. With HF_HUB_OFFLINE=1 the hub is not
asked at all.
"""

from __future__ import annotations

import logging
from pathlib import Path

from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import HfHubHTTPError

from inference.errors import BackendUnavailable
from inference.local.registry import Source

__all__ = ["cache_only", "hub_repo"]

log = logging.getLogger(__name__)

_FIX = (
    "Fix: set its `source` in the models file to a local diffusers folder or a .safetensors "
    "file, or download it once where the hub can be reached (`hf download {repo}`; it is kept "
    "in the cache under HF_HOME) and then run with HF_HUB_OFFLINE=1."
)


def hub_repo(source: Source) -> str | None:
    """The hub id that loading `source` reads from: its location, or its configs' (or None)."""
    if source.kind == "hub":
        return source.location
    if source.config is not None and not Path(source.config).is_absolute():
        return source.config  # the registry resolves local paths to absolute ones
    return None


def cache_only(repo: str, filename: str, *, what: str) -> bool:
    """Whether to load `repo` with `local_files_only`; `BackendUnavailable` when it cannot load.

    `filename` is a file every copy of the repository has (`model_index.json`, `config.json`):
    the cache holds the repository when it holds that file. `what` names the entry in messages.
    """
    cached = isinstance(try_to_load_from_cache(repo, filename), str)
    if constants.HF_HUB_OFFLINE:
        if cached:
            return True
        raise BackendUnavailable(
            f"{what} cannot be loaded: HF_HUB_OFFLINE is on and {repo!r} is not in the Hugging "
            f"Face cache ({constants.HF_HUB_CACHE}). {_FIX.format(repo=repo)}"
        )
    problem = _hub_problem(repo, filename)
    if problem is None:
        return False
    if cached:
        log.warning(
            "the Hugging Face Hub cannot be reached (%s): %s loads from the cache", problem, what
        )
        return True
    raise BackendUnavailable(
        f"{what} cannot be loaded: the Hugging Face Hub ({constants.ENDPOINT}) could not be "
        f"reached ({problem}) and {repo!r} is not in its cache ({constants.HF_HUB_CACHE}). "
        f"{_FIX.format(repo=repo)}"
    )


def _hub_problem(repo: str, filename: str) -> str | None:
    """Why the hub gives no answer about `repo` (None: it answered, even with "not found")."""
    try:
        get_hf_file_metadata(hf_hub_url(repo, filename), timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status is not None and status < 500:
            return None  # not found, gated, unauthorised: diffusers says which when it loads
        return _first_line(exc)
    except Exception as exc:  # any transport failure: name lookup, connection, TLS, proxy, timeout
        return _first_line(exc)
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__

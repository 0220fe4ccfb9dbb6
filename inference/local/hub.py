"""Hub ids (models file entries, IMG2IMG_PROMPT_MODEL): from the Hugging Face Hub, else its cache.

Left alone, huggingface_hub retries an unreachable hub for about 30 s and diffusers then reports
that the repository "does not appear to have a file named model_index.json". Before a hub id
loads, `cache_only` asks the hub once, without retries (within HF_HUB_ETAG_TIMEOUT, 10 s by
default; a failed name lookup or a refused connection answers at once), and decides: the hub
answers, so load as usual; it does not but the repository is cached, so load from the cache only;
or neither, so raise `BackendUnavailable`. With HF_HUB_OFFLINE=1 the hub is not asked at all.

That error reaches the person who sent the request (a Discord user, say): it names the entry and
what to do instead, nothing of this machine. The operator's fix, with the hub's address and the
cache's path, is logged at WARNING (the CLI prints it on stderr).
"""

from __future__ import annotations

import logging
from pathlib import Path

from huggingface_hub import (
    constants,
    get_hf_file_metadata,
    hf_hub_url,
    snapshot_download,
    try_to_load_from_cache,
)
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

from inference.errors import BackendUnavailable
from inference.local.registry import Source

__all__ = ["MODEL_FIX", "cache_only", "cached_folder", "hub_repo"]

log = logging.getLogger(__name__)

MODEL_FIX = "set its `source` in the models file to a local diffusers folder or a .safetensors file"
_FIX = (
    "Fix: {local_fix}, or download it once where the hub can be reached (`hf download {repo}`; "
    "it is kept in the cache under HF_HOME) and then run with HF_HUB_OFFLINE=1."
)
_ANY_FILE = ".gitattributes"  # asked for when no file is named: any answer shows the hub is up


def hub_repo(source: Source) -> str | None:
    """The hub id that loading `source` reads from: its location, or its configs' (or None)."""
    if source.kind == "hub":
        return source.location
    if source.config is not None and not Path(source.config).is_absolute():
        return source.config  # the registry resolves local paths to absolute ones
    return None


def cached_folder(repo: str) -> str | None:
    """The folder of `repo`'s cached snapshot (its main revision), or None."""
    try:
        return snapshot_download(repo, local_files_only=True)
    except LocalEntryNotFoundError:  # not cached, or known to be incomplete
        return None


def cache_only(
    repo: str,
    filename: str | None,
    *,
    what: str,
    instead: str = "choose another model",
    local_fix: str = MODEL_FIX,
) -> bool:
    """Whether to load `repo` from the cache only; `BackendUnavailable` when it cannot load.

    `filename` is a file every copy of the repository has (`model_index.json`, `config.json`):
    the cache holds the repository when it holds that file; None: when it holds a snapshot.
    `what` names the entry and `instead` what the requester can do for now (user message);
    `local_fix` is the operator's first way out (logged).
    """
    if filename is None:
        cached = cached_folder(repo) is not None
    else:
        cached = isinstance(try_to_load_from_cache(repo, filename), str)
    if constants.HF_HUB_OFFLINE:
        if cached:
            return True
        reason = (
            f"HF_HUB_OFFLINE is on and {repo!r} is not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE})"
        )
        user = "it is not downloaded on this machine, which does not use the Hugging Face Hub"
    else:
        problem = _hub_problem(repo, filename or _ANY_FILE)
        if problem is None:
            return False
        if cached:
            log.warning(
                "the Hugging Face Hub cannot be reached (%s): %s loads from the cache",
                problem,
                what,
            )
            return True
        reason = (
            f"the Hugging Face Hub ({constants.ENDPOINT}) could not be reached ({problem}) and "
            f"{repo!r} is not in its cache ({constants.HF_HUB_CACHE})"
        )
        user = "the Hugging Face Hub could not be reached and it is not downloaded on this machine"
        instead += " or try again later"
    log.warning(
        "%s cannot be loaded: %s. %s", what, reason, _FIX.format(local_fix=local_fix, repo=repo)
    )
    raise BackendUnavailable(
        f"{what} cannot be loaded: {user}. For now, {instead}; the log says how to fix this."
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

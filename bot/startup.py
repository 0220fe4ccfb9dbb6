"""Start-up checks of `python -m bot`: every problem that would stop the bot, found before it runs.

Invalid variables of every settings section, a missing token, a backend that cannot start (see
`inference.preflight`) and a database folder the bot cannot write are all collected, so that one
run shows everything to fix. `report` turns them into the text printed on stderr.
"""

from __future__ import annotations

import importlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bot.config import BotSettings
from inference.preflight import Importer, backend_problems
from inference.settings import InferenceSettings

__all__ = ["Checked", "check", "database_problems", "report"]

log = logging.getLogger("bot")

CONTAINER_UID = 10001  # the Dockerfile's user, owner of the /app/data and /app/models volumes


@dataclass(frozen=True)
class Checked:
    """The settings when everything is in order; otherwise `problems`, one line each."""

    problems: list[str]
    settings: BotSettings | None = None
    inference_settings: InferenceSettings | None = None


def check(importer: Importer = importlib.import_module) -> Checked:
    """Read every setting and check what the bot needs before it starts.

    A check runs when the sections it reads are valid, whatever the others hold.
    """
    bot, inference = BotSettings.read_env(), InferenceSettings.read_env()
    problems = bot.problems + inference.problems
    if bot.valid("discord") and bot.settings.discord.token is None:
        problems.append("DISCORD_TOKEN is not set. Put it in the environment or in .env.")
    if bot.valid("store"):
        problems += database_problems(bot.settings.store.database)
    if inference.valid("", inference.settings.backend):  # sections named after the backends
        problems += backend_problems(inference.settings, importer=importer)
    if problems:
        return Checked(problems)
    log.info(
        "models file %s, database %s",
        inference.settings.models_file.absolute(),
        bot.settings.store.database.absolute(),
    )
    return Checked([], bot.settings, inference.settings)


def database_problems(database: Path) -> list[str]:
    """The database's folder can be created and written (and the file, if it exists)."""
    if str(database) == ":memory:":
        return []
    folder = database.absolute().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
        if database.exists() and not os.access(database, os.R_OK | os.W_OK):
            raise PermissionError(f"{database.name} is read-only")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return [
            f"IMG2IMG_DATABASE: the folder {folder} cannot be created or written ({reason}). "
            f"The bot runs as uid {os.getuid()}, which must be able to write there; the Docker "
            f"image runs as uid {CONTAINER_UID}, so a host folder mounted at /app/data must be "
            f"owned by it (chown -R {CONTAINER_UID}:{CONTAINER_UID} FOLDER)."
        ]
    return []


def report(problems: list[str]) -> str:
    """The text for stderr: one line, or a count and one line per problem."""
    if len(problems) == 1:
        return f"error: {problems[0]}"
    lines = [
        f"error: {len(problems)} problems stop the bot from starting (the README's settings "
        "table describes every variable):"
    ]
    return "\n  - ".join(lines + problems)

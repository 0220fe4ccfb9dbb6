"""Start-up checks of `python -m bot`: every problem that would stop the bot, found before it runs.

Invalid variables of every settings section, a missing token, a backend that cannot start (see
`inference.preflight`), a models file that exists but cannot be read (whatever the backend: the
bot reads it for autocomplete) and a database the bot cannot use are all collected, so that one
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
from inference.preflight import Importer, backend_problems, optional_models_file_problems
from inference.settings import InferenceSettings

__all__ = ["Checked", "check", "database_problems", "report"]

log = logging.getLogger("bot")

CONTAINER_UID = 10001  # the Dockerfile's user, owner of the /app/data and /app/models volumes
SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


@dataclass(frozen=True)
class Checked:
    """The settings when everything is in order; otherwise `problems`, one line each."""

    problems: list[str]
    settings: BotSettings | None = None
    inference_settings: InferenceSettings | None = None


def check(importer: Importer = importlib.import_module) -> Checked:
    """Read every setting and check what the bot needs before it starts.

    A check runs when the sections it reads are valid, whatever the others hold. A problem
    found twice (a variable both sides read, the models file) is listed once.
    """
    bot, inference = BotSettings.read_env(), InferenceSettings.read_env()
    problems = bot.problems + inference.problems
    token = bot.settings.discord.token
    if bot.valid("discord") and (token is None or not token.get_secret_value().strip()):
        problems.append("DISCORD_TOKEN is not set. Put it in the environment or in .env.")
    if bot.valid("store"):
        problems += database_problems(bot.settings.store.database)
    # sections named after the backends; an invalid queue would fall back to the local backend
    if inference.valid("", inference.settings.backend, "remote"):
        problems += backend_problems(inference.settings, importer=importer)
    if inference.valid(""):  # autocomplete reads its names from it, whatever the backend or queue
        problems += optional_models_file_problems(inference.settings.models_file)
    problems = list(dict.fromkeys(problems))  # the backend's own check may say the same
    if problems:
        return Checked(problems)
    log.info(
        "models file %s, database %s",
        inference.settings.models_file.absolute(),
        bot.settings.store.database.absolute(),
    )
    return Checked([], bot.settings, inference.settings)


def database_problems(database: Path) -> list[str]:
    """The database's folder can be created and written, and the file, if it exists, is an
    SQLite database the bot can read and write."""
    if str(database) == ":memory:":
        return []
    if database.is_dir():
        return [
            f"IMG2IMG_DATABASE must be a file path such as /app/data/img2img.sqlite3, "
            f"not the folder {database}."
        ]
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
    if not _sqlite_or_empty(database):
        return [
            f"IMG2IMG_DATABASE: {database} is not an SQLite database; point IMG2IMG_DATABASE at "
            "the bot's database or at a path where it may create a new one."
        ]
    return []


def _sqlite_or_empty(database: Path) -> bool:
    """No file or an empty one (SQLite starts a new database there), or a regular file with
    SQLite's header (a FIFO or device is not opened: reading it could block)."""
    if not database.exists():
        return True
    if not database.is_file():
        return False
    with database.open("rb") as file:
        return file.read(len(SQLITE_HEADER)) in (b"", SQLITE_HEADER)


def report(problems: list[str]) -> str:
    """The text for stderr: one line, or a count and one line per problem."""
    if len(problems) == 1:
        return f"error: {problems[0]}"
    lines = [
        f"error: {len(problems)} problems stop the bot from starting (the README's settings "
        "table describes every variable):"
    ]
    return "\n  - ".join(lines + problems)

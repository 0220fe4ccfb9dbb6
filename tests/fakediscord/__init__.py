"""fakediscord: a loopback Discord for end-to-end tests of an unmodified discord.py client.

Quick start::

    async with FakeDiscord() as fake, running_client(make_bot(), fake) as bot:
        await fake.wait_commands_synced()          # if the bot syncs in setup_hook
        inter = await fake.slash_command("img2img", {"prompt": "a cat",
                                                     "image": fake.attachment(png, "in.png")})
        assert (await inter.wait_response()).type == 5
        final = await inter.wait_original(lambda m: len(m.attachments) == 1, timeout=30)
"""

from .client import discordpy_pointed_at, drain_handlers, running_client
from .errors import ApiError
from .handle import InteractionHandle
from .records import (
    CallbackRecord,
    Event,
    EventKind,
    InteractionRecord,
    MessageRevision,
    StoredFile,
    StoredMessage,
)
from .server import FakeDiscord, FakeDiscordError, FakeDiscordTimeout
from .world import (
    FakeChannel,
    FakeGuild,
    FakeMember,
    FakeRole,
    FakeUser,
    Permission,
    World,
    default_world,
)

__all__ = [
    "ApiError",
    "CallbackRecord",
    "Event",
    "EventKind",
    "FakeChannel",
    "FakeDiscord",
    "FakeDiscordError",
    "FakeDiscordTimeout",
    "FakeGuild",
    "FakeMember",
    "FakeRole",
    "FakeUser",
    "InteractionHandle",
    "InteractionRecord",
    "MessageRevision",
    "Permission",
    "StoredFile",
    "StoredMessage",
    "World",
    "default_world",
    "discordpy_pointed_at",
    "drain_handlers",
    "running_client",
]

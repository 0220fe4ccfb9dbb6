"""JSON payload builders in Discord API v10 shapes."""

from __future__ import annotations

import datetime
from typing import Any

from .records import StoredFile, StoredMessage
from .snowflake import DISCORD_EPOCH_MS
from .world import JOINED_AT, FakeChannel, FakeGuild, FakeMember, FakeRole, FakeUser, World

Json = dict[str, Any]


def snowflake_time(snowflake: int) -> str:
    """ISO timestamp encoded in a snowflake."""
    ms = (snowflake >> 22) + DISCORD_EPOCH_MS
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).isoformat()


def user(u: FakeUser) -> Json:
    """A user object."""
    return {
        "id": str(u.id),
        "username": u.username,
        "discriminator": "0",
        "global_name": u.global_name,
        "avatar": None,
        "bot": u.bot,
        "public_flags": 0,
        "flags": 0,
    }


def role(r: FakeRole) -> Json:
    """A role object."""
    return {
        "id": str(r.id),
        "name": r.name,
        "permissions": str(r.permissions),
        "position": r.position,
        "color": 0,
        "colors": {"primary_color": 0},
        "hoist": False,
        "managed": False,
        "mentionable": False,
        "flags": 0,
    }


def channel(c: FakeChannel, bot: FakeUser | None = None) -> Json:
    """A channel object (guild text channel or DM)."""
    if c.is_dm:
        recipients = [user(c.recipient)] if c.recipient else []
        return {"id": str(c.id), "type": c.type, "recipients": recipients, "last_message_id": None}
    return {
        "id": str(c.id),
        "type": c.type,
        "guild_id": str(c.guild_id),
        "name": c.name,
        "position": c.position,
        "nsfw": c.nsfw,
        "topic": None,
        "parent_id": None,
        "permission_overwrites": [],
        "rate_limit_per_user": 0,
        "last_message_id": None,
    }


def member(guild: FakeGuild, m: FakeMember, *, with_permissions: bool = False) -> Json:
    """A guild member object; ``with_permissions`` adds the interaction-only ``permissions``."""
    data: Json = {
        "user": user(m.user),
        "roles": [str(r) for r in m.role_ids],
        "nick": m.nick,
        "avatar": None,
        "joined_at": JOINED_AT,
        "deaf": False,
        "mute": False,
        "pending": False,
        "flags": 0,
    }
    if with_permissions:
        data["permissions"] = str(guild.permissions_for(m.user.id))
    return data


def guild_create(g: FakeGuild) -> Json:
    """A full GUILD_CREATE payload (available, with channels, roles and all members)."""
    return {
        "id": str(g.id),
        "name": g.name,
        "icon": None,
        "owner_id": str(g.owner_id),
        "unavailable": False,
        "large": False,
        "member_count": len(g.members),
        "joined_at": JOINED_AT,
        "roles": [role(r) for r in g.roles],
        "channels": [channel(c) for c in g.channels],
        "members": [member(g, m) for m in g.members],
        "threads": [],
        "presences": [],
        "voice_states": [],
        "emojis": [],
        "stickers": [],
        "features": [],
        "verification_level": 0,
        "default_message_notifications": 0,
        "explicit_content_filter": 0,
        "mfa_level": 0,
        "nsfw_level": 0,
        "premium_tier": 0,
        "preferred_locale": "en-US",
        "system_channel_flags": 0,
        "stage_instances": [],
        "guild_scheduled_events": [],
        "soundboard_sounds": [],
    }


def attachment(f: StoredFile) -> Json:
    """An attachment object."""
    data: Json = {
        "id": str(f.id),
        "filename": f.filename,
        "size": f.size,
        "url": f.url,
        "proxy_url": f.url,
        "content_type": f.content_type,
    }
    if f.description is not None:
        data["description"] = f.description
    if f.width is not None and f.height is not None:
        data["width"], data["height"] = f.width, f.height
    return data


def message(m: StoredMessage, world: World) -> Json:
    """A message object as Discord would return it."""
    data: Json = {
        "id": str(m.id),
        "channel_id": str(m.channel_id),
        "type": m.type,
        "author": user(m.author),
        "content": m.content,
        "embeds": m.embeds,
        "components": m.components,
        "attachments": [attachment(a) for a in m.attachments],
        "flags": m.flags,
        "timestamp": snowflake_time(m.id),
        "edited_timestamp": snowflake_time(m.id) if m.edited else None,
        "tts": False,
        "pinned": False,
        "mention_everyone": False,
        "mentions": [],
        "mention_roles": [],
    }
    if m.guild_id is not None:
        data["guild_id"] = str(m.guild_id)
        guild = world.guild_by_id(m.guild_id)
        mem = guild.member(m.author.id) if guild else None
        if guild is not None and mem is not None and m.webhook_id is None:
            data["member"] = {k: v for k, v in member(guild, mem).items() if k != "user"}
    if m.webhook_id is not None:
        data["webhook_id"] = str(m.webhook_id)
        data["application_id"] = str(m.webhook_id)
    if m.interaction_metadata is not None:
        data["interaction_metadata"] = m.interaction_metadata
    if m.message_reference is not None:
        data["message_reference"] = m.message_reference
    return data


def application(world: World) -> Json:
    """``GET /oauth2/applications/@me``."""
    return {
        "id": str(world.application_id),
        "name": world.bot.global_name or world.bot.username,
        "description": "fake application",
        "icon": None,
        "bot_public": True,
        "bot_require_code_grant": False,
        "owner": user(world.owner),
        "verify_key": "0" * 64,
        "team": None,
        "flags": 0,
        "interactions_endpoint_url": None,
        "bot": user(world.bot),
    }

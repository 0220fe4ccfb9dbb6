"""The fake Discord's static world: users, guilds, roles, channels and members.

A :class:`World` is plain data. Build it (or take :func:`default_world`), tweak it before the
client connects, and hand it to :class:`~fakediscord.server.FakeDiscord`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .snowflake import SnowflakeFactory

GUILD_TEXT = 0
DM = 1


class Permission(enum.IntFlag):
    """Discord permission bits (the subset bots usually look at)."""

    CREATE_INSTANT_INVITE = 1 << 0
    KICK_MEMBERS = 1 << 1
    BAN_MEMBERS = 1 << 2
    ADMINISTRATOR = 1 << 3
    MANAGE_CHANNELS = 1 << 4
    MANAGE_GUILD = 1 << 5
    ADD_REACTIONS = 1 << 6
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    MANAGE_MESSAGES = 1 << 13
    EMBED_LINKS = 1 << 14
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    USE_EXTERNAL_EMOJIS = 1 << 18
    USE_APPLICATION_COMMANDS = 1 << 31
    SEND_MESSAGES_IN_THREADS = 1 << 38


ALL_PERMISSIONS = (1 << 53) - 1
EVERYONE_PERMISSIONS = (
    Permission.VIEW_CHANNEL
    | Permission.SEND_MESSAGES
    | Permission.READ_MESSAGE_HISTORY
    | Permission.EMBED_LINKS
    | Permission.ATTACH_FILES
    | Permission.ADD_REACTIONS
    | Permission.USE_EXTERNAL_EMOJIS
    | Permission.USE_APPLICATION_COMMANDS
    | Permission.SEND_MESSAGES_IN_THREADS
)
JOINED_AT = "2024-01-01T00:00:00+00:00"


@dataclass(frozen=True)
class FakeUser:
    """A Discord user (or the bot's own user when ``bot`` is true)."""

    id: int
    username: str
    bot: bool = False
    global_name: str | None = None

    @property
    def mention(self) -> str:
        """``<@id>``, as it appears in message content."""
        return f"<@{self.id}>"


@dataclass(frozen=True)
class FakeRole:
    """A guild role; the role whose id equals the guild id is @everyone."""

    id: int
    name: str
    permissions: int = 0
    position: int = 0


@dataclass(frozen=True)
class FakeChannel:
    """A guild text channel (``type`` 0) or a DM channel (``type`` 1, ``recipient`` set)."""

    id: int
    name: str
    type: int = GUILD_TEXT
    guild_id: int | None = None
    nsfw: bool = False
    position: int = 0
    recipient: FakeUser | None = None

    @property
    def is_dm(self) -> bool:
        """True for a direct-message channel."""
        return self.type == DM


@dataclass
class FakeMember:
    """A user's membership in a guild. ``permissions`` overrides the role-computed value."""

    user: FakeUser
    role_ids: list[int] = field(default_factory=list)
    nick: str | None = None
    permissions: int | None = None


@dataclass
class FakeGuild:
    """A guild with its roles, channels and members (``member_count == len(members)``)."""

    id: int
    name: str
    owner_id: int
    roles: list[FakeRole] = field(default_factory=list)
    channels: list[FakeChannel] = field(default_factory=list)
    members: list[FakeMember] = field(default_factory=list)

    def member(self, user_id: int) -> FakeMember | None:
        """The membership of ``user_id``, or None."""
        return next((m for m in self.members if m.user.id == user_id), None)

    def role(self, name: str) -> FakeRole:
        """The role called ``name`` (KeyError if none)."""
        for role in self.roles:
            if role.name == name:
                return role
        raise KeyError(name)

    def permissions_for(self, user_id: int) -> int:
        """Guild-level permissions: @everyone | member roles; owner and admins get all."""
        if user_id == self.owner_id:
            return ALL_PERMISSIONS
        member = self.member(user_id)
        if member is not None and member.permissions is not None:
            return member.permissions
        role_ids = {self.id, *(member.role_ids if member else [])}
        value = 0
        for role in self.roles:
            if role.id in role_ids:
                value |= role.permissions
        return ALL_PERMISSIONS if value & Permission.ADMINISTRATOR else value


@dataclass
class World:
    """Everything the fake knows before anything happens. Mutate it before the client connects.

    The shortcuts (``guild``, ``general``, ``nsfw``, ``alice``, ``bob``) fit
    :func:`default_world`.
    """

    application_id: int
    bot: FakeUser
    owner: FakeUser
    guilds: list[FakeGuild] = field(default_factory=list)
    users: dict[str, FakeUser] = field(default_factory=dict)
    dm_channels: dict[int, FakeChannel] = field(default_factory=dict)
    ids: SnowflakeFactory = field(default_factory=SnowflakeFactory, repr=False)

    # -- shortcuts ----------------------------------------------------------------------------
    @property
    def guild(self) -> FakeGuild:
        """The first guild."""
        return self.guilds[0]

    @property
    def general(self) -> FakeChannel:
        """The first guild's first channel that is not age-restricted."""
        return next(c for c in self.guild.channels if not c.nsfw)

    @property
    def nsfw(self) -> FakeChannel:
        """The first guild's first age-restricted (``nsfw: true``) channel."""
        return next(c for c in self.guild.channels if c.nsfw)

    @property
    def alice(self) -> FakeUser:
        """A member with Manage Messages and Manage Guild (the Moderator role)."""
        return self.users["alice"]

    @property
    def bob(self) -> FakeUser:
        """A member with only @everyone permissions."""
        return self.users["bob"]

    # -- lookups and additions ----------------------------------------------------------------
    def new_user(self, handle: str, *, bot: bool = False) -> FakeUser:
        """Create a user (not a member of any guild) reachable as ``users[handle]``."""
        user = FakeUser(id=self.ids.next(), username=handle, bot=bot, global_name=handle.title())
        self.users[handle] = user
        return user

    def add_member(
        self,
        guild: FakeGuild,
        user: FakeUser,
        *roles: FakeRole,
        permissions: int | None = None,
    ) -> FakeMember:
        """Make ``user`` a member of ``guild`` with ``roles`` (set before the client connects)."""
        member = FakeMember(user=user, role_ids=[r.id for r in roles], permissions=permissions)
        guild.members.append(member)
        return member

    def add_guild(
        self, name: str, owner: FakeUser | None = None, *, shard: tuple[int, int] = (0, 1)
    ) -> FakeGuild:
        """Add a guild with only its @everyone role; its id falls on ``shard`` (``[id, count]``),
        so its events go to that gateway shard."""
        owner = owner or self.owner
        guild = FakeGuild(id=self.ids.next(shard), name=name, owner_id=owner.id)
        self.guilds.append(guild)
        guild.roles.append(FakeRole(guild.id, "@everyone", int(EVERYONE_PERMISSIONS)))
        return guild

    def add_role(self, guild: FakeGuild, name: str, permissions: int = 0) -> FakeRole:
        """Add a role to ``guild``."""
        role = FakeRole(self.ids.next(), name, int(permissions), position=len(guild.roles))
        guild.roles.append(role)
        return role

    def add_channel(self, guild: FakeGuild, name: str, *, nsfw: bool = False) -> FakeChannel:
        """Add a text channel to ``guild``."""
        channel = FakeChannel(
            self.ids.next(), name, guild_id=guild.id, nsfw=nsfw, position=len(guild.channels)
        )
        guild.channels.append(channel)
        return channel

    def dm(self, user: FakeUser) -> FakeChannel:
        """The DM channel between the bot and ``user`` (created on first use)."""
        channel = self.dm_channels.get(user.id)
        if channel is None:
            channel = FakeChannel(self.ids.next(), "", type=DM, recipient=user)
            self.dm_channels[user.id] = channel
        return channel

    def guild_by_id(self, guild_id: int) -> FakeGuild | None:
        """The guild with ``guild_id``, or None."""
        return next((g for g in self.guilds if g.id == guild_id), None)

    def channel(self, channel_id: int) -> FakeChannel | None:
        """Any known channel (guild or DM) by id."""
        for guild in self.guilds:
            for channel in guild.channels:
                if channel.id == channel_id:
                    return channel
        return next((c for c in list(self.dm_channels.values()) if c.id == channel_id), None)

    def user_by_id(self, user_id: int) -> FakeUser | None:
        """Any known user (the bot included) by id."""
        if user_id == self.bot.id:
            return self.bot
        return next((u for u in list(self.users.values()) if u.id == user_id), None)

    def bot_permissions(self, channel: FakeChannel) -> int:
        """The bot's permissions in ``channel`` (DMs: the usual DM set)."""
        guild = self.guild_by_id(channel.guild_id) if channel.guild_id else None
        if guild is None:
            return int(EVERYONE_PERMISSIONS)
        return guild.permissions_for(self.bot.id)


def default_world() -> World:
    """One guild "Fake Guild" owned by ``owner``, with channels ``general`` and ``nsfw-art``
    (age-restricted), roles @everyone, Moderator (Manage Messages + Manage Guild) and Bot, and
    members: the bot, ``owner``, ``alice`` (Moderator) and ``bob`` (no roles)."""
    ids = SnowflakeFactory()
    app_id = ids.next()
    bot = FakeUser(app_id, "img2img-bot", bot=True, global_name="Img2Img")
    owner = FakeUser(ids.next(), "owner", global_name="Owner")
    world = World(application_id=app_id, bot=bot, owner=owner, users={"owner": owner}, ids=ids)
    alice = world.new_user("alice")
    bob = world.new_user("bob")
    guild = world.add_guild("Fake Guild")
    moderator = world.add_role(
        guild, "Moderator", Permission.MANAGE_MESSAGES | Permission.MANAGE_GUILD
    )
    bot_role = world.add_role(guild, "Bot", int(EVERYONE_PERMISSIONS))
    world.add_channel(guild, "general")
    world.add_channel(guild, "nsfw-art", nsfw=True)
    world.add_member(guild, bot, bot_role)
    world.add_member(guild, owner)
    world.add_member(guild, alice, moderator)
    world.add_member(guild, bob)
    return world

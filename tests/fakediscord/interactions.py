"""Builders for INTERACTION_CREATE payloads: slash commands, autocomplete, context menus,
components and modal submits, in guild channels or DMs."""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from . import payloads
from .records import InteractionRecord, StoredFile, StoredMessage
from .state import FakeState
from .world import FakeChannel, FakeMember, FakeRole, FakeUser

Json = dict[str, Any]

PING, APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 1, 2, 3, 4, 5
CHAT_INPUT, USER_COMMAND, MESSAGE_COMMAND = 1, 2, 3
SUB_COMMAND, SUB_COMMAND_GROUP = 1, 2
STRING, INTEGER, BOOLEAN, USER, CHANNEL, ROLE, MENTIONABLE, NUMBER, ATTACHMENT = (
    3, 4, 5, 6, 7, 8, 9, 10, 11,
)  # fmt: skip
TEXT_INPUT, LABEL, FILE_UPLOAD = 4, 18, 19
SELECT_TYPES = {3, 5, 6, 7, 8}


def envelope(
    state: FakeState,
    *,
    itype: int,
    data: Json,
    user: FakeUser,
    channel: FakeChannel,
    message: StoredMessage | None = None,
) -> InteractionRecord:
    """Wrap ``data`` in a full interaction payload and register it with ``state``."""
    world = state.world
    interaction_id = world.ids.next()
    payload: Json = {
        "id": str(interaction_id),
        "application_id": str(world.application_id),
        "type": itype,
        "data": data,
        "token": f"fake-token-{interaction_id}-{secrets.token_urlsafe(16)}",
        "version": 1,
        "attachment_size_limit": state.config.attachment_size_limit,
        "locale": "en-US",
        "app_permissions": str(world.bot_permissions(channel)),
        "entitlements": [],
        "channel": payloads.channel(channel),
        "channel_id": str(channel.id),
    }
    guild = world.guild_by_id(channel.guild_id) if channel.guild_id else None
    if guild is not None:
        member = guild.member(user.id) or FakeMember(user=user)
        payload.update(
            guild_id=str(guild.id),
            guild={"id": str(guild.id), "locale": "en-US", "features": []},
            guild_locale="en-US",
            member=payloads.member(guild, member, with_permissions=True),
            authorizing_integration_owners={"0": str(guild.id)},
            context=0,
        )
    else:
        payload.update(
            user=payloads.user(user),
            authorizing_integration_owners={"0": "0"},
            context=1,
        )
    if message is not None:
        payload["message"] = payloads.message(message, world)
    record = InteractionRecord(
        id=interaction_id,
        token=payload["token"],
        type=itype,
        payload=payload,
        channel_id=channel.id,
        guild_id=guild.id if guild else None,
        user_id=user.id,
        source_message_id=message.id if message else None,
    )
    state.add_interaction(record)
    return record


def _infer_type(value: Any) -> int:
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int):
        return INTEGER
    if isinstance(value, float):
        return NUMBER
    if isinstance(value, StoredFile):
        return ATTACHMENT
    if isinstance(value, FakeUser):
        return USER
    if isinstance(value, FakeChannel):
        return CHANNEL
    if isinstance(value, FakeRole):
        return ROLE
    return STRING


def _encode(state: FakeState, otype: int, value: Any, resolved: Json, guild_id: int | None) -> Any:
    """The option ``value`` as Discord sends it, adding resolved objects."""
    world = state.world
    if otype == ATTACHMENT:
        if not isinstance(value, StoredFile):
            raise TypeError("attachment options take fake.attachment(...) values")
        resolved.setdefault("attachments", {})[str(value.id)] = payloads.attachment(value)
        return str(value.id)
    if isinstance(value, FakeUser):
        resolved.setdefault("users", {})[str(value.id)] = payloads.user(value)
        guild = world.guild_by_id(guild_id) if guild_id else None
        member = guild.member(value.id) if guild else None
        if guild is not None and member is not None:
            data = payloads.member(guild, member, with_permissions=True)
            data.pop("user")
            resolved.setdefault("members", {})[str(value.id)] = data
        return str(value.id)
    if isinstance(value, FakeChannel):
        data = payloads.channel(value)
        data["permissions"] = str(world.bot_permissions(value))
        resolved.setdefault("channels", {})[str(value.id)] = data
        return str(value.id)
    if isinstance(value, FakeRole):
        resolved.setdefault("roles", {})[str(value.id)] = payloads.role(value)
        return str(value.id)
    if otype == BOOLEAN:
        return bool(value)
    if otype == INTEGER:
        return int(value)
    if otype == NUMBER:
        return float(value)
    return str(value)


def _build_options(
    state: FakeState,
    schema: Sequence[Json] | None,
    values: Mapping[str, Any],
    resolved: Json,
    guild_id: int | None,
    focused: str | None,
) -> list[Json]:
    options: list[Json] = []
    known = {o["name"]: o for o in schema or []}
    for name, value in values.items():
        if schema is not None and name not in known:
            raise ValueError(f"the synced command has no option {name!r}; it has {sorted(known)}")
        otype = int(known[name]["type"]) if name in known else _infer_type(value)
        option: Json = {"name": name, "type": otype}
        if name == focused:
            option["value"] = str(value)
            option["focused"] = True
        else:
            option["value"] = _encode(state, otype, value, resolved, guild_id)
        options.append(option)
    return options


def command_data(
    state: FakeState,
    name: str,
    values: Mapping[str, Any],
    channel: FakeChannel,
    *,
    focused: str | None = None,
) -> Json:
    """``data`` of a slash command (``name`` may be ``"group sub"``) or of its autocomplete.

    Option types come from the synced command when there is one (unknown names raise),
    otherwise from the Python values (str, int, float, bool, fake.attachment(), FakeUser...).
    """
    top, *path = name.split()
    command = state.find_command(top, channel.guild_id, CHAT_INPUT)
    schema: list[Json] | None = command.get("options", []) if command else None
    kinds = [SUB_COMMAND_GROUP, SUB_COMMAND] if len(path) == 2 else [SUB_COMMAND] * len(path)
    for part in path:
        if schema is not None:
            schema = next((o.get("options", []) for o in schema if o["name"] == part), None)
            if schema is None:
                raise ValueError(f"the synced command {top!r} has no subcommand {part!r}")
    resolved: Json = {}
    options = _build_options(state, schema, values, resolved, channel.guild_id, focused)
    for part, kind in reversed(list(zip(path, kinds, strict=True))):
        options = [{"name": part, "type": kind, "options": options}]
    data: Json = {
        "id": str(command["id"]) if command else str(state.world.ids.next()),
        "name": top,
        "type": CHAT_INPUT,
        "options": options,
    }
    if resolved:
        data["resolved"] = resolved
    if command and command.get("guild_id"):
        data["guild_id"] = str(command["guild_id"])
    return data


def context_menu_data(
    state: FakeState, name: str, channel: FakeChannel, target: StoredMessage | FakeUser
) -> Json:
    """``data`` of a message (target: StoredMessage) or user (target: FakeUser) context menu."""
    kind = USER_COMMAND if isinstance(target, FakeUser) else MESSAGE_COMMAND
    command = state.find_command(name, channel.guild_id, kind)
    resolved: Json = {}
    if isinstance(target, StoredMessage):
        resolved["messages"] = {str(target.id): payloads.message(target, state.world)}
    else:
        _encode(state, USER, target, resolved, channel.guild_id)
    data: Json = {
        "id": str(command["id"]) if command else str(state.world.ids.next()),
        "name": name,
        "type": kind,
        "target_id": str(target.id),
        "resolved": resolved,
    }
    if command and command.get("guild_id"):
        data["guild_id"] = str(command["guild_id"])
    return data


def find_component(message: StoredMessage, custom_id: str | None, label: str | None) -> Json:
    """The interactive component matching ``custom_id`` or ``label`` (ValueError if none)."""
    for comp in message.walk_components():
        if "custom_id" not in comp:
            continue
        if (custom_id is not None and comp["custom_id"] == custom_id) or (
            custom_id is None and label is not None and comp.get("label") == label
        ):
            if comp.get("disabled"):
                raise ValueError(f"component {comp['custom_id']!r} is disabled: nobody can use it")
            return comp
    present = [(c.get("custom_id"), c.get("label")) for c in message.walk_components()]
    raise ValueError(f"no component custom_id={custom_id!r} label={label!r}; message has {present}")


def _modal_inputs(components: Sequence[Json]) -> Iterator[tuple[Json, Json, str | None]]:
    """(top-level component, input component, label) for every input in a modal."""
    for top in components:
        if top.get("type") == 1:
            for child in top.get("components", []):
                yield top, child, child.get("label")
        elif top.get("type") == LABEL:
            yield top, top["component"], top.get("label")


def _text_value(comp: Json, label: str | None, value: Any) -> str:
    text = str(value) if value is not None else str(comp.get("value") or "")
    name = label or comp["custom_id"]
    if comp.get("required", True) and not text:
        raise ValueError(f"text input {name!r} is required: the client would refuse to submit")
    lo, hi = comp.get("min_length"), comp.get("max_length")
    if text and ((lo is not None and len(text) < lo) or (hi is not None and len(text) > hi)):
        raise ValueError(f"text input {name!r} takes {lo}..{hi} characters, got {len(text)}")
    return text


def _chosen(comp: Json, label: str | None, value: Any) -> list[Any]:
    chosen = list(value or [])
    name = label or comp["custom_id"]
    lo = comp.get("min_values")
    lo = (1 if lo is None else lo) if comp.get("required", True) else 0
    hi = comp.get("max_values") or 25
    if not lo <= len(chosen) <= hi:
        raise ValueError(f"field {name!r} takes {lo}..{hi} values, got {len(chosen)}")
    return chosen


def modal_submit_data(modal: Json, values: Mapping[str, Any]) -> Json:
    """``data`` of submitting ``modal`` (a type-9 callback's data) with ``values``.

    ``values`` maps a field's custom_id or label to a str (text input), a list of str
    (select) or a list of ``fake.attachment(...)`` (file upload). Unset text inputs keep their
    pre-filled value, unset selects their default options. Discord-client rules (required,
    min/max length) raise ValueError.
    """
    remaining = dict(values)
    components: list[Json] = []
    resolved: Json = {}
    for top, comp, label in _modal_inputs(modal.get("components", [])):
        custom_id = comp.get("custom_id")
        if custom_id is None:
            continue
        key = custom_id if custom_id in remaining else label
        value = remaining.pop(key, None) if key is not None else None
        out: Json = {"type": comp["type"], "custom_id": custom_id}
        if "id" in comp:
            out["id"] = comp["id"]
        if comp["type"] == TEXT_INPUT:
            out["value"] = _text_value(comp, label, value)
        elif comp["type"] == FILE_UPLOAD:
            files = _chosen(comp, label, value)
            out["values"] = [str(f.id) for f in files]
            for f in files:
                resolved.setdefault("attachments", {})[str(f.id)] = payloads.attachment(f)
        elif comp["type"] in SELECT_TYPES:
            if value is None:  # left as it was: the options marked default stay chosen
                value = [o["value"] for o in comp.get("options", []) if o.get("default")]
            out["values"] = [str(v) for v in _chosen(comp, label, value)]
        if top.get("type") == 1:
            components.append({"type": 1, "components": [out]})
        else:
            label_out: Json = {"type": LABEL, "component": out}
            if "id" in top:
                label_out["id"] = top["id"]
            components.append(label_out)
    if remaining:
        raise ValueError(f"modal has no fields {sorted(remaining)}")
    data: Json = {"custom_id": modal["custom_id"], "components": components}
    if resolved:
        data["resolved"] = resolved
    return data

"""Who a message notifies, as Discord decides it from `content` and `allowed_mentions`.

Without `allowed_mentions` Discord parses every kind of mention in the content. With it, only the
kinds in `parse` and the ids listed in `users` / `roles` notify. The fake notifies on edits too,
which Discord does not: a test then sees any edit that would have pinged as well, the stricter
reading.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["pings"]

_USER = re.compile(r"<@!?(\d+)>")
_ROLE = re.compile(r"<@&(\d+)>")


def pings(payload: dict[str, Any]) -> frozenset[str]:
    content = str(payload.get("content") or "")
    allowed = payload.get("allowed_mentions")
    parse = {"everyone", "users", "roles"} if allowed is None else set(allowed.get("parse") or [])
    users = set() if allowed is None else {str(u) for u in allowed.get("users") or []}
    roles = set() if allowed is None else {str(r) for r in allowed.get("roles") or []}
    found: set[str] = set()
    if "everyone" in parse and ("@everyone" in content or "@here" in content):
        found.add("everyone")
    for user in _USER.findall(content):
        if "users" in parse or user in users:
            found.add(f"user:{user}")
    for role in _ROLE.findall(content):
        if "roles" in parse or role in roles:
            found.add(f"role:{role}")
    return frozenset(found)

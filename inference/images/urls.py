"""Rules for URLs that users supply (init images, webhooks): scheme, host, and no private addresses.

`check_url_syntax` runs inside request validation (no network). `resolve_public_host` runs just
before a connection is made and checks every address the name resolves to, so a public-looking name
that points at loopback or a private network is refused too (and again after each redirect). The
connection then goes to the address that was checked (`pin`), not to the name: a second lookup by
the HTTP client could get another answer (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from inference.errors import InvalidRequest

__all__ = [
    "PinnedTarget",
    "check_url_syntax",
    "is_public_address",
    "pin",
    "resolve_addresses",
    "resolve_private_host",
    "resolve_public_host",
]

_BLOCKED_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
"""The well-known NAT64 prefix: the last 32 bits are the IPv4 address reached (RFC 6052)."""
_REFUSED_V6 = (
    ipaddress.IPv6Network("64:ff9b:1::/48"),  # local-use NAT64: the IPv4 part may sit anywhere
    ipaddress.IPv6Network("::/96"),  # IPv4-compatible (deprecated): ::a.b.c.d
)


def _reached_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(address: str) -> bool:
    """True when the IP literal `address` is globally routable (not loopback, private, ...).

    An IPv6 address that carries an IPv4 address (mapped, 6to4, NAT64) is judged by that IPv4
    address: on a NAT64 network `64:ff9b::a9fe:a9fe` reaches 169.254.169.254."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if any(ip in network for network in _REFUSED_V6):
            return False
        reached = _reached_ipv4(ip)
        if reached is not None:
            return reached.is_global and not reached.is_multicast
    return ip.is_global and not ip.is_multicast


def _literal_ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def check_url_syntax(url: str, *, field: str, schemes: tuple[str, ...], allow_private: bool) -> str:
    """Return `url` stripped, or raise `InvalidRequest` naming `field` and what is allowed."""
    url = url.strip()
    allowed = " or ".join(schemes)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidRequest(
            f"{field} is not a valid URL; give a full {allowed} URL.", field=field
        ) from None
    del port
    if parts.scheme.lower() not in schemes or not parts.hostname:
        raise InvalidRequest(
            f"{field} must be a full {allowed} URL (like {schemes[-1]}://example.com/...).",
            field=field,
        )
    if parts.username or parts.password:
        raise InvalidRequest(f"{field} must not contain a user name or password.", field=field)
    if not allow_private:
        host = parts.hostname.lower().rstrip(".")
        literal = _literal_ip(host)
        if (
            host in _BLOCKED_NAMES
            or host.endswith(".localhost")
            or (literal is not None and not is_public_address(literal))
        ):
            raise InvalidRequest(
                f"{field} points to a private or local address; use a public URL.", field=field
            )
    return url


async def resolve_addresses(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (itself when it is an IP literal)."""
    literal = _literal_ip(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise InvalidRequest(f"The host {host!r} could not be found; check the URL.") from None
    return [str(info[4][0]) for info in infos]


async def resolve_public_host(host: str, port: int) -> str:
    """The address to connect to; raises `InvalidRequest` unless every one `host` has is public."""
    addresses = await resolve_addresses(host, port)
    if not addresses or not all(is_public_address(a) for a in addresses):
        raise InvalidRequest("The URL points to a private or local address; use a public URL.")
    return addresses[0]


async def resolve_private_host(host: str, port: int) -> str:
    """The address for a plain-http URL: allowed only where every address is private or local."""
    addresses = await resolve_addresses(host, port)
    if not addresses or any(is_public_address(a) for a in addresses):
        raise InvalidRequest("Plain http is only for private or local addresses; use https.")
    return addresses[0]


@dataclass(frozen=True)
class PinnedTarget:
    """A request to a URL's checked address: pass all three to httpx (`url`, `headers=`,
    `extensions=`). The name stays in the Host header and in TLS (SNI and the certificate check)."""

    url: httpx.URL
    headers: dict[str, str] = field(default_factory=dict)
    extensions: dict[str, str] = field(default_factory=dict)


def pin(url: httpx.URL, address: str | None) -> PinnedTarget:
    """`url` sent to `address` (from `resolve_public_host`); unchanged without an address or when
    the URL already names an IP."""
    if address is None or _literal_ip(url.host) is not None:
        return PinnedTarget(url)
    return PinnedTarget(
        url=url.copy_with(host=address),
        headers={"Host": url.netloc.decode("ascii")},
        extensions={"sni_hostname": url.host},
    )

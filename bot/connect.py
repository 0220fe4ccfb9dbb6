"""Reaching Discord at start: wait out network trouble with backoff, saying in one line what failed.

Before it logs in, the bot asks Discord's REST API for its (unauthenticated) gateway route. Any HTTP
answer below 500 means Discord can be reached; a failed connection (DNS, refused, timeout, TLS) or
a 5xx is logged as one warning and retried after a delay that doubles up to a cap, for as long
as it takes, as a service should. After that, discord.py's own reconnect logic takes over.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import yarl

from inference.backoff import delays

__all__ = ["Backoff", "describe_unreachable", "wait_until_reachable"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """Delays between attempts: `first`, doubling up to `cap` seconds."""

    first: float = 1.0
    cap: float = 60.0
    attempt_timeout: float = 10.0  # seconds one attempt may take

    def delays(self) -> Iterator[float]:
        return delays(first=self.first, cap=self.cap)


async def wait_until_reachable(api_base: str, backoff: Backoff) -> None:
    """Return once Discord's REST API at `api_base` answers; until then, log and retry."""
    url = api_base.rstrip("/") + "/gateway"
    timeout = aiohttp.ClientTimeout(total=backoff.attempt_timeout)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for attempt, delay in enumerate(backoff.delays(), start=1):
            try:
                async with session.get(url) as response:
                    if response.status < 500:
                        return
                    problem = f"Discord answered HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = describe_unreachable(exc, api_base)
            log.warning(
                "cannot reach Discord (attempt %d): %s; check the network, and DISCORD_API_BASE "
                "(%s) or the proxy. Retrying in %g s.",
                attempt,
                problem,
                api_base,
                delay,
            )
            await asyncio.sleep(delay)


def describe_unreachable(exc: BaseException, api_base: str) -> str:
    """What failed, in a few words: DNS, a refused or timed-out connection, TLS."""
    base = yarl.URL(api_base)
    where = f"{base.host}:{base.port}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"DNS cannot resolve {base.host}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"the TLS certificate of {where} is not trusted ({exc.certificate_error})"
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return f"the TLS handshake with {where} failed ({_reason(exc)})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return f"the connection to {where} was refused"
        if isinstance(exc.os_error, TimeoutError):
            return f"the connection to {where} timed out"
        return f"cannot connect to {where} ({_reason(exc)})"
    if isinstance(exc, TimeoutError):
        return f"{where} did not answer in time"
    if isinstance(exc, aiohttp.InvalidURL):
        return "DISCORD_API_BASE is not a valid URL"
    return f"the connection to {where} failed ({_reason(exc)})"


def _reason(exc: BaseException) -> str:
    inner = getattr(exc, "os_error", None) or exc
    return getattr(inner, "strerror", None) or str(inner) or type(inner).__name__

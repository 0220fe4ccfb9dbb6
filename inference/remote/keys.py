"""The Redis key layout of the remote queue, its fixed bounds, and the client factory.

- `img2img:jobs` (stream, consumer group `workers`): one entry per submitted job (the job id, the
  request JSON without `key` or `webhook`, the init image as raw bytes).
- `img2img:job:<id>` (hash): the job's stream entry (dedupe by job id), `cancelled`, `handbacks`
  (deliveries a draining worker gave back: not crashes), the backend's `external_id`.
- `img2img:events:<id>` (stream): progress events, then one `done` entry when the result is stored.
- `img2img:result:<id>` (hash): the result (images as raw bytes) or the error.
- `img2img:cancels` (stream, read by every worker): ids of cancelled jobs.
- `img2img:worker:<name>` (hash, expires after the lease): a worker's heartbeat.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

__all__ = [
    "CANCELS",
    "GROUP",
    "JOBS",
    "MAX_CRASHES",
    "RESULT_TTL",
    "TAKEN_TTL",
    "WORKER_PATTERN",
    "connect",
    "events_key",
    "job_key",
    "result_key",
    "worker_key",
]

PREFIX = "img2img"
JOBS = f"{PREFIX}:jobs"
GROUP = "workers"
CANCELS = f"{PREFIX}:cancels"
WORKER_PATTERN = f"{PREFIX}:worker:*"

RESULT_TTL = 2 * 86400
"""Seconds a job's keys (and its result) live: a submitter that was down for a day still gets it."""
TAKEN_TTL = 600
"""Seconds a result stays once its submitter has taken it (a submitter that dies before saving
it gets it again when it hands the job over again)."""
MAX_CRASHES = 3
"""A job whose worker died this many times (delivered again each time) is failed, not retried."""
EVENTS_MAXLEN = 200
CANCELS_MAXLEN = 10_000


def job_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def events_key(job_id: str) -> str:
    return f"{PREFIX}:events:{job_id}"


def result_key(job_id: str) -> str:
    return f"{PREFIX}:result:{job_id}"


def worker_key(name: str) -> str:
    return f"{PREFIX}:worker:{name}"


def connect(url: str, *, read_timeout: float) -> Redis:
    """A client for `url` with bytes replies in the RESP2 shapes (the same from redis-py 5 to 8)
    and no retries of its own: callers retry (with `inference.remote.retry`) where a command is
    safe to repeat. `read_timeout` must exceed the longest BLOCK the caller uses."""
    return Redis.from_url(
        url,
        protocol=2,
        decode_responses=False,
        socket_connect_timeout=5.0,
        socket_timeout=read_timeout,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),
    )

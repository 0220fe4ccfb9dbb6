"""The Redis key layout of the remote queue, its fixed bounds, and the client factory.

- `img2img:jobs` and its lanes `img2img:jobs:0` … `img2img:jobs:15` (streams, consumer group
  `workers` on each): one entry per submitted job (the job id, the request JSON without `key` or
  `webhook`, the init image as raw bytes). A job naming a `model_id` goes to that model's lane (a
  hash of the name), one without to `img2img:jobs`: a lane's jobs can share a loaded model, so a
  worker reads the lanes of the models it has loaded first (model affinity, `intake`). A fixed
  number of lanes keeps a worker's reads bounded whatever model names submitters send.
- `img2img:notices` (capped stream): the lane of each new job, so idle workers wake at once.
- `img2img:job:<id>` (hash): the job's stream and entry (dedupe by job id), `cancelled`,
  `handbacks` (deliveries a draining worker gave back: not crashes), the backend's
  `external_id`.
- `img2img:events:<id>` (stream): progress events, then one `done` entry when the result is stored.
- `img2img:result:<id>` (hash): the result (images as raw bytes) or the error.
- `img2img:cancels` (stream, read by every worker): ids of cancelled jobs.
- `img2img:worker:<name>` (hash, expires after the lease): a worker's heartbeat.
"""

from __future__ import annotations

import zlib

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

__all__ = [
    "CANCELS",
    "GROUP",
    "JOBS",
    "LANES",
    "MAX_CRASHES",
    "NOTICES",
    "RESULT_TTL",
    "STREAMS",
    "TAKEN_TTL",
    "WORKER_PATTERN",
    "connect",
    "events_key",
    "job_key",
    "job_stream",
    "result_key",
    "worker_key",
]

PREFIX = "img2img"
JOBS = f"{PREFIX}:jobs"
GROUP = "workers"
CANCELS = f"{PREFIX}:cancels"
NOTICES = f"{PREFIX}:notices"
LANES = 16
STREAMS = (JOBS, *(f"{JOBS}:{lane}" for lane in range(LANES)))
"""Every jobs stream: the one for jobs without a model, then the lanes."""
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
NOTICES_MAXLEN = 1_000


def job_stream(model_id: str | None) -> str:
    """The stream of a job for `model_id` (None: the default model's)."""
    if not model_id:
        return JOBS
    return STREAMS[1 + zlib.crc32(model_id.encode()) % LANES]


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

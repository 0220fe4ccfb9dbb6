"""Worker heartbeats: each live worker keeps a hash that expires after the lease.

A worker writes its heartbeat every quarter lease and deletes it when it stops; a worker that dies
drops out within one lease. Submitters add up the live workers' capacities.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis

from inference.remote.keys import WORKER_PATTERN, worker_key

__all__ = ["WorkerInfo", "clear_heartbeat", "live_workers", "write_heartbeat"]


class WorkerInfo(BaseModel):
    """What a worker announces about itself."""

    model_config = ConfigDict(frozen=True)

    name: str
    backend: str
    capacity: int
    models: list[str] = []
    """The models it has loaded (the ones it ran last, up to its cache size)."""
    lanes: list[str] = []
    """The jobs streams of the models it has loaded, most recent first (model affinity: other
    workers leave these to it for a while)."""
    running: int = 0
    served: int = 0
    """Jobs it has finished (stored an outcome for) since it started."""
    started: float = 0.0


async def write_heartbeat(redis: Redis, info: WorkerInfo, lease: float) -> None:
    key = worker_key(info.name)
    fields = info.model_dump(mode="json")
    fields["models"] = json.dumps(info.models)
    fields["lanes"] = json.dumps(info.lanes)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping={k: str(v) for k, v in fields.items()})
        pipe.pexpire(key, max(1, int(lease * 1000)))
        await pipe.execute()


async def clear_heartbeat(redis: Redis, name: str) -> None:
    await redis.delete(worker_key(name))


async def live_workers(redis: Redis) -> list[WorkerInfo]:
    """The workers whose heartbeat has not expired, by name."""
    keys = [key async for key in redis.scan_iter(match=WORKER_PATTERN, count=500)]
    if not keys:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hgetall(key)
        replies = await pipe.execute()
    workers = []
    for reply in replies:
        if not reply:  # expired between SCAN and HGETALL
            continue
        fields = {k.decode(): v.decode() for k, v in reply.items()}
        fields["models"] = json.loads(fields.get("models", "[]"))
        fields["lanes"] = json.loads(fields.get("lanes", "[]"))
        workers.append(WorkerInfo.model_validate(fields))
    return sorted(workers, key=lambda worker: worker.name)

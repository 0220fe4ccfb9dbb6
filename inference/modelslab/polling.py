"""Waiting for a job the API is still processing: poll the fetch endpoint, or take the webhook.

The first wait is about the API's `eta`; later waits back off (or follow a fresh `eta`), all under
the job's deadline, which the caller enforces. `future_links` are never results: only a
"success" answer with `output` ends the wait. Every progress event carries the API's request id
as its handle (`external_id`, origin and id), so a job resumed after a restart is fetched by it
rather than sent again.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from inference.errors import BackendError
from inference.modelslab.client import ApiClient
from inference.modelslab.endpoints import ApiPaths, Endpoint
from inference.modelslab.handles import format_handle
from inference.modelslab.responses import ApiResponse
from inference.port import ProgressCallback, ProgressEvent
from inference.running import report_progress

__all__ = ["PollPolicy", "poll_until_done"]

log = logging.getLogger(__name__)

_WAITING = frozenset({"processing", "queued", "pending", "running", "starting", "success"})


@dataclass(frozen=True)
class PollPolicy:
    """Delays between fetches, in seconds."""

    min_delay: float = 0.1
    first_backoff: float = 1.0
    factor: float = 1.6
    max_delay: float = 10.0

    def _clamp(self, delay: float) -> float:
        return min(self.max_delay, max(self.min_delay, delay))

    def first(self, eta: float | None) -> float:
        return self._clamp(eta if eta else self.first_backoff)

    def next(self, previous: float, eta: float | None, *, first_poll: bool) -> float:
        if eta:
            return self._clamp(eta)
        return self._clamp(self.first_backoff if first_poll else previous * self.factor)


async def _sleep_or_delivery(
    delay: float, delivery: asyncio.Future[ApiResponse] | None
) -> ApiResponse | None:
    if delivery is None:
        await asyncio.sleep(delay)
        return None
    done, _ = await asyncio.wait({delivery}, timeout=delay)
    if done and not delivery.cancelled():
        return delivery.result()
    return None


async def poll_until_done(
    client: ApiClient,
    first: ApiResponse,
    *,
    endpoint: Endpoint,
    paths: ApiPaths,
    job_id: str,
    progress: ProgressCallback,
    deadline: float,
    policy: PollPolicy,
    delivery: asyncio.Future[ApiResponse] | None = None,
    api_id: str | None = None,
) -> ApiResponse:
    """The job's final answer: finished (with outputs) or failed. `api_id`: the request id when
    `first` is a fetch answer that may not repeat it (a resumed job)."""
    loop = asyncio.get_running_loop()
    answer, api_id, fetch_result = first, first.id or api_id, first.fetch_result
    eta_at = loop.time() + first.eta if first.eta else None
    delay, polls = policy.first(first.eta), 0
    while not (answer.finished or answer.failed):
        if answer.status not in _WAITING:
            raise BackendError(f"ModelsLab answered with an unknown status {answer.status!r}.")
        if not endpoint.can_fetch(api_id, fetch_result):
            raise BackendError("ModelsLab accepted the job but gave no id to fetch it by.")
        report_progress(
            progress,
            ProgressEvent(
                job_id=job_id,
                stage="queued" if polls == 0 else "running",
                eta_seconds=None if eta_at is None else max(0.0, eta_at - loop.time()),
                message=f"ModelsLab: {answer.text}" if answer.text else None,
                external_id=format_handle(endpoint.base_url, api_id) if api_id else None,
            ),
        )
        delivered = await _sleep_or_delivery(delay, delivery)
        if delivered is not None:
            return delivered
        url, body = endpoint.fetch(paths, api_id, fetch_result)
        answer = await client.call(url, body, deadline=deadline)
        polls += 1
        log.debug("job %s: fetch %d -> %s", job_id, polls, answer.status)
        api_id, fetch_result = api_id or answer.id, answer.fetch_result or fetch_result
        if answer.eta:
            eta_at = loop.time() + answer.eta
        delay = policy.next(delay, answer.eta, first_poll=polls == 1)
    return answer

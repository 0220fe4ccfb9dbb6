"""Running accepted jobs on the backend: results into the store, the key's slot freed, the
webhook sent, and a stop that finishes or fails what is in flight within the grace period."""

from __future__ import annotations

import asyncio
import logging
import time

from inference.errors import InferenceError, InvalidRequest
from inference.metrics import METRICS, Metrics
from inference.port import Backend, CancelToken, Job, ProgressEvent
from inference.result import Img2ImgResult
from inference.server.intake import Intake
from inference.server.keys import KeyRing
from inference.server.responses import Links
from inference.server.store import ResultStore, ServerJob
from inference.webhooks import WebhookSender

__all__ = ["JobRunner"]

log = logging.getLogger(__name__)

_STOPPED = "The server stopped before this job finished; send it again."
_CRASHED = "The server failed to run this job; send it again."
_RUNNING_STAGES = ("running", "postprocessing", "uploading")


class JobRunner:
    """Submits jobs to `backend` and follows them to their end."""

    unwind_wait = 5.0  # seconds `stop` gives a cancelled job to end, then to its task to unwind

    def __init__(
        self,
        backend: Backend,
        store: ResultStore,
        keys: KeyRing,
        links: Links,
        webhooks: WebhookSender,
        metrics: Metrics = METRICS,
    ) -> None:
        self.backend = backend
        self.store = store
        self.keys = keys
        self.links = links
        self.webhooks = webhooks
        webhooks.output = self._webhook_links
        self.metrics = metrics
        self.accepting = True
        self.mean_seconds = 5.0  # a running mean of job durations, for `eta`
        self._tasks: dict[ServerJob, asyncio.Task[None]] = {}
        self._tokens: dict[ServerJob, CancelToken] = {}

    @property
    def in_flight(self) -> list[ServerJob]:
        return list(self._tasks)

    def start(self, key_id: int, family: str, intake: Intake, received: float) -> ServerJob:
        """Accept a job (its key's slot already taken) and start it on the backend."""
        request = intake.request
        job = self.store.new_job(
            key_id=key_id,
            family=family,
            samples=request.samples,
            base64_out=intake.base64_out,
            track_id=request.track_id,
            webhook=intake.webhook,
        )
        job.timings.received = received
        ahead = len(self._tasks) // max(1, self.backend.capacity)
        job.eta = self.mean_seconds * (1 + ahead)
        self._tokens[job] = token = CancelToken()
        port_job = Job(id=job.job_id, request=request, init_image=intake.image)
        job.timings.submitted = time.perf_counter()  # handed over; the backend runs from here
        self._tasks[job] = asyncio.create_task(self._run(job, port_job, token), name="server-job")
        self._count()
        return job

    async def wait(self, job: ServerJob, timeout: float) -> None:  # noqa: ASYNC109
        """Return once `job` ended or `timeout` seconds passed."""
        task = self._tasks.get(job)
        if task is not None and timeout > 0:
            await asyncio.wait({task}, timeout=timeout)

    async def _run(self, job: ServerJob, port_job: Job, token: CancelToken) -> None:
        try:
            result = await self.backend.generate(port_job, lambda e: self._progress(job, e), token)
        except InvalidRequest as exc:
            self.store.fail(job, str(exc), invalid=True)
        except InferenceError as exc:
            self.store.fail(job, _STOPPED if not self.accepting and token.cancelled else str(exc))
        except asyncio.CancelledError:  # cut off by `stop`: a fetch must not answer processing
            self.store.fail(job, _STOPPED)
            raise
        except Exception:
            log.exception("job %s failed unexpectedly", job.api_id)
            self.store.fail(job, _CRASHED)
        else:
            job.timings.ready = time.perf_counter()
            self.store.finish(job, result.model_copy(update={"track_id": job.track_id}))
            seconds = job.timings.ready - job.timings.submitted
            self.mean_seconds = 0.8 * self.mean_seconds + 0.2 * seconds
        finally:
            self._ended(job)

    def _ended(self, job: ServerJob) -> None:
        self._tasks.pop(job, None)
        self._tokens.pop(job, None)
        self.keys.release(job.key_id)
        if job.state == "success" and job.result is not None:
            self.metrics.finished("generated", job.timings.ready - job.timings.received)
            self.metrics.images.inc(len(job.result.images))
        else:
            self.metrics.finished("failed")
        self._count()
        if job.webhook:
            self.webhooks.send_later(job.webhook, self._webhook_result(job))

    def _progress(self, job: ServerJob, event: ProgressEvent) -> None:
        job.stage = event.stage
        if event.eta_seconds is not None:
            job.eta = event.eta_seconds
        elif event.total_steps:
            job.eta = self.mean_seconds * (1 - event.fraction)
        self._count()

    def _count(self) -> None:
        running = sum(1 for job in self._tasks if job.stage in _RUNNING_STAGES)
        self.metrics.queue_depth(len(self._tasks) - running, running)

    def _webhook_result(self, job: ServerJob) -> Img2ImgResult:
        """What the webhook gets: the result under the job's API id (its `output` the URLs)."""
        if job.result is not None:
            return job.result.model_copy(update={"id": str(job.api_id)})
        failed = Img2ImgResult(status="failed", id=str(job.api_id), message=job.error)
        return failed.model_copy(update={"track_id": job.track_id})

    def _webhook_links(self, result: Img2ImgResult) -> list[str]:
        job = self.store.get(result.id)
        return self.links.outputs(job) if job is not None and job.result is not None else []

    async def stop(self, grace: float) -> None:
        """Accept nothing more; give running jobs `grace` seconds, then cancel (fail) the rest."""
        self.accepting = False
        tasks = set(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for job, token in list(self._tokens.items()):
                token.cancel()
                log.warning("job %s did not finish within the grace period", job.api_id)
            if pending:
                _, stuck = await asyncio.wait(pending, timeout=self.unwind_wait)
                for task in stuck:
                    task.cancel()
                if stuck:  # their failure (and webhook) is recorded as they unwind
                    await asyncio.wait(stuck, timeout=self.unwind_wait)
        await self.webhooks.drain(timeout=5.0)

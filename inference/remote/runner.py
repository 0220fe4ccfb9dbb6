"""Running one job from the queue on the worker's backend, ending in an outcome to store.

Every way a job can end becomes an outcome (a result or an `InferenceError`), so that the
submitter always gets an answer: an entry that cannot be read, a backend error, or a bug in the
backend (logged here, reported to the user without its details).
"""

from __future__ import annotations

import logging

from pydantic import ValidationError

from inference.errors import BackendError, InferenceError
from inference.port import Backend, CancelToken, ProgressCallback
from inference.remote.wire import Fields, error_fields, read_job, result_fields
from inference.result import Img2ImgResult

__all__ = ["Outcome", "outcome_fields", "run_job"]

log = logging.getLogger(__name__)

Outcome = Img2ImgResult | InferenceError


async def run_job(
    backend: Backend,
    fields: Fields,
    external_id: bytes | None,
    progress: ProgressCallback,
    cancel: CancelToken,
) -> Outcome:
    """Run the job of a stream entry; `external_id`, the handle a previous worker reported."""
    try:
        job = read_job(fields, external_id)
    except (ValidationError, KeyError, UnicodeDecodeError) as exc:
        log.error("unreadable job entry (%s): failing it", type(exc).__name__)
        return BackendError("The job could not be read from the queue; submit it again.")
    try:
        return await backend.generate(job, progress, cancel)
    except InferenceError as exc:
        return exc
    except Exception as exc:
        log.exception("job %s failed in the %s backend", job.id, backend.name)
        return BackendError(
            f"The worker failed unexpectedly ({type(exc).__name__}); try again later."
        )


def outcome_fields(outcome: Outcome) -> dict[str, str | bytes]:
    return error_fields(outcome) if isinstance(outcome, InferenceError) else result_fields(outcome)

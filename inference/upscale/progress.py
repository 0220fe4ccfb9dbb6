"""Progress of an upscale: the steps of all its tiles as one job's progress, and the tiles'
external handles (the API's request ids) kept as one handle so that a resumed upscale resumes
each tile's work instead of paying for it again."""

from __future__ import annotations

import json
from typing import Literal

from inference.port import ProgressCallback, ProgressEvent
from inference.running import report_progress

__all__ = ["TileProgress", "tile_handles"]


def tile_handles(external_id: str | None) -> dict[str, str]:
    """The tiles' handles kept in an upscale job's `external_id` (empty when there are none)."""
    try:
        found = json.loads(external_id or "{}")
    except ValueError:
        return {}
    if not isinstance(found, dict):
        return {}
    return {str(k): v for k, v in found.items() if isinstance(v, str)}


class TileProgress:
    """Folds the tiles' progress events into the upscale job's own."""

    def __init__(
        self, job_id: str, tiles: int, progress: ProgressCallback, handles: dict[str, str]
    ):
        self._job_id = job_id
        self._progress = progress
        self._steps = [(0, 0)] * tiles
        self._handles = dict(handles)

    def for_tile(self, index: int) -> ProgressCallback:
        def report(event: ProgressEvent) -> None:
            if event.total_steps:  # other events (a handle, post-processing) carry no steps
                self._steps[index] = (event.step, event.total_steps)
            handle = None
            if event.external_id is not None and self._handles.get(str(index)) != event.external_id:
                self._handles[str(index)] = event.external_id
                handle = json.dumps(self._handles, sort_keys=True)
            self.report("running" if event.stage == "running" else "queued", handle)

        return report

    def report(self, stage: Literal["queued", "running"], handle: str | None = None) -> None:
        known = [total for _, total in self._steps if total]
        per_tile = max(known, default=0)
        done = sum(step for step, _ in self._steps)
        running = stage == "running" or any(step for step, _ in self._steps)
        event = ProgressEvent(
            job_id=self._job_id,
            stage="running" if running else "queued",
            step=done,
            total_steps=per_tile * len(self._steps),
            external_id=handle,
        )
        report_progress(self._progress, event)

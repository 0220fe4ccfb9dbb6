"""Image-to-image inference: the request contract, image ingest, safety, and the backends.

Nothing here imports `discord`, `bot` or `cogs`; torch and diffusers are imported lazily, only by
the local backend.
"""

from inference.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    Cancelled,
    InferenceError,
    InvalidImage,
    InvalidRequest,
    RejectedContent,
)
from inference.port import Backend, CancelToken, Job, ProgressEvent
from inference.request import Img2ImgRequest
from inference.result import GeneratedImage, Img2ImgResult
from inference.settings import InferenceSettings

__all__ = [
    "Backend",
    "BackendError",
    "BackendTimeout",
    "BackendUnavailable",
    "CancelToken",
    "Cancelled",
    "GeneratedImage",
    "Img2ImgRequest",
    "Img2ImgResult",
    "InferenceError",
    "InferenceSettings",
    "InvalidImage",
    "InvalidRequest",
    "Job",
    "ProgressEvent",
    "RejectedContent",
]

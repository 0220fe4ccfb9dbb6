"""The ModelsLab API backend: `ModelsLabBackend` (built by `inference.backends.create_backend`).

Modules: `client` (HTTP and retries), `responses` (the API's answers and what errors mean),
`endpoints` (origins, keys, paths), `payload` (request body, image bytes), `polling` (waiting for
a job), `webhook` (the optional receiver), `backend` (the port implementation).
"""

from inference.modelslab.backend import ModelsLabBackend

__all__ = ["ModelsLabBackend"]

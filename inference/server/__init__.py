"""The ModelsLab-compatible img2img server (`python -m inference serve`, docs/reference.md §10).

Any ModelsLab client can use this machine's backend by changing its base URL: the four generate
routes and their fetch routes take and answer the real API's JSON shapes. Jobs go through the
backend port built by `inference.backends.create_backend` (in this process, or to Redis workers);
jobs and their output files live in memory until they expire. One module per concern: `keys`
(API keys, the per-key limit), `intake` (reading a request body and its init image), `store`
(jobs, outputs, expiry), `runner` (running jobs on the backend, webhooks, shutdown),
`responses` (the API's shapes), `bodies` (reading bodies within their caps), `routes` (the
aiohttp app), `serve` (the command).
"""

from inference.server.routes import ServerState, create_app, create_runner

__all__ = ["ServerState", "create_app", "create_runner"]

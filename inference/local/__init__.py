"""The local diffusers backend: `inference.local.backend.LocalBackend`.

Modules, each with one job: `registry` (the models file), `batcher` (queue and batch keys),
`worker` (the GPU thread), `engine` (one batch through a pipeline), `loading` (pipelines, VAEs,
the model cache), `components` (per-batch VAE, LoRAs, ToMe), `schedulers`, `prompts` (embeddings
and clip skip), `enhance` (enhance_prompt). Only `registry`, `batcher`, `worker`, `enhance` and
`backend` may be imported without torch; the rest load in the worker thread.
"""

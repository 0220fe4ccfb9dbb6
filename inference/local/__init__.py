"""The local diffusers backend: `inference.local.backend.LocalBackend`.

Modules, each with one job: `registry` (the models file's entries), `tome` (per-model ToMe
settings), `batcher` (queue and batch keys), `worker` (the GPU thread), `failures` (unexpected
errors on that thread: logged, reported without their text), `engine` (one batch through a
pipeline), `loading` (pipelines, VAEs, the model cache), `hub` (hub ids when the Hugging Face Hub
cannot be reached: the cache, or a quick failure), `quiet` (known library noise dropped),
`components` (per-batch VAE, LoRAs, ToMe), `schedulers`, `emphasis` and `windows` (A1111 prompt
syntax, 75-token windows), `prompts` (embeddings and clip skip), `enhance` (enhance_prompt).
`engine`, `loading`, `components`, `schedulers` and `prompts` import torch and load in the worker
thread; the others may be imported without it.
"""

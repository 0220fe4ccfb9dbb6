"""The remote queue: jobs on Redis Streams, run by GPU worker processes on any machines.

`submitter.RemoteBackend` is the `Backend` that submitters (the bot, the CLI) get from
`inference.backends.create_backend` when `IMG2IMG_QUEUE` is a Redis URL; `worker.QueueWorker`
(`python -m inference worker`) serves the jobs with a real backend. `keys` documents the layout
in Redis. Nothing here imports torch.
"""

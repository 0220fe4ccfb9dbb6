# img2img bot: non-root, models and database on volumes.
# One CUDA: the base image has none; PyTorch's CUDA wheels bring the CUDA and cuDNN libraries they
# were built against, and the host's NVIDIA driver comes in through the NVIDIA container toolkit.

FROM python:3.12-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY cogs ./cogs
COPY inference ./inference
# Versions are bounded in pyproject.toml; the cu128 index serves torch with its CUDA wheels.
# hadolint ignore=DL3013
RUN /opt/venv/bin/pip install --extra-index-url https://download.pytorch.org/whl/cu128 '.[local]'

FROM python:3.12-slim-bookworm
ENV PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    HF_HOME=/app/models/hf-cache \
    IMG2IMG_MODELS=/app/models/models.toml \
    IMG2IMG_DATABASE=/app/data/img2img.sqlite3 \
    IMG2IMG_METRICS_PORT=9100
# The project is installed in the venv; /app holds only the volumes.
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# The volumes belong to the image's user, so named volumes start out writable; bind-mounted host
# folders must be owned by uid 10001 (see the README's Docker section).
RUN useradd --create-home --uid 10001 img2img \
    && mkdir -p /app/models/hf-cache /app/data \
    && chown -R img2img:img2img /app/models /app/data
USER 10001:10001

VOLUME ["/app/models", "/app/data"]
# /healthz answers 200 once the bot or worker is ready; the image always sets the port, and an
# operator who empties it turns the probe off rather than failing the container.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request as u; p = os.environ.get('IMG2IMG_METRICS_PORT'); sys.exit(0 if not p else u.urlopen(f'http://127.0.0.1:{p}/healthz', timeout=4).status != 200)"]
CMD ["python", "-m", "bot"]

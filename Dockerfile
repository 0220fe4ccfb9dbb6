# img2img bot: CUDA runtime, non-root, models and database on volumes.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/app/models/hf-cache \
    IMG2IMG_MODELS=/app/models/models.toml \
    IMG2IMG_DATABASE=/app/data/img2img.sqlite3

# Ubuntu's python3 follows the base image; pinning it would break on every base update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY cogs ./cogs
COPY inference ./inference
# Versions are bounded in pyproject.toml.
# hadolint ignore=DL3013
RUN pip install --extra-index-url https://download.pytorch.org/whl/cu128 '.[local]'

RUN useradd --create-home --uid 10001 img2img \
    && mkdir -p /app/models /app/data \
    && chown -R img2img:img2img /app/models /app/data
USER 10001:10001

VOLUME ["/app/models", "/app/data"]
CMD ["python", "-m", "bot"]

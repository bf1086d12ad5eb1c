# syntax=docker/dockerfile:1
#
# privgate: a privacy-enforcing SQL gateway.
#
#   docker build -t privgate .
#   docker run --rm -p 8080:8080 -v privgate-data:/data privgate
#
# The default command serves the demo "clinic" warehouse (built into /data on first start, a few
# seconds) with the demo policy. /data also holds the control database (ledger, audit, keys):
# keep it on a volume so budgets and the audit trail survive restarts.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: install privgate and its dependencies into a virtualenv --------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A compiler only for dependencies without a prebuilt wheel on this platform; it stays in this stage.
# Not pinned (DL3008): whatever build-essential the base image's Debian ships is fine, and a pin
# would break the build on every Debian point release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}"

WORKDIR /src
COPY . .
RUN pip install . \
    && privgate --help > /dev/null

# --- runtime -------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="privgate" \
      org.opencontainers.image.description="Privacy-enforcing SQL gateway: differential privacy, policies, budgets and audit in front of your warehouse." \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH="/opt/venv/bin:${PATH}" \
    PRIVGATE_DATA_DIR=/data \
    PRIVGATE_PG_HOST=0.0.0.0

# An unprivileged user with a fixed uid/gid, so volume permissions are predictable.
RUN groupadd --system --gid 10001 privgate \
    && useradd --system --uid 10001 --gid privgate --create-home --home-dir /home/privgate \
       --shell /usr/sbin/nologin privgate \
    && mkdir -p /data \
    && chown privgate:privgate /data

COPY --from=build /opt/venv /opt/venv

# Declared after the chown so that a new named volume starts out owned by privgate.
VOLUME ["/data"]
WORKDIR /home/privgate
USER 10001:10001

# 8080: REST API over HTTPS (bound to 0.0.0.0, so PRIVGATE_REQUIRE_TLS makes it HTTPS: a
# self-signed pair in /data unless PRIVGATE_TLS_CERT/PRIVGATE_TLS_KEY name mounted files; the health
# check probes /healthz over loopback and does not verify the certificate).
# 5433: PostgreSQL wire protocol (TLS + SCRAM; the shadow catalog runs embedded,
# as the unprivileged user, under /data/shadow-pg unless PRIVGATE_WIRE_SHADOW_DSN is set).
EXPOSE 8080 5433

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import ssl, sys, urllib.request; r = urllib.request.urlopen('https://127.0.0.1:8080/healthz', timeout=4, context=ssl._create_unverified_context()); sys.exit(0 if r.status == 200 else 1)"]

CMD ["privgate", "serve", "--demo", "--host", "0.0.0.0", "--port", "8080"]

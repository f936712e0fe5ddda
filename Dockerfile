# syntax=docker/dockerfile:1
# bems-exchange-exporter container image (docs/deployment.md).
#
#   docker build -t bems-exchange-exporter:0.1.0 .          # the product: no simulator in it
#   docker build --target demo -t bems-exchange-exporter:0.1.0-demo .   # plus the simulator (compose demo)
#   docker run --read-only --tmpfs /tmp:rw,noexec,nosuid,size=16m \
#     -v /srv/bems/config.yml:/etc/bems-exchange-exporter/config.yml:ro \
#     -v /srv/bems/secrets:/run/secrets/bems:ro -p 10442:10442 bems-exchange-exporter:0.1.0
#
# Nothing secret or site-specific is baked in: the configuration is mounted at
# /etc/bems-exchange-exporter/config.yml and its secrets as files (`*_file` keys, e.g. /run/secrets/bems/...).
# The image runs as the numeric non-root user 65532 and needs no writable path but /tmp (a tmpfs).

# The base image by tag. Pin it by digest for a reproducible build that a re-pushed tag cannot change:
#   docker buildx imagetools inspect python:3.11-slim     # prints "Digest: sha256:..." of the manifest list
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:<that digest> ...
# (or write it here). The digest is not in this file because it cannot be looked up where the image is
# developed; a digest copied from anywhere but the registry itself would be worse than the tag.
ARG PYTHON_IMAGE=python:3.11-slim

# --- builder: build the wheel, install it and its dependencies into /opt/venv -----------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# python-gssapi and krb5 (the kerberos method) build from source against MIT Kerberos: its headers and a C
# compiler, in this stage only. Debian's versions are the base image's release's, updated with it.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libkrb5-dev \
    && rm -rf /var/lib/apt/lists/*
# Only what the wheel needs (see .dockerignore): the package, its metadata, the README (long description)
# and the lock of the runtime dependencies, every file pinned by its SHA-256 (requirements.lock).
COPY requirements.lock pyproject.toml README.md ./
COPY exporter ./exporter
# The dependencies from the lock only (--require-hashes: a file whose hash is not listed is refused), then
# the wheel without resolving anything; pip check proves the lock satisfies the wheel's requirements.
# tests/deploy/test_packaging.py runs these same pip commands outside Docker: keep them in step.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --require-hashes --no-deps -r requirements.lock \
    && pip wheel --no-deps --wheel-dir /tmp/wheels . \
    && /opt/venv/bin/pip install --no-deps /tmp/wheels/*.whl \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -m compileall -q /opt/venv

# --- demo-builder: the same venv plus the Exchange simulator (its own distribution, simulator/) --------
FROM builder AS demo-builder
COPY simulator ./simulator
RUN /opt/venv/bin/pip install --require-hashes --no-deps -r simulator/requirements.lock \
    && pip wheel --no-deps --wheel-dir /tmp/simulator-wheels ./simulator \
    && /opt/venv/bin/pip install --no-deps /tmp/simulator-wheels/*.whl \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/python -m compileall -q /opt/venv

# --- runtime: a clean Python, no build tools, no source, no venv yet: what both images share ------------
FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="bems-exchange-exporter" \
      org.opencontainers.image.description="Prometheus exporter that checks every Microsoft Exchange prerequisite of BlackBerry BEMS Push Notifications" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.documentation="docs/deployment.md" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim"

# PYTHONDONTWRITEBYTECODE: the root filesystem may be read-only; the venv is byte-compiled at build time.
# TMPDIR: the only writable place, a tmpfs mounted at /tmp (docker run --tmpfs /tmp, emptyDir in Kubernetes).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp

# MIT Kerberos' run-time libraries, which python-gssapi and krb5 link to (not the builder's headers).
# The configuration directory exists (mount point) but holds nothing: mount config.yml there, read-only.
# /var/lib/bems-exchange-exporter belongs to the runtime user so that a named volume mounted there (the
# compose demo's simulator state) starts writable; the exporter itself never writes to disk.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgssapi-krb5-2 libkrb5-3 \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -m 0755 /etc/bems-exchange-exporter \
    && install -d -o 65532 -g 65532 -m 0750 /var/lib/bems-exchange-exporter

# A numeric user and group that exist in no passwd file: Kubernetes runAsNonRoot can verify it.
USER 65532:65532
WORKDIR /tmp

# /metrics, /-/healthy, /-/ready (the notification listener, 10443 by default, is published only when
# the configuration has a `notifications:` block).
EXPOSE 10442

# Python's urllib, no curl in the image. Plain HTTP: with --web.config.file (TLS, basic auth) use an
# orchestrator probe instead, or --no-healthcheck.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:10442/-/healthy', timeout=4).status == 200 else 1)"]

# --- demo: the runtime with the simulator's venv, for the compose demo profile only (docker build --target demo)
FROM runtime AS demo
COPY --from=demo-builder /opt/venv /opt/venv
ENTRYPOINT ["bems-simulator"]
CMD ["simulate", "--state-dir=/var/lib/bems-exchange-exporter/demo"]

# --- final (the default target): the product, the exporter's venv only ---------------------------------
FROM runtime
COPY --from=builder /opt/venv /opt/venv
ENTRYPOINT ["bems-exchange-exporter"]
CMD ["--config.file=/etc/bems-exchange-exporter/config.yml"]

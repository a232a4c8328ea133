# syntax=docker/dockerfile:1
#
# authcar container image.
#
#   docker build -t authcar .
#   docker run --read-only --tmpfs /tmp -p 4180:4180 -p 9901:9901 authcar
#
# The base is pinned by tag. For reproducible builds pin the digest as well: look it up with
#   docker buildx imagetools inspect python:3.12-slim        (the "Digest:" line)
# and build with
#   docker build --build-arg PYTHON_IMAGE=python:3.12-slim@sha256:<digest> -t authcar .
# (or change the default below). Both stages use the same base, so pure-Python wheels and
# compiled ones built or downloaded for it match the runtime exactly.
# Needs BuildKit (the default builder since Docker 23) for the RUN --mount lines.
ARG PYTHON_IMAGE=python:3.12-slim

# ---- builder: wheels for authcar and every dependency --------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# All dependencies publish manylinux wheels for CPython 3.12 on amd64 and arm64, so no compiler
# is installed here either. Should one ever need building, install build-essential in THIS stage.
# Only what `pip wheel .` reads: editing tests, docs or deploy/ does not invalidate this layer.
# (tests/test_deploy.py builds the wheel from exactly these files.)
COPY pyproject.toml README.md ./
COPY authcar/ authcar/
COPY examples/book-service/book_service/ examples/book-service/book_service/
COPY policies/ policies/
# The cache mount keeps pip's download cache between builds without putting it in a layer.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --wheel-dir /wheels .

# ---- runtime ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

# Re-declared: an ARG from before the first FROM is only visible inside a stage that names it.
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="authcar" \
      org.opencontainers.image.description="Authentication and authorization sidecar: a streaming reverse proxy that only lets verified, authorized requests reach your app" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# HOME=/tmp: the user below has no passwd entry, and anything that writes under $HOME must land
# on the only writable path when the root filesystem is read-only.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    HOME=/tmp

# Offline install from the builder's wheels only. The wheels are bind-mounted, not copied, so
# they never become a layer of this image; pip byte-compiles at install time, so nothing needs
# writing at run time. Naming the wheel file installs exactly the authcar just built (and pins
# it, as hadolint's DL3013 asks); its dependencies come from the same directory.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels /wheels/authcar-*.whl

# Read-only root filesystem: authcar writes nothing at run time except under /tmp. The
# prometheus multiprocess directory (PROMETHEUS_MULTIPROC_DIR, when several workers run)
# goes under /tmp too. In Kubernetes set readOnlyRootFilesystem: true and mount an emptyDir
# at /tmp; with plain docker, use --read-only --tmpfs /tmp.

# Numeric, so Kubernetes' runAsNonRoot can verify it without a passwd entry.
USER 65532:65532

# 4180: public listener (the proxy). 9901: admin listener (liveness/readiness probes + /metrics);
# don't publish 9901 beyond the pod/host.
EXPOSE 4180 9901

# No HEALTHCHECK: Kubernetes probes the admin port (9901) directly, and docker's HEALTHCHECK
# is ignored there.
ENTRYPOINT ["authcar"]
CMD ["run"]

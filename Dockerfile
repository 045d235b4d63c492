# One image for every part of Maxine: the registry (`maxine`, the default command), the operator
# (`maxine-operator`) and the pod sidecar (`maxine-sidecar`). Pick one with the container's command.
#
#   docker build -t maxine .
#   docker run -p 8080:8080 -p 8080:8080/udp -p 50051:50051 maxine
#   docker run maxine maxine-sidecar --help
#
# Two stages: the builder (the full Python image, which has compilers for any dependency that ships
# no wheel for the platform) installs the distribution into a virtual environment; the final stage
# is the slim image with that environment copied in, and no compiler, no pip, no source tree.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# The whole distribution (registry, client, operator, sidecar) from one build context; .dockerignore
# keeps tests, benchmarks and local caches out of it.
COPY . .
RUN python -m venv /opt/maxine \
    && /opt/maxine/bin/pip install . \
    && /opt/maxine/bin/pip uninstall --yes pip


FROM python:${PYTHON_VERSION}-slim-bookworm

LABEL org.opencontainers.image.title="maxine" \
      org.opencontainers.image.description="Maxine service registry, operator and sidecar" \
      org.opencontainers.image.licenses="MIT"

# A container is reached through its own interface, not loopback: the image listens on every address.
ENV PATH=/opt/maxine/bin:$PATH \
    MAXINE_HOST=0.0.0.0 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# A fixed numeric user, so that Kubernetes' runAsNonRoot can check it without a passwd lookup.
RUN groupadd --system --gid 10001 maxine \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/maxine --no-create-home \
       --shell /usr/sbin/nologin maxine \
    && install --directory --owner 10001 --group 10001 --mode 0750 /var/lib/maxine

COPY --from=builder /opt/maxine /opt/maxine

# The working directory is where file persistence writes unless told otherwise; mount a volume there.
WORKDIR /var/lib/maxine
USER 10001:10001

# HTTP API, gRPC, and UDP heartbeats (on the HTTP port's number by default).
EXPOSE 8080 50051 8080/udp

CMD ["maxine"]

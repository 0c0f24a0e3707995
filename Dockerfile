# syntax=docker/dockerfile:1
# llmpulse: CLI and stream workers (`llmpulse worker sink|breaker|prompts`).
#
# Build:  docker build -t llmpulse .
# Run:    docker run --rm -e LLMPULSE_KAFKA_BOOTSTRAP=kafka:9092 \
#           -e LLMPULSE_CLICKHOUSE_DSN=http://user:pw@clickhouse:8123/llmpulse llmpulse worker sink
#
# Configuration comes only from LLMPULSE_* variables (see llmpulse.processors.settings):
#   LLMPULSE_KAFKA_BOOTSTRAP   host:port[,host:port]
#   LLMPULSE_CLICKHOUSE_DSN    http(s)://user:password@host:port/database (a ClickHouse server;
#                              without it llmpulse uses embedded chDB under LLMPULSE_STATE_DIR)
#   LLMPULSE_REDIS_URL         redis://host:port/db
#   LLMPULSE_PROMETHEUS_URL    http://host:port
#   LLMPULSE_METRICS_PORT      port of the Prometheus /metrics endpoint of a worker

# ---- build stage: resolve and install dependencies into a self-contained venv ----
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Compilers only here, for any dependency that has no wheel for this platform.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# The package sources: llmpulse/ holds relative symlinks to the top-level folders, so
# they are copied as they are in the checkout. README* is the long description.
COPY pyproject.toml LICENSE README* ./
COPY llmpulse/ llmpulse/
COPY schemas/ schemas/
COPY core/ core/
COPY gateway/ gateway/
COPY processors/ processors/
COPY cli/ cli/
COPY devstack/ devstack/
COPY simulator/ simulator/
COPY clickhouse/ clickhouse/
COPY ops/ ops/
COPY examples/ examples/
RUN pip install --upgrade pip && pip install '.[worker]'

# ---- runtime stage ----
FROM python:3.11-slim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LLMPULSE_STATE_DIR=/var/lib/llmpulse

RUN groupadd --system --gid 10001 llmpulse \
    && useradd --system --uid 10001 --gid llmpulse --home-dir /home/llmpulse --create-home llmpulse \
    && mkdir -p /var/lib/llmpulse \
    && chown llmpulse:llmpulse /var/lib/llmpulse

COPY --from=build /opt/venv /opt/venv

# Migrations, named queries and templates are package data of the installed wheel.
WORKDIR /app

USER llmpulse
# A named volume mounted here inherits the llmpulse ownership set above.
VOLUME ["/var/lib/llmpulse"]

ENTRYPOINT ["llmpulse"]
CMD ["--help"]

# syntax=docker/dockerfile:1
#
# One image for every vna service. The command picks the role:
#   vna scp | vna api | vna worker | vna beat | vna db upgrade | vna up (all in one)
# See docker-compose.yml for the production shape.

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# libmagic: what a document really is (MIME sniffing of uploads).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libmagic1 \
 && rm -rf /var/lib/apt/lists/*

# A fixed, unprivileged uid/gid so that volume ownership is predictable.
ARG VNA_UID=10001
ARG VNA_GID=10001
RUN groupadd --system --gid "${VNA_GID}" vna \
 && useradd --system --uid "${VNA_UID}" --gid vna --home-dir /home/vna --create-home \
        --shell /usr/sbin/nologin vna \
 && mkdir -p /data \
 && chown vna:vna /data

WORKDIR /src
# Metadata first, then the packages that pyproject.toml's [tool.setuptools.packages.find]
# includes (vna*, services*, storage*; storage/migrations ships as package data).
# README.md* is a glob so that the build does not fail while the README is missing.
# requirements.lock: every dependency at the version CI tested (`make lock` renews it).
COPY pyproject.toml requirements.lock README.md* ./
COPY vna ./vna
COPY services ./services
COPY storage ./storage
RUN pip install -c requirements.lock . \
 && vna --help >/dev/null \
 && rm -rf /src

# Embedded-mode data, the SCP's incoming spool, and the lock file of `vna db upgrade`.
ENV VNA_DATA_DIR=/data \
    VNA_DICOM_HOST=0.0.0.0 \
    VNA_HTTP_HOST=0.0.0.0

WORKDIR /home/vna
USER vna:vna

# DICOM (VNA_DICOM_PORT) and HTTP (VNA_HTTP_PORT)
EXPOSE 11112 8000

# Without a command the container runs the whole archive embedded (SQLite, files, a
# serverless broker under /data); docker-compose.yml gives each service its own command.
CMD ["vna", "up"]

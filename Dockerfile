# securechat: the server, securechat-token, securechat-certs and the client, in one image.
# It holds no secrets: certificates, keys and tokens are made at run time into
# volumes (see docker-compose.yml, service "init"), and .dockerignore keeps certs/,
# run/ and tokens files out of the build context.
#
# Three images from one file: the last stage is securechat's (what `docker build .`
# makes); the stages "redis" and "balancer" serve the compose profile "cluster" (Redis
# with its AOF, HAProxy in TCP mode), both Debian's packages on the same base.
#
# Base: Debian bookworm, whose python3 is 3.11, the version securechat is tested with.
# On a normal machine debian:bookworm-slim is pulled and Python added with apt. Where no
# image can be pulled, scripts/docker-engine.sh builds a bookworm base with debootstrap,
# Python, redis-server and haproxy already in it, and tags it with this name: the apt
# steps then do nothing.
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS base
RUN if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi
ENV LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1

FROM base AS build
COPY . /src
# Python packages go into a venv that the final stage copies, so sources and wheels
# stay out of the image. They come from docker/wheels/ when it holds wheels (made on
# the host by scripts/docker-wheels.sh, for machines whose `docker build` cannot reach
# PyPI), otherwise from PyPI; the versions are pyproject.toml's either way. Debian's
# python3-cryptography (38) is older than securechat needs (42), hence pip.
# The "metrics" extra (prometheus_client) serves the admin endpoint's /metrics, which
# compose turns on (--admin-listen 127.0.0.1:9090) and the healthcheck asks /readyz of;
# the "redis" extra (redis-py, hiredis) is the store of the cluster profile's nodes.
RUN python3 -m venv /opt/securechat \
    && if ls /src/docker/wheels/*.whl >/dev/null 2>&1; then \
        /opt/securechat/bin/pip install --no-cache-dir --no-index \
            --find-links /src/docker/wheels "/src[metrics,redis]"; \
    else \
        /opt/securechat/bin/pip install --no-cache-dir "/src[metrics,redis]"; \
    fi \
    && /opt/securechat/bin/securechat-server --version \
    && /opt/securechat/bin/python -c "import prometheus_client, redis, hiredis"

# Redis for the cluster profile: Debian's redis-server (7.0), as its own user. Its data
# directory /var/lib/redis (owned by redis) is where compose mounts the volume, so the
# new volume gets that owner. The settings are on the command line in
# docker-compose.yml (--appendonly yes, noeviction), none in a config file.
FROM base AS redis
RUN if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends redis-server redis-tools \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && redis-server --version
USER redis
WORKDIR /var/lib/redis
EXPOSE 6379
CMD ["redis-server", "--dir", "/var/lib/redis"]

# The cluster profile's TCP load balancer: Debian's HAProxy, as its own user (it binds
# 7443, no privileged port, no chroot). Its configuration is docker/haproxy.cfg, which
# compose mounts read-only over Debian's example in /etc/haproxy.
FROM base AS balancer
RUN if ! command -v haproxy >/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends haproxy \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && haproxy -v
USER haproxy
EXPOSE 7443
# -W (master-worker): as PID 1 the master handles SIGTERM and stops the worker at once;
# a lone -db process ignored it, and compose waited 10 s to kill it.
CMD ["haproxy", "-W", "-db", "-f", "/etc/haproxy/haproxy.cfg"]

FROM base
COPY --from=build /opt/securechat /opt/securechat
COPY docker/init.sh /usr/local/bin/securechat-init
COPY docker/healthcheck.py /usr/local/bin/securechat-healthcheck
# A fixed uid/gid, so volume contents keep one owner whatever the image version.
# /data/server and /data/client exist here, owned by that user, because Docker gives
# a new named volume the owner and mode of the directory it is first mounted on.
RUN groupadd --system --gid 10001 securechat \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/securechat \
        --create-home --shell /usr/sbin/nologin securechat \
    && install -d -o securechat -g securechat -m 0700 /data/server /data/client \
        /data/messages
# Where the files live in the volumes; the same variables serve securechat-server,
# securechat-token and securechat-client, so `docker compose exec securechat
# securechat-token add dave` needs no options. SECURECHAT_HOST is left to each service:
# the server listens on it, a client connects to it.
ENV PATH=/opt/securechat/bin:$PATH \
    SECURECHAT_CERT=/data/server/certs/server.pem \
    SECURECHAT_KEY=/data/server/certs/server.key \
    SECURECHAT_TOKENS=/data/server/tokens.json \
    SECURECHAT_DATA_DIR=/data/messages \
    SECURECHAT_CA=/data/client/ca.pem
USER 10001:10001
WORKDIR /home/securechat
EXPOSE 7443
CMD ["securechat-server", "--host", "0.0.0.0"]

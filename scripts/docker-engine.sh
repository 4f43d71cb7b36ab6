#!/usr/bin/env bash
# A private Docker engine for machines that have none running and cannot pull images
# (this project's CI machine): dockerd on its own socket, data and state under one
# directory, and a Debian bookworm base image built with debootstrap and tagged with
# the name the Dockerfile's FROM uses. Nothing here touches a system-wide dockerd.
#
#   scripts/docker-engine.sh start DIR   start dockerd (state in DIR), make sure the base
#                                        image is there; prints: export DOCKER_HOST=...
#   scripts/docker-engine.sh stop DIR    stop that dockerd by its PID, remove its bridges
#                                        and DIR
#   scripts/docker-engine.sh base-image  only build (and cache) the base image's rootfs
#
# Exit codes: 0 ok, 1 failure, 2 usage, 3 this machine cannot run the engine (not root,
# packages missing, or dockerd dies at start): the reason is printed, tests skip on it.
#
# The engine runs with --bridge=none --iptables=false: compose makes its own networks,
# and the host's firewall and default bridge are never touched, so nothing is left
# behind but what `stop` removes. Containers reach each other, not the outside world.
#
# Environment: SECURECHAT_DOCKER_CACHE (default /var/cache/securechat-docker) keeps the
# base rootfs tarball between runs: ~60 s to make, ~3 s to import.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
cache=${SECURECHAT_DOCKER_CACHE:-/var/cache/securechat-docker}
suite=bookworm
# python3-venv brings ensurepip; passwd brings useradd; redis-server (with redis-tools:
# redis-cli) and haproxy serve the compose "cluster" profile's redis and balancer
# images (Dockerfile stages of the same name). The tarball's name holds a hash of this
# list, so changing it rebuilds the cache; bump the tag to rebuild it otherwise.
packages=python3,python3-venv,passwd,ca-certificates,redis-server,redis-tools,haproxy
rootfs_tar="$cache/$suite-minbase-$(echo "$packages" | md5sum | cut -c1-8)-v1.tar"

say() { echo "docker-engine: $*" >&2; }
cannot() { say "cannot run a Docker engine here: $*"; exit 3; }

# The image names the Dockerfile builds FROM (ARG BASE_IMAGE=... default).
base_tags() {
    sed -n 's/^ARG BASE_IMAGE=\(.*\)$/\1/p' "$root/Dockerfile"
}

need_tools() {
    [ "$(id -u)" = 0 ] || cannot "dockerd and debootstrap need root"
    local missing=()
    for tool in dockerd docker debootstrap; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [ ${#missing[@]} = 0 ] || cannot "${missing[*]} not installed; as root:" \
        "apt-get install -y docker.io docker-compose debootstrap (.ci/run does this)"
}

mirror() {
    local url=""
    if [ -r /etc/apt/sources.list.d/debian.sources ]; then
        url=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    elif [ -r /etc/apt/sources.list ]; then
        url=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list)
    fi
    echo "${url:-http://deb.debian.org/debian}"
}

# Build the rootfs tarball once; concurrent runs wait on a lock instead of racing.
base_rootfs() {
    mkdir -p "$cache"
    exec 9>"$cache/.lock"
    flock 9
    if [ ! -s "$rootfs_tar" ]; then
        local tmp
        tmp=$(mktemp -d "$cache/rootfs.XXXXXX")
        say "building the $suite base image with debootstrap (about a minute, cached in $cache)"
        if ! debootstrap --variant=minbase --include="$packages" "$suite" "$tmp/rootfs" \
                "$(mirror)" >"$tmp/debootstrap.log" 2>&1; then
            tail -20 "$tmp/debootstrap.log" >&2
            rm -rf "$tmp"
            exec 9>&-
            say "debootstrap failed"
            return 1
        fi
        # What an image does not need: package caches, indexes, docs.
        rm -rf "$tmp/rootfs"/var/cache/apt/archives/*.deb "$tmp/rootfs"/var/lib/apt/lists/* \
            "$tmp/rootfs"/usr/share/doc/* "$tmp/rootfs"/usr/share/man/* \
            "$tmp/rootfs"/usr/share/locale/*
        tar -C "$tmp/rootfs" -cf "$tmp/rootfs.tar" .
        mv "$tmp/rootfs.tar" "$rootfs_tar"
        rm -rf "$tmp"
    fi
    exec 9>&-
}

pid_of() {
    local pidfile="$1/docker.pid"
    [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null && cat "$pidfile"
}

start() {
    local dir="$1"
    need_tools
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    local sock="unix://$dir/docker.sock"
    export DOCKER_HOST="$sock"
    if ! pid_of "$dir" >/dev/null; then
        # Unix socket paths are limited to 107 bytes; containerd's lives under exec/.
        [ ${#dir} -le 60 ] || { say "state directory path too long (max 60): $dir"; exit 2; }
        dockerd --data-root "$dir/data" --exec-root "$dir/exec" -H "$sock" \
            --pidfile "$dir/docker.pid" --bridge=none --iptables=false --ip-masq=false \
            >"$dir/dockerd.log" 2>&1 &
        local pid=$! deadline=$((SECONDS + 60))
        until docker version >/dev/null 2>&1; do
            if ! kill -0 "$pid" 2>/dev/null; then
                tail -15 "$dir/dockerd.log" >&2
                cannot "dockerd exited at start (log: $dir/dockerd.log)"
            fi
            if [ $SECONDS -ge $deadline ]; then
                tail -15 "$dir/dockerd.log" >&2
                kill "$pid" 2>/dev/null || true
                say "dockerd not ready after 60 s"
                exit 1
            fi
            sleep 0.2
        done
        say "dockerd $pid ready on $sock"
    fi
    local tags first
    tags=$(base_tags)
    [ -n "$tags" ] || { say "no 'ARG BASE_IMAGE=' line in $root/Dockerfile"; exit 1; }
    first=$(echo "$tags" | head -1)
    if ! docker image inspect "$first" >/dev/null 2>&1; then
        base_rootfs
        docker import --message "debootstrap $suite minbase + $packages" "$rootfs_tar" \
            "securechat-base:$suite" >/dev/null
        for tag in $tags; do docker tag "securechat-base:$suite" "$tag"; done
        say "base image securechat-base:$suite tagged as ${tags//$'\n'/ }"
    fi
    echo "export DOCKER_HOST=$sock"
}

stop() {
    local dir="$1" pid
    [ -d "$dir" ] || return 0
    dir=$(cd "$dir" && pwd)
    if pid=$(pid_of "$dir"); then
        export DOCKER_HOST="unix://$dir/docker.sock"
        # Bridges of networks that a crashed run did not remove: dockerd keeps them.
        local nets
        nets=$(timeout 10 docker network ls -q --filter driver=bridge 2>/dev/null || true)
        kill -TERM "$pid"
        local deadline=$((SECONDS + 30))
        while kill -0 "$pid" 2>/dev/null; do
            if [ $SECONDS -ge $deadline ]; then
                say "dockerd $pid still running after 30 s; killing it"
                kill -KILL "$pid" 2>/dev/null || true
            fi
            sleep 0.2
        done
        for net in $nets; do
            ip link delete "br-$net" 2>/dev/null || true
        done
        say "dockerd $pid stopped"
    fi
    # Mounts a killed dockerd left behind, deepest first, then the state itself.
    awk -v d="$dir/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r |
        while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$dir"
}

case "${1:-}" in
    start) [ $# = 2 ] || { echo "usage: $0 start DIR" >&2; exit 2; }; start "$2" ;;
    stop) [ $# = 2 ] || { echo "usage: $0 stop DIR" >&2; exit 2; }; stop "$2" ;;
    base-image) need_tools; base_rootfs; echo "$rootfs_tar" ;;
    *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac

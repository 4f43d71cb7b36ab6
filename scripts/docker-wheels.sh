#!/usr/bin/env bash
# Fill docker/wheels/ with the wheels the image installs (pyproject.toml's dependencies,
# its "metrics" and "redis" extras and the build backend), for machines whose `docker
# build` cannot reach PyPI. The Dockerfile installs from there when it holds wheels,
# from PyPI otherwise.
#
# The wheels are for the image's Python (Debian bookworm: CPython 3.11, glibc 2.36) and
# this machine's architecture, whatever Python runs this script.
#   PY=python3 scripts/docker-wheels.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-python3}
out=docker/wheels
mapfile -t deps < <("$PY" -c '
import tomllib
with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
extras = project["optional-dependencies"]
print("\n".join(project["dependencies"] + extras["metrics"] + extras["redis"]))')
# async-timeout: redis-py needs it on Python below 3.11.3, and Debian's is 3.11.2; pip
# evaluates that marker with the Python running this script, so name it here.
arch=$(uname -m)
mkdir -p "$out"
"$PY" -m pip download --quiet --disable-pip-version-check --dest "$out" \
    --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 --abi abi3 \
    --abi none --platform "manylinux_2_28_$arch" --platform "manylinux_2_17_$arch" \
    --platform "manylinux2014_$arch" --platform any \
    "${deps[@]}" "setuptools>=68" "async-timeout>=4.0.3"
echo "docker-wheels: $(find "$out" -name '*.whl' | wc -l) wheels in $out"

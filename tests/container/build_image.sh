#!/usr/bin/env bash
# Build the repository's image for the container tests and CI, on this machine (as root). Installs podman, runc and
# mmdebstrap when missing, makes the Dockerfile's base image locally (no registry is reachable here), then runs
# `make image` with this machine's pip sources mounted into the build, and the trackers extra (the container tests
# log to MLflow). Idempotent and cached: podman reuses every layer whose inputs are unchanged, so a rerun after a
# code edit rebuilds only the code layer (seconds).
set -euo pipefail
cd "$(dirname "$0")/../.."
IMAGE=${IMAGE:-cs230-template}
BASE=python:3.11-slim  # the Dockerfile's default BASE, stood in for by a Debian rootfs with Python 3.11

if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v mmdebstrap >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "container tests: need root to install podman (or install podman and runc)" >&2; exit 1; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc mmdebstrap >/dev/null
fi
if ! podman image exists "$BASE"; then
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  mmdebstrap --quiet --variant=minbase --include=ca-certificates,python3,python3-venv bookworm "$tmp/rootfs.tar" \
    "${mirror:-http://deb.debian.org/debian}"
  podman import --quiet "$tmp/rootfs.tar" "$BASE" >/dev/null
fi

# podman's defaults fail in this sandbox (crun in cgroup hybrid mode; rlimits above its nofile hard limit): only
# where a container cannot start with them, and no containers.conf is set yet, write one
if ! podman run --rm --network none "$BASE" true >/dev/null 2>&1; then
  if [ -e /etc/containers/containers.conf ] || [ -n "${CONTAINERS_CONF:-}" ]; then
    echo "container tests: podman cannot start a container with this machine's containers.conf" >&2; exit 1
  fi
  cat > /etc/containers/containers.conf <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
runtime = "runc"
CONF
fi

# this machine's pip: wheels on local disk (torch's CUDA build among them) and a proxy with its own CA
opts=(--cert /etc/ssl/certs/ca-certificates.crt)
mounts=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
for index in /opt/pypi /opt/pypi-more; do
  [ -d "$index/simple" ] && opts+=(--extra-index-url "file://$index/simple") && mounts+=(-v "$index:$index:ro")
done
[ -d /opt/wheels ] && opts+=(--find-links /opt/wheels) && mounts+=(-v /opt/wheels:/opt/wheels:ro)
make --no-print-directory image IMAGE="$IMAGE" RUNTIME=podman \
  BUILD_OPTS="${mounts[*]} --build-arg PIP_OPTIONS='${opts[*]}' --build-arg EXTRAS=trackers"

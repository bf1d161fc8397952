#!/usr/bin/env bash
# The container tests, as `make test-containers` and .ci/run run them, on a machine that may have
# no Docker yet: install the engine and compose v1 from Debian if missing, start dockerd if no
# engine answers, prepare the images (only what is missing or stale), run tests/containers.
#
# usage: ops/images/ci-containers.sh [--prepare-only] [pytest args...]
#   --prepare-only: engine and images only (.ci/run then runs them within `make test`)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
export DEBIAN_FRONTEND=noninteractive

if ! command -v dockerd >/dev/null || ! command -v docker-compose >/dev/null ||
  ! command -v debootstrap >/dev/null; then
  echo "[ci-containers] installing docker.io docker-compose debootstrap" >&2
  apt-get update -qq
  apt-get install -y -qq docker.io docker-compose debootstrap >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  # One engine per machine: start dockerd only when none is running (a second one started with
  # other options can tear down docker0 under the first).
  if ! pgrep -x dockerd >/dev/null; then
    echo "[ci-containers] starting dockerd (log: /tmp/dockerd.log)" >&2
    nohup dockerd >/tmp/dockerd.log 2>&1 &
  fi
  for _ in $(seq 300); do
    docker info >/dev/null 2>&1 && break
    sleep 0.2
  done
  docker info >/dev/null 2>&1 || { echo "dockerd did not answer" >&2; tail -20 /tmp/dockerd.log >&2; exit 1; }
fi

"$ROOT/ops/images/prepare.sh" all
if [ "${1:-}" = "--prepare-only" ]; then
  exit 0
fi

export TESTCONTAINERS_RYUK_DISABLED=true
export TESTCONTAINERS_CONNECTION_MODE=docker_host
export TESTCONTAINERS_HOST_OVERRIDE=127.0.0.1
exec "$PYTHON" -m pytest tests/containers -p no:cacheprovider -rxs "$@"

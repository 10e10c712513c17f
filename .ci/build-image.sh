#!/usr/bin/env bash
# Builds aware-busybox:local, the image the Docker runtime tests run, without any registry:
# Debian's static busybox (package busybox-static) copied onto `FROM scratch`. Legacy builder
# (no buildx needed). Idempotent; takes ~2 s once the package is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-aware-busybox:local}"
bin=/bin/busybox
is_static() { [ -x "$bin" ] && [[ "$(ldd "$bin" 2>&1 || true)" == *"not a dynamic executable"* ]]; }
if ! is_static && ! dpkg -s busybox-static >/dev/null 2>&1; then
    echo "build-image: installing busybox-static" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
fi
if ! is_static; then
    echo "build-image: $bin is not a static binary (is busybox-static installed?)" >&2
    exit 1
fi
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp agent/tests/images/busybox/Dockerfile "$ctx/"
cp "$bin" "$ctx/busybox"
DOCKER_BUILDKIT=0 docker build -q -t "$tag" "$ctx" >/dev/null
echo "build-image: built $tag ($(docker image inspect -f '{{.Size}}' "$tag") bytes)"

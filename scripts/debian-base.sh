#!/usr/bin/env bash
# Makes the Docker image muster-base:trixie unless it exists: a Debian trixie root filesystem made with
# `debootstrap --variant=minbase` from the Debian mirror the machine's own apt sources name (scripts/debian-mirror.sh;
# MUSTER_DEBIAN_MIRROR overrides it), imported with `docker import`: the base of the agent's image
# (scripts/images.sh), and where the package test (tests/tests/packages.rs) installs muster's Debian packages.
#
#   scripts/debian-base.sh            (idempotent: a second run returns at once)
#
# Needs root (debootstrap), docker, and debootstrap, which it installs with apt-get when missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE=muster-base:trixie
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

log() { echo "debian-base: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

command -v docker >/dev/null 2>&1 || die "docker is not installed"
docker info >/dev/null 2>&1 || die "the Docker daemon does not answer (docker info failed)"
docker image inspect "$IMAGE" >/dev/null 2>&1 && exit 0

if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    apt-get -qq update >&2
    DEBIAN_FRONTEND=noninteractive apt-get -qq install -y debootstrap >&2
fi
if [[ ! -e /usr/share/keyrings/debian-archive-trixie-stable.gpg ]]; then
    log "the Debian archive keyring lacks trixie's keys; upgrading debian-archive-keyring"
    DEBIAN_FRONTEND=noninteractive apt-get -qq install -y debian-archive-keyring >&2
fi
# shellcheck source=scripts/debian-mirror.sh
source "$ROOT/scripts/debian-mirror.sh"
MIRROR="$(debian_mirror)" || die "no Debian archive found in the machine's apt sources; set MUSTER_DEBIAN_MIRROR"

mkdir -p "$ROOT/target/images"
DIR="$(mktemp -d "$ROOT/target/images/base.XXXXXX")"
trap 'rm -rf "$DIR"' EXIT
log "making $IMAGE with debootstrap --variant=minbase from $MIRROR (a minute or two)"
debootstrap --variant=minbase --keyring="$KEYRING" trixie "$DIR/rootfs" "$MIRROR" >"$DIR/debootstrap.log" 2>&1 ||
    die "debootstrap failed; its log: $(tail -n 20 "$DIR/debootstrap.log")"
# What a container does not need: package caches and lists (apt-get update fetches them), docs, man pages.
rm -rf "$DIR/rootfs"/var/cache/apt/archives/*.deb "$DIR/rootfs"/var/lib/apt/lists/* \
    "$DIR/rootfs"/usr/share/doc/* "$DIR/rootfs"/usr/share/man/* "$DIR/rootfs"/usr/share/info/* \
    "$DIR/rootfs"/var/log/*.log "$DIR/rootfs"/var/cache/debconf/*-old
# Docker provides these at run time.
: >"$DIR/rootfs/etc/hostname"
: >"$DIR/rootfs/etc/resolv.conf"
tar --numeric-owner --one-file-system -C "$DIR/rootfs" -c . |
    docker import -c 'CMD ["/bin/bash"]' -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -m "Debian trixie minbase (debootstrap) for muster's images" - "$IMAGE" >/dev/null
log "made $IMAGE"

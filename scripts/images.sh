#!/usr/bin/env bash
# Builds muster's three container images on this machine, from binaries already built, with no registry:
#
#   muster-nats:latest    nats/Dockerfile    FROM scratch: nats-server (scripts/install-nats.sh's) and its libraries
#   muster-server:latest  server/Dockerfile  FROM scratch: muster-server and the `muster` CLI (one-shot jobs too)
#   muster-agent:latest   agent/Dockerfile   FROM muster-base:trixie: muster-agent on a Debian userland
#
#   scripts/images.sh [--profile debug|release]     (default release: `make images`; the tests use debug)
#
# Each image is staged under target/images/<profile>/<image>/ (the Docker build context: its Dockerfile copies
# `rootfs/` to /): the binaries with their debug info stripped (objcopy --strip-debug) and, for the FROM-scratch
# images, exactly the shared libraries `ldd` lists, at the paths it lists them (the dynamic loader included).
# A binary is staged again only when it is newer than its staged copy; an image is built again only when its
# staged content or Dockerfile changed (the hash of both is the image's `muster.stage` label). So running this
# again with unchanged binaries takes a second or two.
#
# muster-base:trixie, the agent's base, is a Debian trixie root filesystem made with `debootstrap --variant=minbase`
# from the Debian mirror the machine's own apt sources name (scripts/debian-mirror.sh; MUSTER_DEBIAN_MIRROR
# overrides it), imported with `docker import`. It is made once and reused while it exists (`docker rmi
# muster-base:trixie` makes it again, a minute or two). debootstrap is installed with apt-get when missing.
# Needs root (debootstrap, and usually docker).
set -euo pipefail

PROFILE=release
while (($# > 0)); do
    case "$1" in
    --profile)
        PROFILE="${2:-}"
        shift 2 || true
        ;;
    --profile=*)
        PROFILE="${1#--profile=}"
        shift
        ;;
    *)
        echo "usage: $0 [--profile debug|release]" >&2
        exit 2
        ;;
    esac
done
[[ "$PROFILE" == debug || "$PROFILE" == release ]] || {
    echo "usage: $0 [--profile debug|release]" >&2
    exit 2
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/target/$PROFILE"
STAGE="$ROOT/target/images/$PROFILE"
BASE_IMAGE=muster-base:trixie
# The legacy builder: this Docker has no buildx, and FROM scratch / FROM a local image need no BuildKit.
export DOCKER_BUILDKIT=0

log() { echo "images: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

command -v docker >/dev/null 2>&1 || die "docker is not installed"
docker info >/dev/null 2>&1 || die "the Docker daemon does not answer (docker info failed)"
command -v objcopy >/dev/null 2>&1 || die "objcopy (binutils) is needed to strip the binaries"
for b in muster-server muster muster-agent; do
    [[ -x "$BIN/$b" ]] || die "$BIN/$b does not exist: build it first (make build for debug, cargo build --release for release)"
done
NATS="$("$ROOT/scripts/install-nats.sh" --path)"

# Copies binary $1 to $2 without its debug info, unless $2 is newer than $1.
stage_bin() {
    local src="$1" dst="$2"
    [[ -f "$dst" && ! "$src" -nt "$dst" ]] && return 0
    mkdir -p "$(dirname "$dst")"
    objcopy --strip-debug "$src" "$dst.tmp"
    chmod 0755 "$dst.tmp"
    mv -f "$dst.tmp" "$dst"
}

# Copies every shared library binary $1 loads (as ldd lists them) into rootfs $2, at the same path.
stage_libs() {
    local bin="$1" rootfs="$2" lib
    # Lines are "name => /path (addr)", "/path (addr)" (the loader) or "linux-vdso.so.1 (addr)" (in the kernel).
    while read -r lib; do
        [[ -n "$lib" ]] || continue
        [[ -f "$lib" ]] || die "ldd lists $lib for $bin, but it does not exist"
        if [[ ! -f "$rootfs$lib" || "$lib" -nt "$rootfs$lib" ]]; then
            mkdir -p "$rootfs$(dirname "$lib")"
            cp -L --preserve=mode "$lib" "$rootfs$lib"
        fi
    done < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3; next } $1 ~ /^\// { print $1 }')
    ldd "$bin" | grep -q "not found" && die "ldd: a library of $bin is not found"
    return 0
}

# The hash of a build context and its Dockerfile (and any extra words, e.g. the base image's id).
stage_hash() {
    local ctx="$1" dockerfile="$2"
    shift 2
    {
        (cd "$ctx" && find . \( -type f -o -type l -o -type d \) -printf '%p %y %m\n' | LC_ALL=C sort)
        (cd "$ctx" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum)
        sha256sum <"$dockerfile"
        echo "$@"
    } | sha256sum | cut -c1-64
}

# Builds image $1 from Dockerfile $2 with context $3, unless the image already carries this content's hash.
build() {
    local image="$1" dockerfile="$2" ctx="$3" extra="${4:-}" hash have
    hash="$(stage_hash "$ctx" "$dockerfile" "$extra")"
    have="$(docker image inspect --format '{{ index .Config.Labels "muster.stage" }}' "$image" 2>/dev/null || true)"
    if [[ "$have" == "$hash" ]]; then
        log "$image is up to date ($PROFILE binaries)"
        return 0
    fi
    log "building $image ($PROFILE binaries)"
    # Quiet unless it fails (the legacy builder also warns that it is deprecated, on every build).
    local out
    out="$(docker build -q --label "muster.stage=$hash" -t "$image" -f "$dockerfile" "$ctx" 2>&1)" ||
        die "docker build of $image failed: $out"
}

# --- the agent's base: Debian trixie, minbase (scripts/debian-base.sh, made once) ---------------------------------
make_base() {
    "$ROOT/scripts/debian-base.sh"
}

mkdir -p "$STAGE"

# --- nats ----------------------------------------------------------------------------------------------------------
ctx="$STAGE/nats"
stage_bin "$NATS" "$ctx/rootfs/usr/sbin/nats-server"
stage_libs "$ctx/rootfs/usr/sbin/nats-server" "$ctx/rootfs"
mkdir -p "$ctx/rootfs/tmp" "$ctx/rootfs/data" && chmod 1777 "$ctx/rootfs/tmp"
build muster-nats:latest "$ROOT/nats/Dockerfile" "$ctx"

# --- server (and the CLI) ------------------------------------------------------------------------------------------
ctx="$STAGE/server"
for b in muster-server muster; do
    stage_bin "$BIN/$b" "$ctx/rootfs/usr/bin/$b"
    stage_libs "$ctx/rootfs/usr/bin/$b" "$ctx/rootfs"
done
mkdir -p "$ctx/rootfs/tmp" "$ctx/rootfs/var/lib/muster" && chmod 1777 "$ctx/rootfs/tmp"
build muster-server:latest "$ROOT/server/Dockerfile" "$ctx"

# --- agent -----------------------------------------------------------------------------------------------------------
make_base
ctx="$STAGE/agent"
stage_bin "$BIN/muster-agent" "$ctx/rootfs/usr/bin/muster-agent"
build muster-agent:latest "$ROOT/agent/Dockerfile" "$ctx" "$(docker image inspect --format '{{.Id}}' "$BASE_IMAGE")"

docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^muster-(nats|server|agent|base):' | sort >&2

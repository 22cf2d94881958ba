#!/usr/bin/env bash
# Ensures a nats-server >= 2.10 is available and prints which one (path and version).
#
# Order of preference:
#   1. `nats-server` on PATH, if it is >= 2.10;
#   2. `<repo>/.tools/bin/nats-server`, if it is >= 2.10;
#   3. Debian trixie's `nats-server` package, fetched with apt into a private temporary apt state (the system's apt
#      sources, lists and cache are not touched) and unpacked into `<repo>/.tools/`. It is fetched from the Debian
#      mirror the machine's own apt sources name (or MUSTER_DEBIAN_MIRROR), through the machine's apt proxy settings.
# Why trixie: bookworm ships nats-server 2.9, and async-nats 0.51's KV and account calls need 2.10.
# Why apt and nothing else: it is the one download source this project allows; packages are signature-checked
# against the Debian archive keyring.
#
# Quiet and idempotent once installed: it then prints one line, "nats-server <version> at <path>";
# with `--path` it prints only the path (for scripts: `nats=$(scripts/install-nats.sh --path)`).
# Needs root (or write access to .tools/ plus permission to run apt-get download) only when it has to fetch.
set -euo pipefail

MIN_MAJOR=2
MIN_MINOR=10

PRINT=summary
case "${1:-}" in
"") ;;
--path) PRINT=path ;;
*)
    echo "usage: $0 [--path]" >&2
    exit 2
    ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

log() { echo "install-nats: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# Reports the binary $1 of version $2 on stdout.
report() {
    if [[ "$PRINT" == path ]]; then
        echo "$1"
    else
        echo "nats-server $2 at $1"
    fi
}

# Prints the x.y.z version of the nats-server binary $1, or nothing if it does not run.
version_of() {
    local out
    out="$("$1" --version 2>/dev/null)" || return 0
    # "nats-server: v2.10.27"
    sed -n 's/.*v\([0-9][0-9]*\.[0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' <<<"$out" | head -n 1
}

# True if version $1 (x.y.z) is at least MIN_MAJOR.MIN_MINOR.
recent_enough() {
    local major minor
    IFS=. read -r major minor _ <<<"$1"
    [[ -n "$major" && -n "$minor" ]] || return 1
    ((major > MIN_MAJOR || (major == MIN_MAJOR && minor >= MIN_MINOR)))
}

# Uses binary $1 if it is recent enough: prints it and exits 0.
use_if_good() {
    local bin="$1" version
    [[ -x "$bin" ]] || return 0
    version="$(version_of "$bin")"
    if [[ -n "$version" ]] && recent_enough "$version"; then
        report "$bin" "$version"
        exit 0
    fi
    log "ignoring $bin (version '${version:-unknown}', need >= $MIN_MAJOR.$MIN_MINOR)"
}

if command -v nats-server >/dev/null 2>&1; then
    use_if_good "$(command -v nats-server)"
fi
use_if_good "$TOOLS/bin/nats-server"

# --- fetch from Debian trixie -----------------------------------------------------------------------------------
command -v apt-get >/dev/null 2>&1 || die "no nats-server >= $MIN_MAJOR.$MIN_MINOR found and apt-get is not available to fetch one; install nats-server >= $MIN_MAJOR.$MIN_MINOR and put it on PATH or in $TOOLS/bin"
command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb is needed to unpack the package"

# The private apt state below verifies trixie's Release file with this keyring, so it must hold trixie's keys.
has_trixie_keys() {
    [[ -r "$KEYRING" ]] || return 1
    # The keyring package of bookworm (2023.3+deb12u1 and later) carries the trixie keys; so does every later one.
    [[ -e /usr/share/keyrings/debian-archive-trixie-stable.gpg || -e /usr/share/keyrings/debian-archive-trixie-automatic.gpg ]]
}
if ! has_trixie_keys; then
    log "the Debian archive keyring lacks trixie's keys; upgrading debian-archive-keyring"
    [[ "$(id -u)" == 0 ]] || die "run as root (or install debian-archive-keyring >= 2023.3+deb12u1 yourself)"
    apt-get -qq update >&2
    DEBIAN_FRONTEND=noninteractive apt-get -qq install -y debian-archive-keyring >&2
    has_trixie_keys || die "debian-archive-keyring still lacks trixie's keys"
fi

# debian_mirror: the Debian archive the machine's own apt sources name (shared with scripts/images.sh).
# shellcheck source=scripts/debian-mirror.sh
source "$ROOT/scripts/debian-mirror.sh"

T="$(mktemp -d)"
trap 'rm -rf "$T"' EXIT
mkdir -p "$T/lists/partial" "$T/cache/archives/partial"
MIRROR="$(debian_mirror)" || die "no Debian archive found in the machine's apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d/); set MUSTER_DEBIAN_MIRROR to the URL of a Debian mirror"
log "Debian mirror: $MIRROR"
echo "deb [signed-by=$KEYRING] $MIRROR trixie main" >"$T/sources.list"
# Every apt path points into $T, so the system's sources, package lists, cache and lock are never touched.
APTO=(
    -o "Dir::Etc::SourceList=$T/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$T/lists"
    -o "Dir::Cache=$T/cache"
    -o "Debug::NoLocking=1"
    # $T is private to root (mktemp -d), so apt's unprivileged _apt download user could not write there; fetching
    # as the invoking user avoids apt's "Download is performed unsandboxed" warnings.
    -o "APT::Sandbox::User=$(id -un)"
)

log "fetching nats-server from Debian trixie (private apt state in $T)"
apt-get "${APTO[@]}" -qq update >&2 || die "apt-get update of the trixie index failed"
(cd "$T" && apt-get "${APTO[@]}" -qq download nats-server >&2) || die "apt-get download nats-server failed"

shopt -s nullglob
debs=("$T"/nats-server_*.deb)
((${#debs[@]} == 1)) || die "expected one nats-server .deb in $T, found ${#debs[@]}"
dpkg-deb -x "${debs[0]}" "$T/x"
[[ -x "$T/x/usr/sbin/nats-server" ]] || die "the package has no usr/sbin/nats-server"

mkdir -p "$TOOLS/bin"
# Install under a temporary name and rename, so a concurrent reader never sees a half-written binary.
install -m 0755 "$T/x/usr/sbin/nats-server" "$TOOLS/bin/.nats-server.new"
mv -f "$TOOLS/bin/.nats-server.new" "$TOOLS/bin/nats-server"
log "installed $(basename "${debs[0]}")"

version="$(version_of "$TOOLS/bin/nats-server")"
[[ -n "$version" ]] && recent_enough "$version" || die "installed $TOOLS/bin/nats-server does not report a version >= $MIN_MAJOR.$MIN_MINOR (got '${version:-nothing}')"
report "$TOOLS/bin/nats-server" "$version"

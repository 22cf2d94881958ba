#!/usr/bin/env bash
# A running muster to look at: one nats-server (nats/single.conf, 127.0.0.1:4222, monitoring :8222), one
# muster-server and three agents (demo-1..3), all under .demo/ (logs, pid files, JetStream store, redb file).
#
#   scripts/demo.sh start   # (make demo) install nats-server if needed, build, start, wait until all HEALTHY
#   scripts/demo.sh stop    # (make demo-stop) stop every process named by a pid file in .demo/
#
# The processes are left running after `start`; their state survives a stop/start (delete .demo/ to reset).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEMO="$ROOT/.demo"
BIN="$ROOT/target/debug"
NATS_URL="nats://127.0.0.1:4222"
AGENTS=(demo-1 demo-2 demo-3)
# How long the hosts may take to become HEALTHY before the demo gives up: registration takes milliseconds, but the
# first heartbeat follows after one interval (3 s by default) and agents back off while the server takes the lease.
HEALTHY_TIMEOUT_SECS=60
# How long a process may take to exit after SIGTERM before it gets SIGKILL.
STOP_TIMEOUT_SECS=10

log() { echo "demo: $*" >&2; }

# Prints the last lines of every demo log.
dump_logs() {
    local f
    for f in "$DEMO"/*.log; do
        [[ -e "$f" ]] || continue
        echo "----- last 30 lines of ${f#"$ROOT"/} -----" >&2
        tail -n 30 "$f" >&2
    done
}

die() {
    log "error: $*"
    dump_logs
    log "logs are in ${DEMO#"$ROOT"/}/; stopping what was started"
    stop
    exit 1
}

# True if the pid in pid file $1 names a live process.
alive() {
    local pid
    pid="$(cat "$1" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Starts "$@" detached (own session, so it outlives this script and the terminal's Ctrl-C), logging to
# .demo/<name>.log and writing its pid to .demo/<name>.pid. Environment for it goes before the command via env.
launch() {
    local name="$1"
    shift
    # setsid does not fork here (a background job of a script is no process-group leader), so $! is the program.
    setsid "$@" </dev/null >>"$DEMO/$name.log" 2>&1 &
    echo $! >"$DEMO/$name.pid"
}

stop() {
    local f pid waited any=0
    # Agents first, then the server, then NATS: nothing is left talking to a stopped peer for long.
    for f in "$DEMO"/agent-*.pid "$DEMO"/muster-server.pid "$DEMO"/nats-server.pid; do
        [[ -e "$f" ]] || continue
        any=1
        if alive "$f"; then
            pid="$(cat "$f")"
            kill -TERM "$pid" 2>/dev/null || true
            waited=0
            while kill -0 "$pid" 2>/dev/null && ((waited < STOP_TIMEOUT_SECS * 10)); do
                sleep 0.1
                waited=$((waited + 1))
            done
            if kill -0 "$pid" 2>/dev/null; then
                log "$(basename "$f" .pid) (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT_SECS}s; killing it"
                kill -KILL "$pid" 2>/dev/null || true
            fi
            log "stopped $(basename "$f" .pid) (pid $pid)"
        fi
        rm -f "$f"
    done
    ((any)) || log "nothing to stop"
}

# Prints how many of the demo agents `muster hosts --json` lists as HEALTHY (0 if the CLI fails).
healthy_count() {
    local json id n=0
    json="$("$BIN/muster" --nats "$NATS_URL" hosts --json 2>/dev/null)" || {
        echo 0
        return
    }
    # One object per host; match each agent's object by id and state without depending on a JSON tool.
    json="$(tr -d ' \n\t' <<<"$json" | sed 's/},{/}\n{/g')"
    for id in "${AGENTS[@]}"; do
        if grep -F "\"id\":\"$id\"" <<<"$json" | grep -qF '"state":"HEALTHY"'; then
            n=$((n + 1))
        fi
    done
    echo "$n"
}

start() {
    mkdir -p "$DEMO"
    local f
    for f in "$DEMO"/*.pid; do
        if [[ -e "$f" ]] && alive "$f"; then
            log "the demo is already running ($(basename "$f" .pid) is pid $(cat "$f")); 'make demo-stop' first"
            exit 1
        fi
        rm -f "$f"
    done
    if port_open 4222; then
        log "error: something already listens on 127.0.0.1:4222 (another nats-server?); stop it first"
        exit 1
    fi

    local nats
    nats="$("$ROOT/scripts/install-nats.sh" --path)"
    log "building (cargo build --workspace --bins)"
    (cd "$ROOT" && cargo build --workspace --bins --quiet)

    mkdir -p "$DEMO/nats" "$DEMO/server"
    log "starting nats-server ($nats)"
    launch nats-server env MUSTER_NATS_STORE_DIR="$DEMO/nats" "$nats" -c "$ROOT/nats/single.conf"
    local i
    for ((i = 0; i < 100; i++)); do
        port_open 4222 && break
        alive "$DEMO/nats-server.pid" || die "nats-server exited"
        sleep 0.1
    done
    port_open 4222 || die "nats-server did not listen on 4222 within 10 s"

    log "starting muster-server"
    launch muster-server env NO_COLOR=1 MUSTER_NATS_URL="$NATS_URL" MUSTER_DATA_DIR="$DEMO/server" \
        MUSTER_SERVER_ID=demo-server MUSTER_LOG="${MUSTER_LOG:-info}" "$BIN/muster-server"
    local id
    for id in "${AGENTS[@]}"; do
        log "starting muster-agent $id"
        launch "agent-$id" env NO_COLOR=1 MUSTER_NATS_URL="$NATS_URL" MUSTER_HOST_ID="$id" \
            MUSTER_LOG="${MUSTER_LOG:-info}" "$BIN/muster-agent"
    done

    log "waiting until ${#AGENTS[@]} hosts are HEALTHY (up to ${HEALTHY_TIMEOUT_SECS}s)"
    local deadline=$((SECONDS + HEALTHY_TIMEOUT_SECS)) n=0
    while ((SECONDS < deadline)); do
        for f in "$DEMO"/*.pid; do
            alive "$f" || die "$(basename "$f" .pid) exited"
        done
        n="$(healthy_count)"
        ((n == ${#AGENTS[@]})) && break
        sleep 0.5
    done
    ((n == ${#AGENTS[@]})) || die "only $n of ${#AGENTS[@]} hosts HEALTHY after ${HEALTHY_TIMEOUT_SECS}s"

    echo
    echo "\$ target/debug/muster hosts"
    "$BIN/muster" --nats "$NATS_URL" hosts
    echo
    echo "\$ target/debug/muster host demo-1"
    "$BIN/muster" --nats "$NATS_URL" host demo-1
    cat <<EOF

The demo is running (logs and pid files in .demo/; NATS at $NATS_URL, monitoring at http://127.0.0.1:8222).
Look around:
  target/debug/muster hosts                 # every host and its state
  target/debug/muster host demo-2           # one host with all its facts
  target/debug/muster stats                 # the leader's counters
  kill \$(cat .demo/agent-demo-3.pid)        # then watch demo-3 become HEARTBEAT_LOST
  tail -f .demo/muster-server.log
With the nats CLI (more in docs/protocol.md):
  nats micro info muster
  nats sub 'muster.events.>'
  nats sub 'muster.hb.*' --translate 'target/debug/muster decode'
  nats stream view MUSTER_TXN --translate 'target/debug/muster decode'
  nats kv get muster-election leader
Stop it all with: make demo-stop
EOF
}

case "${1:-start}" in
start) start ;;
stop) stop ;;
*)
    echo "usage: $0 [start|stop]" >&2
    exit 2
    ;;
esac

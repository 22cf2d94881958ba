#!/usr/bin/env bash
# A running muster to look at, secured as a real deployment is: `muster security init` writes keys, a CA, credentials
# and the nats-server config into .demo/security/; one nats-server (TLS, JWT accounts; 127.0.0.1:4222, monitoring
# :8222), one muster-server with the server identity and the command-signing key, and three agents — demo-1 with
# credentials minted offline (`muster creds agent`), demo-2 and demo-3 enrolled with a token (`muster token
# create`) — all under .demo/ (logs, pid files, JetStream store, redb file, the agents' state directories), with
# the toy stack of docs/examples deployed on them (its daemons keep their files in .demo/toy/<host>/).
#
#   scripts/demo.sh start   # (make demo) install nats-server if needed, build, secure, start, wait until all
#                           # HEALTHY, apply the toy stack and blueprint, run a command on every host
#   scripts/demo.sh stop    # (make demo-stop) stop the agents, the toy daemons, the server and nats-server
#
# The processes are left running after `start`; their state survives a stop/start (delete .demo/ to reset).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEMO="$ROOT/.demo"
BIN="$ROOT/target/debug"
NATS_URL="nats://127.0.0.1:4222"
AGENTS=(demo-1 demo-2 demo-3)
# demo-1 gets credentials minted offline; the others enroll with a token (docs/enrollment.md).
ENROLLED=(demo-2 demo-3)
# What `muster security init` wrote (docs/credentials.md): kept across stop/start, so agents keep their identities.
SEC="$DEMO/security"
# The CLI's identity: an operator with the admin role. Exported, so every `muster` below (and in `show`) uses it.
export MUSTER_NATS_CREDS="$SEC/admin.creds" MUSTER_NATS_CA="$SEC/ca.pem"
# Where the toy daemons keep their files. Given to the agents as TOY_DIR, so every process they start (the toy
# daemons, running commands) carries the exact entry TOY_DIR=<this path>: that is how `stop` finds them, and only them.
TOY_DIR="$DEMO/toy"
# Faster than the agents' defaults (10 s, 5 min), so a daemon killed by hand is noticed and restarted while you watch.
STATUS_INTERVAL_MS=2000
AUTO_RESTART_MIN_GAP_MS=10000
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

# Stops the process named by pid file $1 (SIGTERM, SIGKILL after STOP_TIMEOUT_SECS) and removes the file.
stop_pidfile() {
    local f="$1" pid waited
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
}

# Stops every process the demo's agents started (toy daemons, commands still running): the live processes whose
# environment holds exactly TOY_DIR=$TOY_DIR. Daemons outlive their agent by design, so no pid file of ours names
# them all. Zombies are skipped: they are dead already, waiting for init to reap them.
stop_toy() {
    local env pid n=0
    for env in /proc/[0-9]*/environ; do
        pid="${env#/proc/}"
        pid="${pid%/environ}"
        [[ "$pid" != "$$" ]] || continue
        grep -qxzF "TOY_DIR=$TOY_DIR" "$env" 2>/dev/null || continue
        ! grep -q zombie "/proc/$pid/status" 2>/dev/null || continue
        if kill -TERM "$pid" 2>/dev/null; then
            n=$((n + 1))
        fi
    done
    ((n == 0)) || log "stopped $n toy process(es)"
}

stop() {
    local f any=0
    # Agents first (they would restart the toy daemons), then the daemons, the server, and NATS last: nothing is
    # left talking to a stopped peer for long.
    for f in "$DEMO"/agent-*.pid; do
        [[ -e "$f" ]] || continue
        any=1
        stop_pidfile "$f"
    done
    stop_toy
    for f in "$DEMO"/muster-server.pid "$DEMO"/nats-server.pid; do
        [[ -e "$f" ]] || continue
        any=1
        stop_pidfile "$f"
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

# Prints "$ target/debug/muster ARGS" and runs it from the workspace root (so the example paths resolve).
show() {
    local arg line="\$ target/debug/muster"
    for arg in "$@"; do
        # Quote what a shell would expand, so the line can be pasted as it is.
        if [[ "$arg" == *[^A-Za-z0-9_./:=-]* ]]; then line+=" '$arg'"; else line+=" $arg"; fi
    done
    echo
    echo "$line"
    (cd "$ROOT" && "$BIN/muster" --nats "$NATS_URL" "$@")
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
    local port
    for port in 4222 8222; do
        if port_open "$port"; then
            log "error: something already listens on 127.0.0.1:$port (another nats-server?); stop it first"
            exit 1
        fi
    done

    local nats
    nats="$("$ROOT/scripts/install-nats.sh" --path)"
    # The same build as `make build`, so the demo and the tests share binaries: the failpoints the e2e tests arm
    # through FAILPOINTS are compiled in and inert unless that variable is set.
    log "building (make build)"
    (cd "$ROOT" && make --no-print-directory build >/dev/null)

    mkdir -p "$DEMO/nats" "$DEMO/server" "$DEMO/state" "$TOY_DIR"
    if [[ ! -e "$SEC/security.json" ]]; then
        log "securing: muster security init ${SEC#"$ROOT"/}"
        "$BIN/muster" security init "$SEC" >/dev/null
    fi
    log "starting nats-server ($nats) with ${SEC#"$ROOT"/}/nats-single.conf (TLS, JWT accounts)"
    # -a: the demo listens on loopback only, though every connection is authenticated and encrypted.
    launch nats-server env MUSTER_NATS_STORE_DIR="$DEMO/nats" "$nats" -c "$SEC/nats-single.conf" -a 127.0.0.1
    local i
    for ((i = 0; i < 100; i++)); do
        port_open 4222 && break
        alive "$DEMO/nats-server.pid" || die "nats-server exited"
        sleep 0.1
    done
    port_open 4222 || die "nats-server did not listen on 4222 within 10 s"

    log "starting muster-server (server identity, command key, enrollment on)"
    launch muster-server env NO_COLOR=1 MUSTER_NATS_URL="$NATS_URL" MUSTER_DATA_DIR="$DEMO/server" \
        MUSTER_NATS_CREDS="$SEC/server.creds" MUSTER_NATS_CA="$SEC/ca.pem" MUSTER_COMMAND_KEY="$SEC/command.nk" \
        MUSTER_AGENT_SIGNER="$SEC/signers/agent.nk" \
        MUSTER_SERVER_ID=demo-server MUSTER_LOG="${MUSTER_LOG:-info}" "$BIN/muster-server"
    # demo-1: credentials minted here, offline, from the security directory.
    if [[ ! -e "$DEMO/state/demo-1/agent.creds" ]]; then
        mkdir -p "$DEMO/state/demo-1"
        "$BIN/muster" creds agent demo-1 --dir "$SEC" --out "$DEMO/state/demo-1/agent.creds" >/dev/null
    fi
    # demo-2, demo-3: a token good for two 'demo-*' hosts for ten minutes; each agent makes its own key, enrolls, and
    # keeps the credentials the leader mints in its state directory (the token is not needed after that).
    local token="" id need=0
    for id in "${ENROLLED[@]}"; do
        [[ -e "$DEMO/state/$id/agent.creds" ]] || need=1
    done
    if ((need)); then
        log "creating an enrollment token (muster token create --hosts 'demo-*' --uses ${#ENROLLED[@]} --ttl 10m)"
        for ((i = 0; i < 100; i++)); do
            token="$("$BIN/muster" token create --dir "$SEC" --hosts 'demo-*' --uses "${#ENROLLED[@]}" --ttl 10m \
                2>/dev/null)" && break
            alive "$DEMO/muster-server.pid" || die "muster-server exited"
            sleep 0.3
        done
        [[ -n "$token" ]] || die "no enrollment token: the server did not take token.create within 30 s"
    fi
    for id in "${AGENTS[@]}"; do
        log "starting muster-agent $id"
        local creds=() enroll=()
        [[ "$id" != demo-1 ]] || creds=(MUSTER_NATS_CREDS="$DEMO/state/demo-1/agent.creds")
        [[ "$id" == demo-1 || -z "$token" ]] || enroll=(MUSTER_ENROLL_TOKEN="$token")
        launch "agent-$id" env -u MUSTER_NATS_CREDS NO_COLOR=1 MUSTER_NATS_URL="$NATS_URL" MUSTER_HOST_ID="$id" \
            MUSTER_NATS_CA="$SEC/ca.pem" MUSTER_TRUSTED_KEYS="@$SEC/command.pub" MUSTER_STATE_DIR="$DEMO/state/$id" \
            "${creds[@]}" "${enroll[@]}" \
            MUSTER_STATUS_INTERVAL_MS="$STATUS_INTERVAL_MS" MUSTER_AUTO_RESTART_MIN_GAP_MS="$AUTO_RESTART_MIN_GAP_MS" \
            TOY_DIR="$TOY_DIR" MUSTER_LOG="${MUSTER_LOG:-info}" "$BIN/muster-agent"
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

    show hosts
    show hosts enrollments
    show host demo-1
    show stack apply docs/examples/toy-stack.toml || die "the toy stack was refused"
    # Follows the request that installs and starts the toy service, a progress bar per stage; exits non-zero unless
    # the request COMPLETED.
    show blueprint apply docs/examples/toy-blueprint.toml || die "the toy blueprint's request did not complete"
    show components
    show run --hosts 'demo-*' -- uname -a || die "'muster run' on every host did not complete"
    cat <<EOF

The demo is running, secured (logs and pid files in .demo/; NATS at $NATS_URL with TLS and JWT accounts,
monitoring at http://127.0.0.1:8222; keys, CA and credentials in .demo/security/ — docs/security.md).
The CLI needs an identity; take the demo's admin:
  export MUSTER_NATS_CREDS=\$PWD/.demo/security/admin.creds MUSTER_NATS_CA=\$PWD/.demo/security/ca.pem
Look around:
  target/debug/muster hosts                         # every host and its state
  target/debug/muster host demo-2                   # one host with all its facts
  target/debug/muster hosts enrollments             # how each host enrolled, with its key
  target/debug/muster components                    # the toy components: state, desired state, auto-restarts
  target/debug/muster restart toy --batch 1         # a rolling restart, one host at a time
  target/debug/muster requests                      # every request, newest first
  target/debug/muster request 1 --watch             # follow a request (any id from 'muster requests')
  target/debug/muster run --hosts 'demo-*' --detach -- sleep 60    # then: target/debug/muster cancel <id>
  kill \$(cat .demo/toy/demo-2/worker.pid)           # the agent notices within ${STATUS_INTERVAL_MS} ms and restarts it
  target/debug/muster stats                         # the leader's counters
  target/debug/muster creds revoke demo-3 --dir .demo/security    # cut demo-3 off; it goes HEARTBEAT_LOST
  MUSTER_NATS_CREDS=\$PWD/.demo/security/viewer.creds target/debug/muster run -- id   # refused: read-only
  tail -f .demo/muster-server.log
With the nats CLI (more in docs/protocol.md; the server identity sees every subject, the admin only the API):
  alias n='nats --creds .demo/security/server.creds --tlsca .demo/security/ca.pem'
  n micro info muster
  n sub 'muster.events.>'                                            # host, component, task, request changes
  n sub 'muster.cmd.*' --translate 'target/debug/muster decode'      # signed commands to the agents
  n sub 'muster.report.*' --translate 'target/debug/muster decode'   # the agents' reports
  n stream view MUSTER_COMMANDS --translate 'target/debug/muster decode'
  n stream view MUSTER_TXN --translate 'target/debug/muster decode'
  n kv get muster-election leader
  nats --tlsca .demo/security/ca.pem sub '>'                         # refused: no credentials
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

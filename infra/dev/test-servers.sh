#!/usr/bin/env bash
# One moto (S3) and one Azurite (Azure Blob) server shared by every test process
# of a run: cargo-nextest runs each test in its own process, and a server per
# process would cost ~1 s each. arca-testkit uses these when it sees
#   ARCA_TEST_S3_ENDPOINT / ARCA_TEST_AZURITE_ENDPOINT
# and otherwise starts its own.
#   test-servers.sh start   start both (reuses live ones), write the state file
#   test-servers.sh env     print `export …` lines for the endpoints
#   test-servers.sh stop    kill both, remove the state file
set -euo pipefail

TOOLS_DIR="${ARCA_TOOLS_DIR:-$HOME/.cache/arca/tools}"
STATE="$TOOLS_DIR/test-servers.env"

# Loopback port that nothing listens on right now.
free_port() {
    "$TOOLS_DIR/venv/bin/python" -c \
        'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

wait_listening() { # port pid name
    for _ in $(seq 1 300); do # 30 s: azurite's first start on a cold disk is the slow one
        listening "$1" && return 0
        alive "$2" || { echo "test-servers: $3 exited during start-up, see its log" >&2; return 1; }
        sleep 0.1
    done
    echo "test-servers: $3 did not listen on port $1 within 30 s" >&2
    return 1
}

load_state() {
    ARCA_TEST_S3_PID="" ARCA_TEST_AZURITE_PID="" ARCA_TEST_SERVERS_DIR=""
    # shellcheck disable=SC1090
    [[ -f "$STATE" ]] && . "$STATE"
    return 0
}

stop() {
    load_state
    local pid
    for pid in "$ARCA_TEST_S3_PID" "$ARCA_TEST_AZURITE_PID"; do
        # Each server was started by setsid as a process-group leader: kill its whole group.
        if alive "$pid"; then kill -- "-$pid" 2>/dev/null || true; fi
    done
    # Wait for them to go (Azurite writes its files until it exits), then the data dir can go.
    for pid in "$ARCA_TEST_S3_PID" "$ARCA_TEST_AZURITE_PID"; do
        for _ in $(seq 1 50); do alive "$pid" || break; sleep 0.1; done
        if alive "$pid"; then kill -KILL -- "-$pid" 2>/dev/null || true; fi
    done
    rm -f "$STATE"
    if [[ -n "$ARCA_TEST_SERVERS_DIR" ]]; then rm -rf "$ARCA_TEST_SERVERS_DIR"; fi
}

start() {
    load_state
    if alive "$ARCA_TEST_S3_PID" && alive "$ARCA_TEST_AZURITE_PID"; then
        echo "test-servers: already running (S3 $ARCA_TEST_S3_ENDPOINT, Azurite $ARCA_TEST_AZURITE_ENDPOINT)" >&2
        return 0
    fi
    stop # half of a previous pair, or a stale state file
    [[ -x "$TOOLS_DIR/bin/moto_server" && -x "$TOOLS_DIR/bin/azurite-blob" ]] ||
        { echo "test-servers: tools missing, run infra/dev/ensure-tools.sh first" >&2; exit 1; }

    local dir s3_port az_port s3_pid az_pid
    dir="$(mktemp -d "${TMPDIR:-/tmp}/arca-test-servers.XXXXXX")"
    s3_port="$(free_port)"
    az_port="$(free_port)"
    # setsid + nohup: the servers outlive this script (and `make`), and stop()
    # can kill each one's process group.
    setsid nohup "$TOOLS_DIR/bin/moto_server" -H 127.0.0.1 -p "$s3_port" \
        >"$dir/moto.log" 2>&1 </dev/null &
    s3_pid=$!
    # --skipApiVersionCheck: OpenDAL may send a newer x-ms-version than Azurite knows.
    # --disableTelemetry: otherwise Azurite tries to send telemetry out.
    setsid nohup "$TOOLS_DIR/bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$az_port" \
        --location "$dir/azurite" --disableTelemetry --silent --skipApiVersionCheck \
        >"$dir/azurite.log" 2>&1 </dev/null &
    az_pid=$!

    cat >"$STATE" <<STATE
ARCA_TEST_S3_ENDPOINT=http://127.0.0.1:$s3_port
ARCA_TEST_AZURITE_ENDPOINT=http://127.0.0.1:$az_port/devstoreaccount1
ARCA_TEST_S3_PID=$s3_pid
ARCA_TEST_AZURITE_PID=$az_pid
ARCA_TEST_SERVERS_DIR=$dir
STATE
    if ! wait_listening "$s3_port" "$s3_pid" moto_server || ! wait_listening "$az_port" "$az_pid" azurite-blob; then
        tail -n 20 "$dir"/*.log >&2 || true
        stop
        exit 1
    fi
    echo "test-servers: S3 on 127.0.0.1:$s3_port (pid $s3_pid), Azurite on 127.0.0.1:$az_port (pid $az_pid); state in $STATE" >&2
}

case "${1:-}" in
start) start ;;
stop) stop ;;
env)
    load_state
    if ! alive "$ARCA_TEST_S3_PID" || ! alive "$ARCA_TEST_AZURITE_PID"; then
        echo "test-servers: not running, use: $0 start" >&2
        exit 1
    fi
    echo "export ARCA_TEST_S3_ENDPOINT=$ARCA_TEST_S3_ENDPOINT"
    echo "export ARCA_TEST_AZURITE_ENDPOINT=$ARCA_TEST_AZURITE_ENDPOINT"
    ;;
*)
    echo "usage: $0 start|stop|env" >&2
    exit 2
    ;;
esac

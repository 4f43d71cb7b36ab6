#!/usr/bin/env bash
# `make run`: the server and two bots, alice and bob, talking over TLS in this terminal.
# Certificates (certs/) and tokens (run/) must exist: `make run` makes them first.
# Ctrl-C stops everything: each process is stopped by its PID and waited for.
#
#   BIN          where the securechat commands are          (default .venv/bin)
#   RUN_DIR      tokens file and token files                (default run)
#   HOST, PORT   where the server listens                   (default 127.0.0.1 7443)
#   DEMO_COUNT   messages each bot sends                    (default 5)
#   DEMO_EVERY   seconds between them                       (default 1)
#   KEEP_SERVING 1: after the bots, keep the server until Ctrl-C (default);
#                0: stop it and exit (0 if everyone exited cleanly)
set -euo pipefail

BIN=${BIN:-.venv/bin}
RUN_DIR=${RUN_DIR:-run}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-7443}
DEMO_COUNT=${DEMO_COUNT:-5}
DEMO_EVERY=${DEMO_EVERY:-1}
KEEP_SERVING=${KEEP_SERVING:-1}
server_log="$RUN_DIR/server.log"

pids=()
# shellcheck disable=SC2317  # called from the traps below
stop_all() {
    trap - INT TERM EXIT
    local pid
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap 'echo "run-demo: stopping" >&2; stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap stop_all EXIT

# Every line prefixed with who said it, as `docker compose up` does. The filters ignore
# Ctrl-C and TERM (they end when their writer does), so the last lines a process
# prints while shutting down still reach the terminal.
prefixed() { trap '' INT TERM; sed -u "s/^/$1 | /"; }

# Environment variables, not options, for everything but the listening address:
# the same names work in a shell profile, a service unit or docker-compose.yml.
export SECURECHAT_CERT=certs/server.pem SECURECHAT_KEY=certs/server.key \
    SECURECHAT_TOKENS="$RUN_DIR/tokens.json" SECURECHAT_DATA_DIR="$RUN_DIR/data"
: >"$server_log"
"$BIN/securechat-server" --host "$HOST" --port "$PORT" \
    2> >(trap '' INT TERM; tee -a "$server_log" | prefixed "server") &
server=$!
pids+=("$server")

# Wait (bounded) until the server listens, or report why it did not start.
deadline=$((SECONDS + 20))
until grep -q "listening on" "$server_log"; do
    if ! kill -0 "$server" 2>/dev/null; then
        wait "$server" && code=0 || code=$?
        echo "run-demo: the server did not start (exit $code); see the lines above" >&2
        exit 1
    fi
    if [ $SECONDS -ge $deadline ]; then
        echo "run-demo: the server did not listen within 20 s" >&2
        exit 1
    fi
    sleep 0.1
done

export SECURECHAT_HOST="$HOST" SECURECHAT_PORT="$PORT" SECURECHAT_CA=certs/ca.pem \
    SECURECHAT_SERVER_NAME=localhost
bot() {  # bot NAME PEER
    SECURECHAT_TOKEN_FILE="$RUN_DIR/$1.token" "$BIN/securechat-client" \
        --say "hello from $1" --every "$DEMO_EVERY" --count "$DEMO_COUNT" --wait-for "$2" \
        --max-retries 10 > >(prefixed "$1") 2>&1 &
}
bot alice bob
alice=$!
bot bob alice
bob=$!
pids+=("$alice" "$bob")

status=0
wait "$alice" || status=$?
wait "$bob" || status=$?
if [ "$status" != 0 ]; then
    echo "run-demo: a bot failed (exit $status)" >&2
    exit "$status"
fi
echo "run-demo: alice and bob are done."
if [ "$KEEP_SERVING" = 1 ]; then
    cat <<EOF
run-demo: the server keeps running on $HOST:$PORT; join the room as carol from another terminal:
    $BIN/securechat-client --host $HOST --port $PORT --ca certs/ca.pem --token-file $RUN_DIR/carol.token
run-demo: Ctrl-C stops the server.
EOF
    wait "$server" || status=$?
else
    kill -TERM "$server"
    wait "$server" || status=$?
fi
pids=()
exit "$status"

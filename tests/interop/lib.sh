# shellcheck shell=bash
# Shared by the interop checks: start auth-svc and posts-svc (release builds) on free loopback ports with
# throwaway storage, wait until each reports SERVING through grpc.health.v1.Health, and stop them on exit.
#
#   source tests/interop/lib.sh   # makes $INTEROP_TMP and installs an EXIT trap
#   interop_start_services        # sets and exports AUTH_ADDR and POSTS_ADDR (127.0.0.1:PORT)
#   interop_start_services_tls    # the same over TLS, posts-svc -> auth-svc over mutual TLS; also exports
#                                 # WATCHWORD_TLS_DIR (ca.pem, {auth-svc,posts-svc,developer}.{pem,key})
#                                 # and WATCHWORD_CA (its ca.pem)
#   ...                           # everything is stopped and removed when the script exits
#
# Needs the release binaries (cargo build --release -p auth-svc -p posts-svc -p watchword-dev) and grpcurl
# in .venv/ (see .ci/interop). Override with WATCHWORD_BIN_DIR and GRPCURL. Callers use
# `set -euo pipefail`.

INTEROP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
WATCHWORD_BIN_DIR="${WATCHWORD_BIN_DIR:-${CARGO_TARGET_DIR:-$INTEROP_ROOT/target}/release}"
GRPCURL="${GRPCURL:-$INTEROP_ROOT/.venv/bin/grpcurl}"
# How long one process may take to report SERVING, and to exit after SIGTERM.
INTEROP_START_TIMEOUT="${INTEROP_START_TIMEOUT:-30}"
INTEROP_STOP_TIMEOUT="${INTEROP_STOP_TIMEOUT:-15}"

# How grpcurl reaches the services: plaintext, or (after interop_start_services_tls) TLS trusting our CA.
INTEROP_GRPCURL_TRANSPORT=(-plaintext)

INTEROP_PIDS=()       # processes we started, in start order
INTEROP_NAMES=()      # their names, for messages
INTEROP_LOGS=()       # their stderr logs

interop_log() { printf '[interop] %s\n' "$*" >&2; }
interop_die() {
  interop_log "FAIL: $*"
  exit 1
}

# Prints a TCP port on 127.0.0.1 that was free a moment ago. Another process may still take it before we
# bind it; interop_spawn notices (the service exits with "cannot listen") and tries another.
interop_free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Prints the health status (SERVING, NOT_SERVING, ...) of `service` at `addr`, or nothing if the call fails.
interop_health() {
  local addr="$1" service="$2" out
  out="$("$GRPCURL" "${INTEROP_GRPCURL_TRANSPORT[@]}" -max-time 2 -d "{\"service\": \"$service\"}" "$addr" \
    grpc.health.v1.Health/Check 2>/dev/null)" || return 0
  python3 -c 'import json, sys; print(json.loads(sys.argv[1]).get("status", ""))' "$out"
}

# Waits until `pid` reports `service` SERVING at `addr`. Returns 0 when it does, 1 on timeout, 2 if the
# process exited first.
interop_wait_serving() {
  local pid="$1" addr="$2" service="$3"
  local deadline=$((SECONDS + INTEROP_START_TIMEOUT))
  while ((SECONDS < deadline)); do
    kill -0 "$pid" 2>/dev/null || return 2
    if [[ "$(interop_health "$addr" "$service")" == SERVING ]]; then
      # Make sure it is our process that answered, not one that was already on this port.
      kill -0 "$pid" 2>/dev/null || return 2
      return 0
    fi
    sleep 0.1 # polling interval, bounded by the deadline above
  done
  return 1
}

# interop_spawn NAME BINARY HEALTH_SERVICE [ARGS...]
# Starts BINARY --listen 127.0.0.1:PORT ARGS... on a free port and waits until it is SERVING. Sets
# INTEROP_ADDR to its address. Retries on another port if the chosen one was taken in the meantime.
interop_spawn() {
  local name="$1" binary="$2" service="$3"
  shift 3
  [[ -x "$binary" ]] || interop_die "$binary not found: build it first (cargo build --release ...)"
  [[ -x "$GRPCURL" ]] || interop_die "grpcurl not found at $GRPCURL: run .ci/interop or set GRPCURL"
  local attempt port addr pid log status
  for attempt in 1 2 3 4 5; do
    port="$(interop_free_port)"
    addr="127.0.0.1:$port"
    log="$INTEROP_TMP/$name.$attempt.log"
    "$binary" --listen "$addr" "$@" 2>"$log" &
    pid=$!
    INTEROP_PIDS+=("$pid")
    INTEROP_NAMES+=("$name")
    INTEROP_LOGS+=("$log")
    status=0
    interop_wait_serving "$pid" "$addr" "$service" || status=$?
    case "$status" in
      0)
        interop_log "$name is SERVING on $addr (pid $pid)"
        INTEROP_ADDR="$addr"
        return 0
        ;;
      1)
        cat "$log" >&2
        interop_die "$name did not report SERVING within ${INTEROP_START_TIMEOUT}s"
        ;;
      2)
        # It exited: forget it (its pid may be reused), and retry only if it lost a race for the port.
        wait "$pid" || true
        unset 'INTEROP_PIDS[-1]' 'INTEROP_NAMES[-1]'
        if grep -q "cannot listen" "$log"; then
          interop_log "$name could not listen on $addr (attempt $attempt); trying another port"
          continue
        fi
        cat "$log" >&2
        interop_die "$name exited before it was SERVING"
        ;;
    esac
  done
  interop_die "$name could not find a free port"
}

# Starts auth-svc, then posts-svc pointed at it, each with its own fresh SQLite file. Exports AUTH_ADDR and
# POSTS_ADDR.
interop_start_services() {
  # Admin servers on free ports: the defaults (9051, 9052) may be taken on a shared machine.
  interop_spawn auth-svc "$WATCHWORD_BIN_DIR/auth-svc" auth.v1.AuthService \
    --database-url "sqlite://$INTEROP_TMP/auth.db" --admin-listen 127.0.0.1:0
  export AUTH_ADDR="$INTEROP_ADDR"
  interop_spawn posts-svc "$WATCHWORD_BIN_DIR/posts-svc" posts.v1.PostsService \
    --database-url "sqlite://$INTEROP_TMP/posts.db" --auth-url "http://$AUTH_ADDR" --admin-listen 127.0.0.1:0
  export POSTS_ADDR="$INTEROP_ADDR"
}

# Like interop_start_services, over TLS: throwaway certificates from `watchword-dev --certs-only` (the
# layout of `watchword-dev --tls`), both services serving TLS, auth-svc admitting only posts-svc's
# certificate to Validate and WatchRevocations, and posts-svc reaching it over mutual TLS.
interop_start_services_tls() {
  [[ -x "$WATCHWORD_BIN_DIR/watchword-dev" ]] || interop_die "$WATCHWORD_BIN_DIR/watchword-dev not found: build it first"
  "$WATCHWORD_BIN_DIR/watchword-dev" --certs-only --data-dir "$INTEROP_TMP" >/dev/null
  export WATCHWORD_TLS_DIR="$INTEROP_TMP/tls"
  export WATCHWORD_CA="$WATCHWORD_TLS_DIR/ca.pem"
  INTEROP_GRPCURL_TRANSPORT=(-cacert "$WATCHWORD_CA")
  local tls="$WATCHWORD_TLS_DIR"
  interop_spawn auth-svc "$WATCHWORD_BIN_DIR/auth-svc" auth.v1.AuthService \
    --database-url "sqlite://$INTEROP_TMP/auth.db" \
    --tls-cert "$tls/auth-svc.pem" --tls-key "$tls/auth-svc.key" \
    --tls-client-ca "$tls/ca.pem" --internal-clients posts-svc
  export AUTH_ADDR="$INTEROP_ADDR"
  interop_spawn posts-svc "$WATCHWORD_BIN_DIR/posts-svc" posts.v1.PostsService \
    --database-url "sqlite://$INTEROP_TMP/posts.db" \
    --tls-cert "$tls/posts-svc.pem" --tls-key "$tls/posts-svc.key" \
    --auth-url "https://$AUTH_ADDR" --auth-ca "$tls/ca.pem" \
    --auth-client-cert "$tls/posts-svc.pem" --auth-client-key "$tls/posts-svc.key"
  export POSTS_ADDR="$INTEROP_ADDR"
}

# EXIT trap: SIGTERM everything we started (newest first), expect a graceful exit 0 within
# INTEROP_STOP_TIMEOUT, show logs if anything failed, remove the temp dir. Keeps the script's own failure
# status; turns success into failure if a service did not stop cleanly.
interop_cleanup() {
  local rc=$? i pid name deadline code stop_failed=0
  for ((i = ${#INTEROP_PIDS[@]} - 1; i >= 0; i--)); do
    pid="${INTEROP_PIDS[i]}"
    name="${INTEROP_NAMES[i]}"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + INTEROP_STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      interop_log "$name (pid $pid) ignored SIGTERM for ${INTEROP_STOP_TIMEOUT}s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      stop_failed=1
    fi
    code=0
    wait "$pid" 2>/dev/null || code=$?
    if ((code != 0)); then
      interop_log "$name (pid $pid) exited with status $code after SIGTERM (expected 0)"
      stop_failed=1
    else
      interop_log "$name (pid $pid) stopped cleanly"
    fi
  done
  if ((rc != 0 || stop_failed)); then
    for i in "${!INTEROP_LOGS[@]}"; do
      interop_log "--- last lines of ${INTEROP_LOGS[i]##*/} ---"
      tail -n 30 "${INTEROP_LOGS[i]}" >&2 || true
    done
  fi
  rm -rf "$INTEROP_TMP"
  if ((rc == 0 && stop_failed)); then
    rc=1
  fi
  exit "$rc"
}

# Throwaway storage and logs for this script's services; removed by interop_cleanup.
INTEROP_TMP="$(mktemp -d "${TMPDIR:-/tmp}/watchword-interop.XXXXXX")"
trap interop_cleanup EXIT

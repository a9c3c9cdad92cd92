# shellcheck shell=bash
# TAP-style assertions on grpcurl calls, shared by the interop scripts (after lib.sh):
#   ok WHAT / fail WHAT, gc (grpcurl with the transport flags), call, expect_status, refused_soon, py, expect.
PASSED=0
ok() {
  PASSED=$((PASSED + 1))
  printf 'ok %d - %s\n' "$PASSED" "$*"
}
fail() {
  printf 'not ok - %s\n' "$*" >&2
  exit 1
}

# grpcurl with the flags every call here shares (-plaintext, or -cacert over TLS).
gc() { "$GRPCURL" "${INTEROP_GRPCURL_TRANSPORT[@]}" -max-time 10 "$@"; }

# call ADDR METHOD JSON [GRPCURL FLAGS...]: runs a unary call that must succeed; prints its JSON response.
call() {
  local addr="$1" method="$2" data="$3" out
  shift 3
  out="$(gc "$@" -d "$data" "$addr" "$method")" || fail "$method returned status $? (expected success)"
  printf '%s\n' "$out"
}

# grpcurl exits with 64 + the gRPC status code when a call fails.
declare -A STATUS_NUMBER=([NotFound]=5 [AlreadyExists]=6 [PermissionDenied]=7 [FailedPrecondition]=9 [Unavailable]=14 [Unauthenticated]=16)

# expect_status WHAT CODE ADDR METHOD JSON [GRPCURL FLAGS...]: the call must fail with gRPC status CODE:
# grpcurl prints "Code: CODE" on stderr and exits with 64 + CODE's number.
expect_status() {
  local what="$1" code="$2" addr="$3" method="$4" data="$5" err status=0
  shift 5
  err="$(gc "$@" -d "$data" "$addr" "$method" 2>&1 >/dev/null)" || status=$?
  grep -q "Code: $code\$" <<<"$err" || fail "$what: expected $code, got: $err"
  local expected=$((64 + STATUS_NUMBER[$code]))
  ((status == expected)) || fail "$what: grpcurl exited with $status, expected $expected"
  ok "$what fails with $code (grpcurl exit status $status)"
}

# refused_soon WHAT ADDR METHOD JSON [GRPCURL FLAGS...]: repeats the call until it fails with
# Unauthenticated (a revocation reaches every guard within a second), for at most about 3 s.
refused_soon() {
  local what="$1" addr="$2" method="$3" data="$4" deadline=$((SECONDS + 3)) err
  shift 4
  while gc "$@" -d "$data" "$addr" "$method" >/dev/null 2>&1; do
    ((SECONDS <= deadline)) || fail "$what: still accepted after 3s"
    sleep 0.05 # polling interval, bounded by the deadline above
  done
  err="$(gc "$@" -d "$data" "$addr" "$method" 2>&1 >/dev/null)" || true
  grep -q "Code: Unauthenticated\$" <<<"$err" || fail "$what: expected Unauthenticated, got: $err"
  ok "$what"
}

# py JSON EXPR: evaluates the Python expression EXPR with the parsed JSON bound to `d`, prints the result.
py() { python3 -c 'import json, sys; d = json.loads(sys.argv[1]); print(eval(sys.argv[2]))' "$1" "$2"; }

# expect EXPECTED ACTUAL WHAT
expect() {
  [[ "$2" == "$1" ]] || fail "$3: expected '$1', got '$2'"
  ok "$3"
}

#!/usr/bin/env bash
# Calls both services with grpcurl through server reflection only (no .proto files), asserting on grpcurl's
# output and exit status. Starts its own auth-svc and posts-svc (release builds) on free loopback ports.
#
# Usage: tests/interop/grpcurl.sh [--tls]   (after .ci/interop has installed grpcurl into .venv/ and built the
# binaries). With --tls the services serve TLS (grpcurl -cacert) and Validate needs posts-svc's client
# certificate (mutual TLS), which this script checks too.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

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
declare -A STATUS_NUMBER=([NotFound]=5 [AlreadyExists]=6 [PermissionDenied]=7 [Unauthenticated]=16)

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

# py JSON EXPR: evaluates the Python expression EXPR with the parsed JSON bound to `d`, prints the result.
py() { python3 -c 'import json, sys; d = json.loads(sys.argv[1]); print(eval(sys.argv[2]))' "$1" "$2"; }

# expect EXPECTED ACTUAL WHAT
expect() {
  [[ "$2" == "$1" ]] || fail "$3: expected '$1', got '$2'"
  ok "$3"
}

# Validate is an internal RPC: over TLS it needs posts-svc's client certificate.
INTERNAL=()
if [[ "${1:-}" == --tls ]]; then
  interop_start_services_tls
  INTERNAL=(-cert "$WATCHWORD_TLS_DIR/posts-svc.pem" -key "$WATCHWORD_TLS_DIR/posts-svc.key")
else
  interop_start_services
fi
AUTH="$AUTH_ADDR"
POSTS="$POSTS_ADDR"

# --- Discovery through reflection --------------------------------------------------------------------------
for target in "auth-svc $AUTH auth.v1.AuthService" "posts-svc $POSTS posts.v1.PostsService"; do
  read -r name addr service <<<"$target"
  services="$(gc "$addr" list)" || fail "grpcurl list $name"
  for wanted in "$service" grpc.health.v1.Health grpc.reflection.v1alpha.ServerReflection; do
    grep -qx "$wanted" <<<"$services" || fail "$name does not list $wanted; it lists: $services"
  done
  ok "$name lists $service, grpc.health.v1.Health and reflection"
done

description="$(gc "$POSTS" describe posts.v1.PostsService)" || fail "describe posts.v1.PostsService"
printf '%s\n' "$description"
for rpc in CreatePost ListPosts GetPost DeletePost; do
  grep -qF "rpc $rpc ( .posts.v1.${rpc}Request ) returns ( .posts.v1.${rpc}Response );" <<<"$description" ||
    fail "describe does not show rpc $rpc"
done
ok "describe posts.v1.PostsService shows its four RPCs"

# --- Account and token -------------------------------------------------------------------------------------
CREDENTIALS='{"username": "grpcurl-user", "password": "correct horse battery staple"}'
registered="$(call "$AUTH" auth.v1.AuthService/Register "$CREDENTIALS")"
expect "grpcurl-user" "$(py "$registered" 'd["user"]["username"]')" "Register returns the new user"
expect "True" "$(py "$registered" '"user" in d["user"]["roles"]')" "the new user has the role user"
user_id="$(py "$registered" 'd["user"]["id"]')"

expect_status "Register with a taken username" AlreadyExists "$AUTH" auth.v1.AuthService/Register "$CREDENTIALS"
expect_status "Login with a wrong password" Unauthenticated "$AUTH" auth.v1.AuthService/Login \
  '{"username": "grpcurl-user", "password": "not the right password"}'

login="$(call "$AUTH" auth.v1.AuthService/Login "$CREDENTIALS")"
expect "Bearer" "$(py "$login" 'd["tokenType"]')" "Login returns a Bearer token"
TOKEN="$(py "$login" 'd["accessToken"]')"
AUTHZ=(-H "authorization: Bearer $TOKEN")

validated="$(call "$AUTH" auth.v1.AuthService/Validate "{\"token\": \"$TOKEN\"}" "${INTERNAL[@]}")"
expect "$user_id" "$(py "$validated" 'd["claims"]["subject"]')" "Validate returns the user's id as subject"

# --- Posts -------------------------------------------------------------------------------------------------
first="$(call "$POSTS" posts.v1.PostsService/CreatePost '{"title": "First", "body": "Hello from grpcurl"}' "${AUTHZ[@]}")"
second="$(call "$POSTS" posts.v1.PostsService/CreatePost '{"title": "Second", "body": "Still here"}' "${AUTHZ[@]}")"
first_id="$(py "$first" 'd["post"]["id"]')"
second_id="$(py "$second" 'd["post"]["id"]')"
expect "$user_id grpcurl-user" "$(py "$first" 'd["post"]["authorId"] + " " + d["post"]["authorUsername"]')" \
  "CreatePost sets the author from the token"

listed="$(call "$POSTS" posts.v1.PostsService/ListPosts '{}' "${AUTHZ[@]}")"
expect "$second_id $first_id" "$(py "$listed" '" ".join(p["id"] for p in d["posts"])')" \
  "ListPosts returns both posts, newest first"

got="$(call "$POSTS" posts.v1.PostsService/GetPost "{\"id\": \"$first_id\"}" "${AUTHZ[@]}")"
expect "First|Hello from grpcurl" "$(py "$got" 'd["post"]["title"] + "|" + d["post"]["body"]')" \
  "GetPost returns the post"

deleted="$(call "$POSTS" posts.v1.PostsService/DeletePost "{\"id\": \"$first_id\"}" "${AUTHZ[@]}")"
expect "{}" "$(py "$deleted" 'json.dumps(d)')" "DeletePost returns an empty response"
expect_status "GetPost of the deleted post" NotFound "$POSTS" posts.v1.PostsService/GetPost "{\"id\": \"$first_id\"}" "${AUTHZ[@]}"
listed="$(call "$POSTS" posts.v1.PostsService/ListPosts '{}' "${AUTHZ[@]}")"
expect "$second_id" "$(py "$listed" '" ".join(p["id"] for p in d["posts"])')" "ListPosts no longer shows the deleted post"

# --- Without a valid token ---------------------------------------------------------------------------------
expect_status "ListPosts without a token" Unauthenticated "$POSTS" posts.v1.PostsService/ListPosts '{}'
expect_status "ListPosts with a garbage token" Unauthenticated "$POSTS" posts.v1.PostsService/ListPosts '{}' \
  -H "authorization: Bearer garbage"

# --- Mutual TLS: the internal RPCs are for posts-svc's certificate only -------------------------------------
if ((${#INTERNAL[@]})); then
  expect_status "Validate without a client certificate (CLIENT_CERT_REQUIRED)" Unauthenticated "$AUTH" \
    auth.v1.AuthService/Validate "{\"token\": \"$TOKEN\"}"
  expect_status "Validate with a certificate not in --internal-clients (CALLER_NOT_ALLOWED)" PermissionDenied \
    "$AUTH" auth.v1.AuthService/Validate "{\"token\": \"$TOKEN\"}" \
    -cert "$WATCHWORD_TLS_DIR/developer.pem" -key "$WATCHWORD_TLS_DIR/developer.key"
  reason="$(gc -d "{\"token\": \"$TOKEN\"}" "$AUTH" auth.v1.AuthService/Validate 2>&1 || true)"
  grep -q CLIENT_CERT_REQUIRED <<<"$reason" || fail "the refusal names CLIENT_CERT_REQUIRED: $reason"
  ok "the refusal's ErrorInfo reason is CLIENT_CERT_REQUIRED"
fi

# --- Health ------------------------------------------------------------------------------------------------
for target in "$AUTH auth.v1.AuthService" "$POSTS posts.v1.PostsService" "$AUTH " "$POSTS "; do
  read -r addr service <<<"$target"
  health="$(call "$addr" grpc.health.v1.Health/Check "{\"service\": \"${service:-}\"}")"
  expect "SERVING" "$(py "$health" 'd["status"]')" "Health/Check '${service:-}' at $addr is SERVING"
done

printf 'grpcurl: %d passed, 0 failed\n' "$PASSED"

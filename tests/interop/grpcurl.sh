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

# shellcheck source=SCRIPTDIR/checks.sh
source "$(dirname "${BASH_SOURCE[0]}")/checks.sh"

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

description="$(gc "$AUTH" describe auth.v1.AuthService)" || fail "describe auth.v1.AuthService"
for rpc in GetMe ChangePassword ListSessions RevokeSession CreateApiKey ListApiKeys RevokeApiKey ExchangeApiKey \
  ListAuditEvents; do
  grep -qF "rpc $rpc ( .auth.v1.${rpc}Request ) returns ( .auth.v1.${rpc}Response );" <<<"$description" ||
    fail "describe does not show rpc $rpc"
done
ok "describe auth.v1.AuthService shows the self-service, API key and audit RPCs"

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

# --- The current user and refresh --------------------------------------------------------------------------
me="$(call "$AUTH" auth.v1.AuthService/GetMe '{}' "${AUTHZ[@]}")"
expect "$user_id True" "$(py "$me" 'd["user"]["id"] + " " + str(d["session"]["current"])')" \
  "GetMe returns the caller and the current session"
refreshed="$(call "$AUTH" auth.v1.AuthService/Refresh "{\"refresh_token\": \"$(py "$login" 'd["refreshToken"]')\"}")"
expect "True" "$(py "$refreshed" 'd["refreshToken"].startswith("wwrt_")')" "Refresh returns a new refresh token"
TOKEN="$(py "$refreshed" 'd["accessToken"]')"
AUTHZ=(-H "authorization: Bearer $TOKEN")
tablet="$(call "$AUTH" auth.v1.AuthService/Login "$CREDENTIALS")"
sessions="$(call "$AUTH" auth.v1.AuthService/ListSessions '{}' "${AUTHZ[@]}")"
expect "2 [True, False]" "$(py "$sessions" 'str(len(d["sessions"])) + " " + str([s.get("current", False) for s in d["sessions"]])')" \
  "ListSessions shows both live sessions, the caller's current"
call "$AUTH" auth.v1.AuthService/RevokeSession "{\"session_id\": \"$(py "$tablet" 'd["sessionId"]')\"}" \
  "${AUTHZ[@]}" >/dev/null
refused_soon "RevokeSession ends the other session" "$POSTS" posts.v1.PostsService/ListPosts '{}' \
  -H "authorization: Bearer $(py "$tablet" 'd["accessToken"]')"

# --- API keys ----------------------------------------------------------------------------------------------
created="$(call "$AUTH" auth.v1.AuthService/CreateApiKey \
  '{"name": "grpcurl bot", "roles": ["guest"], "ttl": "3600s"}' "${AUTHZ[@]}")"
SECRET="$(py "$created" 'd["secret"]')"
KEY_ID="$(py "$created" 'd["apiKey"]["id"]')"
expect "True ['guest']" "$(py "$created" 'str(d["secret"].startswith("wwk_")) + " " + str(d["apiKey"]["roles"])')" \
  "CreateApiKey returns a wwk_ secret and the key"
exchanged="$(call "$AUTH" auth.v1.AuthService/ExchangeApiKey "{\"api_key\": \"$SECRET\"}")"
KEY_AUTHZ=(-H "authorization: Bearer $(py "$exchanged" 'd["accessToken"]')")
validated="$(call "$AUTH" auth.v1.AuthService/Validate '{}' "${KEY_AUTHZ[@]}" "${INTERNAL[@]}")"
expect "$user_id $KEY_ID ['guest']" \
  "$(py "$validated" 'd["claims"]["subject"] + " " + d["claims"]["sessionId"] + " " + str(d["claims"]["roles"])')" \
  "ExchangeApiKey returns the owner's token with the key's roles and id"
call "$POSTS" posts.v1.PostsService/ListPosts '{}' "${KEY_AUTHZ[@]}" >/dev/null
ok "a guest key's token reads posts"
expect_status "CreatePost with a guest key's token" PermissionDenied "$POSTS" posts.v1.PostsService/CreatePost \
  '{"title": "t", "body": "b"}' "${KEY_AUTHZ[@]}"
keys="$(call "$AUTH" auth.v1.AuthService/ListApiKeys '{}' "${AUTHZ[@]}")"
expect "$KEY_ID" "$(py "$keys" '" ".join(k["id"] for k in d["apiKeys"])')" "ListApiKeys lists the key"
call "$AUTH" auth.v1.AuthService/RevokeApiKey "{\"id\": \"$KEY_ID\"}" "${AUTHZ[@]}" >/dev/null
refused_soon "the revoked key's token is refused by posts-svc" "$POSTS" posts.v1.PostsService/ListPosts '{}' \
  "${KEY_AUTHZ[@]}"
expect_status "ExchangeApiKey of the revoked key" Unauthenticated "$AUTH" auth.v1.AuthService/ExchangeApiKey \
  "{\"api_key\": \"$SECRET\"}"

# --- Password change and logout ----------------------------------------------------------------------------
other="$(call "$AUTH" auth.v1.AuthService/Login "$CREDENTIALS")"
OTHER_AUTHZ=(-H "authorization: Bearer $(py "$other" 'd["accessToken"]')")
call "$AUTH" auth.v1.AuthService/ChangePassword \
  '{"current_password": "correct horse battery staple", "new_password": "a brand new passphrase"}' \
  "${AUTHZ[@]}" >/dev/null
refused_soon "ChangePassword ends the other session" "$POSTS" posts.v1.PostsService/ListPosts '{}' "${OTHER_AUTHZ[@]}"
call "$POSTS" posts.v1.PostsService/ListPosts '{}' "${AUTHZ[@]}" >/dev/null
ok "ChangePassword keeps the caller's session"
expect_status "Login with the old password" Unauthenticated "$AUTH" auth.v1.AuthService/Login "$CREDENTIALS"
call "$AUTH" auth.v1.AuthService/Logout '{}' "${AUTHZ[@]}" >/dev/null
refused_soon "Logout ends the session" "$POSTS" posts.v1.PostsService/ListPosts '{}' "${AUTHZ[@]}"

# --- Audit events (an admin made with --bootstrap-admin, beside the running server) -----------------------
ADMIN_PASSWORD="an admin passphrase for grpcurl"
AUTH_SVC_BOOTSTRAP_PASSWORD="$ADMIN_PASSWORD" "$WATCHWORD_BIN_DIR/auth-svc" \
  --database-url "sqlite://$INTEROP_TMP/auth.db" --bootstrap-admin grpcurl-admin >/dev/null ||
  fail "auth-svc --bootstrap-admin"
admin="$(call "$AUTH" auth.v1.AuthService/Login "{\"username\": \"grpcurl-admin\", \"password\": \"$ADMIN_PASSWORD\"}")"
ADMIN_AUTHZ=(-H "authorization: Bearer $(py "$admin" 'd["accessToken"]')")
events="$(call "$AUTH" auth.v1.AuthService/ListAuditEvents \
  "{\"user_id\": \"$user_id\", \"kind\": \"API_KEY_REVOKED\"}" "${ADMIN_AUTHZ[@]}")"
expect "API_KEY_REVOKED $KEY_ID" "$(py "$events" '" ".join(e["kind"] + " " + e["sessionId"] for e in d["events"])')" \
  "ListAuditEvents shows the key's revocation"
events="$(call "$AUTH" auth.v1.AuthService/ListAuditEvents '{"page_size": 100}' "${ADMIN_AUTHZ[@]}")"
kinds="$(py "$events" '" ".join(sorted({e["kind"] for e in d["events"]}))')"
for kind in USER_REGISTERED LOGIN_SUCCEEDED LOGIN_FAILED API_KEY_CREATED PASSWORD_CHANGED LOGOUT; do
  grep -qw "$kind" <<<"$kinds" || fail "ListAuditEvents lacks $kind: $kinds"
done
ok "ListAuditEvents shows what was done above"
relogin="$(call "$AUTH" auth.v1.AuthService/Login '{"username": "grpcurl-user", "password": "a brand new passphrase"}')"
USER_AUTHZ=(-H "authorization: Bearer $(py "$relogin" 'd["accessToken"]')")
expect_status "ListAuditEvents for a non-admin" PermissionDenied "$AUTH" auth.v1.AuthService/ListAuditEvents '{}' \
  "${USER_AUTHZ[@]}"

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

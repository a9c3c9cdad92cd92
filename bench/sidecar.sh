#!/usr/bin/env bash
# The issue-18 side-by-side with a minimal client: h2load (C, nghttp2) instead of the harness's Rust client,
# 16 concurrent ListPosts of 20 posts with one token against four servers on one database, each for 5 s
# after 2 s of warm-up, two rounds, taking turns:
#   noauth  `bench serve-unguarded` (no guard)        cached  posts-svc (the default: remote + cache)
#   local   posts-svc --verify local                   envoy   Envoy jwt_authn (examples/envoy/jwt-authn.yaml,
#                                                              --concurrency 2) in front of noauth
# Uses the example configuration's loopback ports (auth-svc 50051, upstream 50053, Envoy 10000 and 9901),
# so nothing else may listen there. The harness (`bench`) remains the reference; this shows how much of
# its ratios is the harness's own client, which shares the two cores with the servers.
#
# Usage: bench/sidecar.sh [ENVOY]   (release binaries as for the harness; needs h2load, nghttp, python3)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
bin=${BIN:-"$root/target/release"}
envoy=${1:-$(command -v envoy || true)}
[ -x "$envoy" ] || { echo "sidecar.sh: no Envoy (pass its path, or put envoy on PATH)" >&2; exit 1; }
work=$(mktemp -d)
pids=()
trap 'for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT
# shellcheck source=bench/common.sh
source "$here/common.sh"

seed_posts "$bin" "$work/posts.db"
start() { # NAME COMMAND...: starts a server, waits for its address
    local name=$1
    shift
    "$@" >"$work/$name.log" 2>&1 &
    pids+=("$!")
    addr_of "$work/$name.log" >/dev/null
}
start auth "$bin/auth-svc" --listen 127.0.0.1:50051 --admin-listen off --peer-rate 0 \
    --database-url "sqlite://$work/auth.db"
token=$(python3 "$here/profile_login.py" 127.0.0.1:50051)
posts=(--admin-listen off --database-url "sqlite://$work/posts.db" --auth-url http://127.0.0.1:50051)
start noauth "$bin/bench" serve-unguarded --listen 127.0.0.1:50053 "${posts[@]}"
start cached "$bin/posts-svc" --listen 127.0.0.1:50052 "${posts[@]}"
start local "$bin/posts-svc" --listen 127.0.0.1:50054 --verify local "${posts[@]}"
"$envoy" -c "$root/examples/envoy/jwt-authn.yaml" --concurrency 2 -l warn >"$work/envoy.log" 2>&1 &
pids+=("$!")
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/10000) 2>/dev/null && break; sleep 0.1; done

printf '\x00\x00\x00\x00\x02\x08\x14' >"$work/list.bin"
declare -A port=([noauth]=50053 [cached]=50052 [local]=50054 [envoy]=10000)
declare -A total=()
for round in 1 2; do
    for name in noauth cached local envoy; do
        out=$(h2load -D 5 --warm-up-time 2 -c 4 -m 4 -H 'content-type: application/grpc' -H 'te: trailers' \
            -H "authorization: Bearer $token" -d "$work/list.bin" \
            "http://127.0.0.1:${port[$name]}/posts.v1.PostsService/ListPosts")
        # h2load counts gRPC errors as successes (HTTP 200): a refused call has a tiny body, so check sizes.
        rate=$(grep -o 'finished in [^,]*, [0-9.]* req/s' <<<"$out" | awk '{print $4}')
        bytes=$(grep -o 'traffic: .* total' <<<"$out")
        echo "round $round  $name  $rate req/s  ($bytes)"
        total[$name]=$(python3 -c "print(${total[$name]:-0} + $rate)")
    done
done
python3 - "${total[noauth]}" "${total[cached]}" "${total[local]}" "${total[envoy]}" <<'PY'
import sys
noauth, cached, local, envoy = map(float, sys.argv[1:])
print(f"cached/noauth {cached / noauth:.3f}  local/noauth {local / noauth:.3f}  "
      f"cached/envoy {cached / envoy:.3f}  local/envoy {local / envoy:.3f}")
PY

#!/usr/bin/env bash
# Where a call's instructions go: runs one server under `valgrind --tool=callgrind` and counts the
# instructions of N calls of one kind (after a warm-up that the counters do not see), then sorts them into
# the stages of BENCHMARKS.md's "Where ListPosts' time goes" (bench/stages.py).
#
# callgrind counts instructions executed in user space, the same for the same binary and inputs whatever
# else the machine does (the shared 2-core machines' neighbours move seconds, not instruction counts). It
# does not see the kernel: the system calls each call makes are counted separately with strace.
#
# Usage: bench/profile.sh OUT_DIR [CALLS] [SET]
#   SET: `list` (default: health, list-noauth, list-cached) or `observed` (issue 15: Validate and a cached
#   ListPosts with metrics and tracing off, then on, exporting every span to `bench receive-otlp`).
#   Needs: valgrind, h2load and nghttp (nghttp2-client), strace, python3, and release binaries with line tables:
#   CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release -p auth-svc -p posts-svc -p bench --bins
set -euo pipefail

out=${1:?usage: bench/profile.sh OUT_DIR [CALLS] [SET]}
calls=${2:-4000}
set=${3:-list}
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
bin=${BIN:-"$root/target/release"} # BIN: another build's binaries, to compare
for tool in valgrind callgrind_control h2load nghttp strace python3; do
    command -v "$tool" >/dev/null || { echo "profile.sh: $tool is missing" >&2; exit 1; }
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=bench/common.sh
source "$here/common.sh"
seed_posts "$bin" "$work/posts.db"

# gRPC request bodies: a 5-byte prefix (uncompressed, length) and the message.
printf '\x00\x00\x00\x00\x02\x08\x14' >"$work/list.bin"                    # ListPostsRequest{page_size: 20}
printf '\x00\x00\x00\x00\x19\x0a\x17posts.v1.PostsService' >"$work/health.bin" # HealthCheckRequest{service}

grpc_headers=(-H 'content-type: application/grpc' -H 'te: trailers')
load() { # URL BODY N CONNECTIONS STREAMS (and the headers in $extra_headers)
    h2load -n "$3" -c "$4" -m "$5" "${grpc_headers[@]}" "${extra_headers[@]}" -d "$2" "$1" >"$work/h2load.log" 2>&1 ||
        { cat "$work/h2load.log" >&2; exit 1; }
}

# profile NAME PATH BODY SERVER_ARGS...: N calls to PATH on a fresh server under callgrind.
profile() {
    local name=$1 path=$2 body=$3
    shift 3
    local log="$work/$name.log"
    RUST_LOG=info valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.$name" \
        --instr-atstart=no --separate-threads=no "$@" >"$log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    local addr
    addr=$(addr_of "$log")
    load "http://$addr$path" "$body" 400 4 4 # warm-up: connections, statement cache, allocator
    callgrind_control --instr=on "$pid" >/dev/null 2>&1
    load "http://$addr$path" "$body" "$calls" 4 4
    grep -q "succeeded, 0 failed, 0 errored" "$work/h2load.log" || { cat "$work/h2load.log" >&2; exit 1; }
    callgrind_control --dump "$pid" >/dev/null 2>&1
    callgrind_control --instr=off "$pid" >/dev/null 2>&1
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    # Keep the dump taken after the measured calls; valgrind writes another at exit with nothing counted.
    mv "$out/callgrind.$name.1" "$out/callgrind.$name.out"
    rm -f "$out/callgrind.$name"

    # The same calls natively: CPU time per call (user and system, from /proc), after the same warm-up.
    "$@" >"$log.native" 2>&1 &
    pid=$!
    pids+=("$pid")
    addr=$(addr_of "$log.native")
    load "http://$addr$path" "$body" 400 4 4
    local before after
    before=$(cut -d' ' -f14,15 "/proc/$pid/stat")
    load "http://$addr$path" "$body" "$((calls * 10))" 4 4
    after=$(cut -d' ' -f14,15 "/proc/$pid/stat")
    echo "$before $after $(getconf CLK_TCK) $((calls * 10))" >"$out/native.$name.txt"
    kill "$pid"
    wait "$pid" 2>/dev/null || true

    # And under strace: system calls per call.
    strace -f -c -o "$out/strace.$name.txt" "$@" >"$log.native" 2>&1 &
    pid=$!
    pids+=("$pid")
    addr=$(addr_of "$log.native")
    load "http://$addr$path" "$body" "$calls" 4 4
    # SIGINT to the server itself (strace ignores it for its child): a graceful stop, then strace's table.
    pkill -INT -P "$pid"
    wait "$pid" 2>/dev/null || true
}

# auth-svc on its own database (ARGS...), natively, its address in $auth.
start_auth() {
    "$bin/auth-svc" --listen 127.0.0.1:0 --database-url "sqlite://$work/auth.db" --peer-rate 0 "$@" \
        >"$work/auth.log" 2>&1 &
    pids+=("$!")
    auth=$(addr_of "$work/auth.log")
}

extra_headers=()
case $set in
list)
    unguarded=("$bin/bench" serve-unguarded --listen 127.0.0.1:0 --admin-listen off
        --database-url "sqlite://$work/posts.db" --auth-url http://127.0.0.1:9)
    profile health /grpc.health.v1.Health/Check "$work/health.bin" "${unguarded[@]}"
    profile list-noauth /posts.v1.PostsService/ListPosts "$work/list.bin" "${unguarded[@]}"
    # The guard's share: the shipped posts-svc (validation cache on, the default) with one user's token, and
    # auth-svc running natively beside it (it sees one Validate per cache lifetime).
    start_auth --admin-listen off
    token=$(python3 "$here/profile_login.py" "$auth")
    extra_headers=(-H "authorization: Bearer $token")
    profile list-cached /posts.v1.PostsService/ListPosts "$work/list.bin" "$bin/posts-svc" --listen 127.0.0.1:0 \
        --admin-listen off --database-url "sqlite://$work/posts.db" --auth-url "http://$auth" --validate-cache-ttl 5s
    ;;
observed)
    "$bin/bench" receive-otlp >"$work/otlp.log" 2>&1 &
    pids+=("$!")
    otlp="http://$(addr_of "$work/otlp.log")"
    observed=(--admin-listen 127.0.0.1:0 --otlp-endpoint "$otlp")
    # A token for Validate, then that auth-svc stops: each profiled one reopens its database (same keys).
    start_auth --admin-listen off
    token=$(python3 "$here/profile_login.py" "$auth")
    kill "${pids[-1]}"
    wait "${pids[-1]}" 2>/dev/null || true
    python3 -c 'import sys; t = sys.argv[1].encode(); m = b"\x0a" + bytes([len(t) & 0x7f | 0x80, len(t) >> 7]) + t
sys.stdout.buffer.write(b"\x00" + len(m).to_bytes(4, "big") + m)' "$token" >"$work/validate.bin"
    auth_args=("$bin/auth-svc" --listen 127.0.0.1:0 --database-url "sqlite://$work/auth.db" --peer-rate 0)
    profile validate /auth.v1.AuthService/Validate "$work/validate.bin" "${auth_args[@]}" --admin-listen off
    profile validate-observed /auth.v1.AuthService/Validate "$work/validate.bin" "${auth_args[@]}" "${observed[@]}"
    start_auth --admin-listen off
    extra_headers=(-H "authorization: Bearer $token")
    posts_args=("$bin/posts-svc" --listen 127.0.0.1:0 --database-url "sqlite://$work/posts.db"
        --auth-url "http://$auth" --validate-cache-ttl 5s)
    profile list-cached /posts.v1.PostsService/ListPosts "$work/list.bin" "${posts_args[@]}" --admin-listen off
    profile list-cached-observed /posts.v1.PostsService/ListPosts "$work/list.bin" "${posts_args[@]}" \
        "${observed[@]}"
    grep spans= "$work/otlp.log" | tail -1
    ;;
*)
    echo "profile.sh: SET must be list or observed" >&2
    exit 1
    ;;
esac

python3 "$here/stages.py" "$out" "$calls" | tee "$out/stages.md"

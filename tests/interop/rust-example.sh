#!/usr/bin/env bash
# Proves that another Rust service can adopt the guard: starts auth-svc and the guarded_service example
# (an in-memory posts.v1.PostsService behind AuthLayer) in place of posts-svc, then runs the Python client's
# whole flow against it, unauthenticated cases included.
#
# Usage: tests/interop/rust-example.sh
#   (after cargo build --release -p auth-svc -p posts-svc -p watchword --example guarded_service)
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

interop_spawn auth-svc "$WATCHWORD_BIN_DIR/auth-svc" auth.v1.AuthService \
  --database-url "sqlite://$INTEROP_TMP/auth.db" --admin-listen 127.0.0.1:0
export AUTH_ADDR="$INTEROP_ADDR"
interop_spawn guarded_service "$WATCHWORD_BIN_DIR/examples/guarded_service" posts.v1.PostsService \
  --auth-url "http://$AUTH_ADDR"
export POSTS_ADDR="$INTEROP_ADDR"

"$INTEROP_ROOT/.venv/bin/python" "$INTEROP_ROOT/examples/python/client.py"

#!/usr/bin/env bash
# Runs a command against freshly started auth-svc and posts-svc (release builds, free loopback ports,
# throwaway storage), which it finds in AUTH_ADDR and POSTS_ADDR. Both services are stopped afterwards.
#
# Usage: tests/interop/with-services.sh COMMAND [ARGS...]
#   e.g. tests/interop/with-services.sh .venv/bin/python examples/python/client.py
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

(($# > 0)) || interop_die "usage: $0 COMMAND [ARGS...]"
interop_start_services
interop_log "running: $* (AUTH_ADDR=$AUTH_ADDR POSTS_ADDR=$POSTS_ADDR)"
"$@"

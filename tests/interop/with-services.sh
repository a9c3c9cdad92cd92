#!/usr/bin/env bash
# Runs a command against freshly started auth-svc and posts-svc (release builds, free loopback ports,
# throwaway storage), which it finds in AUTH_ADDR and POSTS_ADDR. Both services are stopped afterwards.
#
# Usage: tests/interop/with-services.sh [--tls] COMMAND [ARGS...]
#   e.g. tests/interop/with-services.sh .venv/bin/python examples/python/client.py
# With --tls both services serve TLS (see interop_start_services_tls), and the command finds the CA to
# trust in WATCHWORD_CA.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ "${1:-}" == --tls ]]; then
  shift
  (($# > 0)) || interop_die "usage: $0 [--tls] COMMAND [ARGS...]"
  interop_start_services_tls
else
  (($# > 0)) || interop_die "usage: $0 [--tls] COMMAND [ARGS...]"
  interop_start_services
fi
interop_log "running: $* (AUTH_ADDR=$AUTH_ADDR POSTS_ADDR=$POSTS_ADDR${WATCHWORD_CA:+ WATCHWORD_CA=$WATCHWORD_CA})"
"$@"

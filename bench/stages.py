#!/usr/bin/env python3
"""Sorts a callgrind profile's instructions into the stages of a call (bench/profile.sh writes the profiles).

Every instruction is charged to the source file it was compiled from (inlined code included: callgrind
names the inlined file), and the file decides the stage: h2's hpack module is HPACK, libsqlite3-sys is the
SQLite engine, and so on (STAGES below, first match wins). Code that serves everyone (malloc, free, memcpy,
and the standard library's generic code: Vec growth, drop glue, closures) is charged to whoever called it,
in proportion to what each caller spent in it, so "SQLite rows into posts" includes the mallocs of the
strings it makes. The table adds up to the profile's total.

Usage: stages.py OUT_DIR CALLS   (reads OUT_DIR/callgrind.*.out and OUT_DIR/strace.*.txt)
"""

import collections
import glob
import os
import re
import sys

# (stage, pattern on the source file's path). First match wins.
STAGES = [
    ("HPACK (header compression)", r"/h2-[^/]+/src/hpack/"),
    ("HTTP/2 and HTTP (h2, hyper, http, bytes)", r"/(h2|hyper|hyper-util|http|http-body|http-body-util|httparse|bytes|tokio-util)-\d"),
    ("Tokio: scheduling, sockets, the hop to the blocking pool", r"/tokio-\d|/parking_lot|/crossbeam|/mio-\d|nptl/"),
    ("SQLite engine (libsqlite3)", r"/libsqlite3-sys-"),
    ("SQLite rows into posts (rusqlite, the store)", r"/rusqlite-\d|^ws:/db/|^ws:/posts-svc/src/store/|/hashlink|/lru"),
    ("Protobuf encoding (prost)", r"/prost-\d|/prost-types|/tonic-prost|/out/[a-z.0-9]+\.rs$|^ws:/posts-svc/src/service\.rs"),
    ("The per-call log line (tracing, formatting)", r"/tracing-subscriber|/tracing-core|/tracing-\d|/sharded-slab|/nu-ansi|/core/src/fmt/|^ws:/src/server\.rs$|/thread_local|/tracing-log"),
    # Ahead of "Layers": the guard's files are under src/ too.
    ("The guard (watchword::guard, token checks)", r"^ws:/src/guard/|^ws:/src/credentials\.rs$|/quick_cache-|/jsonwebtoken|/ed25519|/curve25519|/sha2|/block-buffer|/digest-"),
    ("Layers and routing (tonic, tower, CORS, gRPC-Web, observe)", r"/tonic-\d|/tonic-web|/tower|/axum|/matchit|/opentelemetry|^ws:/src/|/pin-project"),
    ("Handler (posts-svc)", r"^ws:/posts-svc/src/"),
]
# With `observed` profiles (profile.sh's `observed` set), the observability crates get stages of their own,
# ahead of the ones above.
OBSERVED_STAGES = [
    ("Spans: tracing-opentelemetry", r"/tracing-opentelemetry-"),
    ("Spans: OpenTelemetry SDK, OTLP conversion", r"/opentelemetry[-_a-z]*-\d"),
    ("Metrics (metrics, the Prometheus recorder)", r"/metrics-\d|/metrics-exporter|/metrics-util|/quanta-|^ws:/src/metrics\.rs"),
    ("The observe layer (watchword::observe)", r"^ws:/src/observe\.rs"),
    ("tracing: span registry, filters, the log line", r"/tracing-subscriber|/tracing-core|/tracing-\d|/sharded-slab|/thread_local"),
]
OTHER = "Other"
KERNEL_NOTE = "system calls (not counted by callgrind)"

# Code charged to its callers: the allocator, memory copies, the standard library's generic code, and
# encoders anyone may call (base64: page tokens and JWTs; serde_json: JWT claims and JSON log lines).
TRANSPARENT = re.compile(
    r"^\?\?\?$|/malloc/|/string/|/library/(core|alloc|std)/|libc\.so|ld-linux|/sysdeps/|/rust/deps/"
    r"|/(hashbrown|foldhash|indexmap|fnv|slab|atomic-waker|percent-encoding|smallvec|itoa|ryu|memchr|mimalloc|libmimalloc-sys|base64|serde_json)-\d"
)

NAME = re.compile(r"^\((\d+)\)(?: (.*))?$")
# This repository's files, wherever it is checked out: "ws:/db/src/lib.rs", "ws:/target/.../posts.v1.rs".
WORKSPACE = re.compile(r"^/(?!rustc/|usr/|root/\.cargo/|rust/).*?/(db|src|posts-svc|auth-svc|bench|target)/")


def source(path):
    return WORKSPACE.sub(lambda m: "ws:/" + m.group(1) + "/", path, count=1)


def parse(path):
    """Self cost per (function, file) and call edges (caller function, call-site file) -> callee function."""
    names = {"fl": {}, "fn": {}}
    self_cost = collections.Counter()  # (fn, file) -> Ir
    edges = collections.Counter()  # (caller fn, call-site file, callee fn) -> inclusive Ir
    fn = fl = cur_file = None
    pending_call = None
    total = 0

    def resolve(kind, value):
        m = NAME.match(value)
        if not m:
            return value
        ident, name = m.group(1), m.group(2)
        table = names["fn" if kind in ("fn", "cfn") else "fl"]
        if name is not None:
            table[ident] = source(name) if table is names["fl"] else name
        return table.get(ident, value)

    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line[0] == "#":
                continue
            if "=" in line and line.split("=", 1)[0] in ("fl", "fi", "fe", "fn", "cfn", "cfi", "cfl", "ob", "cob", "calls"):
                key, value = line.split("=", 1)
                if key == "fl":
                    fl = cur_file = resolve("fl", value)
                elif key in ("fi", "fe"):
                    cur_file = resolve("fl", value)
                elif key == "fn":
                    fn = resolve("fn", value)
                    cur_file = fl
                elif key in ("cfi", "cfl"):
                    resolve("fl", value)
                elif key == "cfn":
                    pending_call = resolve("fn", value)
                elif key == "calls":
                    pass
                continue
            if line[0] in "0123456789+-*":
                parts = line.split()
                cost = int(parts[1]) if len(parts) > 1 else 0
                if pending_call is not None:
                    edges[(fn, cur_file, pending_call)] += cost
                    pending_call = None
                else:
                    self_cost[(fn, cur_file)] += cost
                    total += cost
    return self_cost, edges, total


def stage_of(file):
    for stage, pattern in STAGES:
        if re.search(pattern, file or ""):
            return stage
    return None


def attribute(self_cost, edges):
    """Instructions per stage, transparent code charged to its callers (proportionally, up the graph)."""
    stages = collections.Counter()
    pending = collections.Counter()  # transparent fn -> instructions to pass up to its callers
    for (fn, file), cost in self_cost.items():
        if TRANSPARENT.search(file or "???"):
            pending[fn] += cost
        else:
            stages[stage_of(file) or OTHER] += cost
    callers = collections.defaultdict(list)  # callee -> [(caller fn, call-site file, inclusive)]
    for (caller, file, callee), cost in edges.items():
        if caller != callee:
            callers[callee].append((caller, file, cost))
    for _ in range(200):
        if sum(pending.values()) < 1:
            break
        moving, pending = pending, collections.Counter()
        for fn, cost in moving.items():
            sites = callers.get(fn)
            if not sites:
                stages[OTHER] += cost
                continue
            weight = sum(c for _, _, c in sites) or 1
            for caller, file, c in sites:
                share = cost * c / weight
                if TRANSPARENT.search(file or "???"):
                    pending[caller] += share
                else:
                    stages[stage_of(file) or OTHER] += share
    for fn, cost in pending.items():
        stages[OTHER] += cost
    return stages


def syscalls(path):
    """System calls per name from `strace -c`."""
    counts = {}
    if not os.path.exists(path):
        return counts
    for line in open(path):
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] not in ("total",):
            try:
                counts[parts[-1]] = int(parts[3])
            except ValueError:
                pass
    return counts


def native(path):
    """(user, system) CPU µs per call from profile.sh's native run: utime stime before, after, ticks/s, calls."""
    if not os.path.exists(path):
        return None
    u0, s0, u1, s1, hz, n = (int(x) for x in open(path).read().split())
    return (u1 - u0) / hz * 1e6 / n, (s1 - s0) / hz * 1e6 / n


def main():
    global STAGES
    out, calls = sys.argv[1], int(sys.argv[2])
    if glob.glob(os.path.join(out, "callgrind.*observed.out")):
        STAGES = OBSERVED_STAGES + STAGES
    profiles = {}
    for path in sorted(glob.glob(os.path.join(out, "callgrind.*.out"))):
        name = os.path.basename(path)[len("callgrind."):-len(".out")]
        self_cost, edges, total = parse(path)
        profiles[name] = (
            attribute(self_cost, edges),
            total,
            syscalls(os.path.join(out, f"strace.{name}.txt")),
            native(os.path.join(out, f"native.{name}.txt")),
        )
    names = sorted(profiles, key=lambda n: profiles[n][1])
    order = [stage for stage, _ in STAGES]
    seen = set()
    for stages, *_ in profiles.values():
        seen.update(stages)
    rows = [s for s in order if s in seen] + sorted(seen - set(order))
    print(f"Instructions per call (callgrind, {calls} calls after a warm-up), by stage:\n")
    print("| stage | " + " | ".join(names) + " |")
    print("| --- | " + " | ".join("---:" for _ in names) + " |")
    for stage in rows:
        cells = []
        for n in names:
            stages, total, *_ = profiles[n]
            v = stages.get(stage, 0) / calls
            cells.append(f"{v / 1000:,.1f} k ({100 * stages.get(stage, 0) / total:.0f} %)" if v >= 50 else "—")
        print(f"| {stage} | " + " | ".join(cells) + " |")
    print("| **total** | " + " | ".join(f"**{profiles[n][1] / calls / 1000:,.1f} k**" for n in names) + " |")
    if all(profiles[n][3] for n in names):
        print("\nCPU per call natively (µs, from /proc; 10 × as many calls, 4 connections × 4 streams):\n")
        print("| | " + " | ".join(names) + " |")
        print("| --- | " + " | ".join("---:" for _ in names) + " |")
        for i, what in enumerate(("user", "system")):
            print(f"| {what} | " + " | ".join(f"{profiles[n][3][i]:.1f}" for n in names) + " |")
        print("| **total** | " + " | ".join(f"**{sum(profiles[n][3]):.1f}**" for n in names) + " |")
    print(f"\nSystem calls per call ({KERNEL_NOTE}; strace -c -f, the same calls natively):\n")
    sys_names = sorted({s for n in names for s, c in profiles[n][2].items() if c >= calls / 10})
    print("| system call | " + " | ".join(names) + " |")
    print("| --- | " + " | ".join("---:" for _ in names) + " |")
    for s in sys_names:
        print(f"| {s} | " + " | ".join(f"{profiles[n][2].get(s, 0) / calls:.2f}" for n in names) + " |")


if __name__ == "__main__":
    main()

# Shared by bench/profile.sh and bench/sidecar.sh (sourced).

# The address a server logged (`serving addr=…`, not the admin server's `admin serving addr=…`), waiting up
# to 60 s (valgrind starts slowly).
addr_of() {
    local log=$1
    for _ in $(seq 600); do
        if grep -v 'admin serving' "$log" 2>/dev/null | grep -q 'serving addr='; then
            grep -v 'admin serving' "$log" | grep -o 'serving addr=[0-9.:]*' | head -1 | cut -d= -f2
            return
        fi
        sleep 0.1
    done
    echo "no address in $log" >&2
    cat "$log" >&2
    exit 1
}

# seed_posts BIN_DIR DB: a posts database with 10 000 posts, as the harness seeds it (same title and body
# lengths), written directly after posts-svc has created the schema.
seed_posts() {
    local bin=$1 db=$2
    "$bin/posts-svc" --listen 127.0.0.1:0 --admin-listen off --database-url "sqlite://$db" \
        --auth-url http://127.0.0.1:9 >"$db.migrate.log" 2>&1 &
    local migrate=$!
    addr_of "$db.migrate.log" >/dev/null
    kill "$migrate"
    wait "$migrate" 2>/dev/null || true
    python3 - "$db" <<'PY'
import sqlite3, sys, uuid
db = sqlite3.connect(sys.argv[1])
db.executemany(
    "INSERT INTO posts (id, author_id, author_username, title, body, create_time_us) VALUES (?, ?, ?, ?, ?, ?)",
    ((str(uuid.uuid4()), str(uuid.uuid4()), f"user{i % 64}", f"Seeded post {i}",
      f"Body of seeded post {i}: some text of a realistic length for a short post.", 1_790_000_000_000_000 + i)
     for i in range(10_000)))
db.commit()
PY
}

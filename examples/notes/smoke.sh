#!/usr/bin/env bash
# Smoke test of the notes example against a real PostgreSQL, given by DATABASE_URL (a role
# that may CREATE DATABASE, e.g. a provider's admin URL; skipped when unset). In a scratch
# database it creates (and drops at the end), it builds a copy of the app with rhone.toml's
# build command, starts the output with its run command, and checks the endpoints against
# each schema the migrations produce while the same process keeps serving: no table yet,
# then 0001, 0002 and 0003 applied with psql from the build output (recorded in
# rhone.applied_migrations as Rhone records them), then 0003's down migration. It stops the
# app with SIGTERM and expects exit 0, then starts it with broken DATABASE_URLs (a wrong
# password, a malformed URL, an address that refuses, a server that never answers, none) and
# checks that health fails within the connect timeout and that no answer or log line shows
# the password.
set -euo pipefail

if [ -z "${DATABASE_URL:-}" ]; then
    echo "smoke: skipped: DATABASE_URL is not set (a PostgreSQL URL whose role may CREATE DATABASE," \
        "e.g. postgres://admin:PASSWORD@127.0.0.1:5432/postgres)"
    exit 0
fi
command -v psql >/dev/null 2>&1 || { echo "FAIL: psql not found (Debian's postgresql-client)"; exit 1; }

here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
server_pid=""
silent_pid=""
scratch=""
admin_url="$DATABASE_URL"
unset DATABASE_URL # given to the app explicitly, never inherited by accident
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then kill "$server_pid"; wait "$server_pid" || true; fi
    if [ -n "$silent_pid" ]; then kill "$silent_pid" 2>/dev/null || true; fi
    if [ -n "$scratch" ]; then
        psql -X -q -d "$admin_url" -c "DROP DATABASE IF EXISTS \"$scratch\" WITH (FORCE)" >/dev/null 2>&1 ||
            psql -X -q -d "$admin_url" -c "DROP DATABASE IF EXISTS \"$scratch\"" >/dev/null 2>&1 ||
            echo "warning: could not drop the scratch database $scratch"
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# The app runs on a python3 that has psycopg2 (in Rhone's sandbox: the system's). Put one
# first on PATH as `python3`, so that rhone.toml's commands run as they are written.
python=""
for candidate in python3 /usr/bin/python3; do
    if "$candidate" -c 'import psycopg2' 2>/dev/null; then python="$(command -v "$candidate")"; break; fi
done
[ -n "$python" ] || { echo "FAIL: no python3 with psycopg2 (Debian's python3-psycopg2)"; exit 1; }
mkdir "$work/bin"
ln -s "$python" "$work/bin/python3"
export PATH="$work/bin:$PATH"
export PGCONNECT_TIMEOUT=5

cp -R "$here" "$work/app"
rm -rf "$work/app/dist" "$work/app/__pycache__"

# Read the commands from rhone.toml, as the platform does.
eval "$(python3 - "$work/app/rhone.toml" <<'EOF'
import shlex, sys, tomllib
m = tomllib.load(open(sys.argv[1], "rb"))
for name, value in [("build_cmd", m["build"]["command"]), ("output_dir", m["build"].get("output_dir", "dist")),
                    ("run_cmd", m["run"]["command"]), ("health_path", m["run"].get("health_path", "/healthz")),
                    ("migrations_dir", m["migrations"]["dir"])]:
    print(f"{name}={shlex.quote(value)}")
EOF
)"

echo "== build: $build_cmd"
(cd "$work/app" && sh -c "$build_cmd")
artifact="$work/app/$output_dir"
for f in server.py vango_state_schema.json "$migrations_dir/0001_notes.sql" "$migrations_dir/0003_drop_legacy_tag.down.sql"; do
    [ -f "$artifact/$f" ] || { echo "FAIL: the build output lacks $f"; exit 1; }
done
echo "ok   the build output holds the server, the state schema and $migrations_dir/"

# A scratch database, and the URL of it (same role, same password).
scratch="notes_smoke_$$_$RANDOM"
psql -X -q -v ON_ERROR_STOP=1 -d "$admin_url" -c "CREATE DATABASE \"$scratch\"" >/dev/null ||
    { scratch=""; echo "FAIL: cannot create a scratch database: DATABASE_URL's role needs CREATEDB"; exit 1; }
url_with() { # DB_NAME [PASSWORD]: the admin URL with another database (and password)
    python3 - "$admin_url" "$@" <<'EOF'
import sys
from urllib.parse import quote, urlsplit, urlunsplit
url, database = sys.argv[1], sys.argv[2]
parts = urlsplit(url)
netloc = parts.netloc
if len(sys.argv) > 3:
    userinfo, _, hostport = netloc.rpartition("@")
    netloc = f"{userinfo.split(':', 1)[0]}:{quote(sys.argv[3], safe='')}@{hostport}"
print(urlunsplit((parts.scheme, netloc, "/" + database, parts.query, "")))
EOF
}
db_url="$(url_with "$scratch")"
echo "ok   scratch database $scratch"

# Applies one migration file from the build output in one transaction with its record, as
# Rhone's Migration does (without its classification, dry run and lock).
apply() { # FILE CLASS [record]
    local file="$migrations_dir/$1" class="$2" sha
    sha="$(sha256sum "$artifact/$file" | cut -d' ' -f1)"
    local record=(-c "CREATE SCHEMA IF NOT EXISTS rhone;
        CREATE TABLE IF NOT EXISTS rhone.applied_migrations (path text PRIMARY KEY, sha256 text NOT NULL,
            class text NOT NULL, operation_id uuid NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
        INSERT INTO rhone.applied_migrations (path, sha256, class, operation_id)
            VALUES ('$file', '$sha', '$class', '00000000-0000-0000-0000-000000000000')")
    [ "${3:-record}" = record ] || record=()
    PGOPTIONS="-c client_min_messages=warning" \
        psql -X -q -v ON_ERROR_STOP=1 -1 -d "$db_url" -f "$artifact/$file" "${record[@]}" >/dev/null
    echo "== applied $file ($class)"
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start() { # LOG [DATABASE_URL]: starts the app from the build output with rhone.toml's run command
    local vars=(HOST=127.0.0.1 PORT="$(free_port)" RHONE_ARTIFACT_DIGEST=sha256:smoke NOTES_KEY=smoke-notes-key)
    [ -z "${2:-}" ] || vars+=(DATABASE_URL="$2")
    port="${vars[1]#PORT=}"
    # `exec` all the way down, so the signal reaches the app process itself.
    (cd "$artifact" && exec env "${vars[@]}" sh -c "exec $run_cmd") >"$1" 2>&1 &
    server_pid=$!
}

stop() { # LOG: SIGTERM, then a clean exit 0 within 10 s
    kill -TERM "$server_pid"
    local deadline=$((SECONDS + 10)) status=0
    while kill -0 "$server_pid" 2>/dev/null; do
        if [ "$SECONDS" -ge "$deadline" ]; then echo "FAIL: server still running 10 s after SIGTERM"; exit 1; fi
        sleep 0.05
    done
    wait "$server_pid" || status=$?
    server_pid=""
    grep -q "stopped" "$1" || { echo "FAIL: no 'stopped' line"; cat "$1"; exit 1; }
    [ "$status" -eq 0 ] || { echo "FAIL: server exited with $status"; cat "$1"; exit 1; }
    echo "ok   server exited 0 after SIGTERM"
}

cat >"$work/check.py" <<'EOF'
"""Checks of one phase against the running app: python3 check.py PORT PID HEALTH PHASE."""
import hashlib, http.client, json, sys, time

port, pid, health_path, phase = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
MIGRATIONS = {"none": [], "0001": ["0001_notes.sql"], "0002": ["0001_notes.sql", "0002_author.sql"]}
MIGRATIONS["0003"] = MIGRATIONS["down"] = MIGRATIONS["0002"] + ["0003_drop_legacy_tag.sql"]
COLUMNS = {
    "0001": ["id", "body", "created_at", "legacy_tag"],
    "0002": ["id", "body", "created_at", "legacy_tag", "author"],
    "0003": ["id", "body", "created_at", "author"],
    "down": ["id", "body", "created_at", "author", "legacy_tag"],
}


def ok(what):
    print(f"ok   [{phase}] {what}")


def request(method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    if isinstance(body, (dict, list)):
        body, headers = json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})}
    conn.request(method, path, body=body, headers=headers or {})
    res = conn.getresponse()
    data = res.read()
    conn.close()
    return res.status, res.headers, data


def get_json(path, expect=200):
    status, headers, data = request("GET", path)
    assert status == expect, (path, status, data)
    assert headers["Content-Type"] == "application/json", headers["Content-Type"]
    return json.loads(data)


deadline = time.monotonic() + 10
while True:
    try:
        status, _, body = request("GET", health_path)
        if status == 200:
            break
    except OSError:
        pass
    assert time.monotonic() < deadline, "the app did not become healthy within 10 s"
    time.sleep(0.05)
assert body == b"ok\n", body
ok(f"GET {health_path} -> 200 ok (SELECT 1 answered)")

stats = get_json("/_rhone/stats")
expected = {
    "artifact_digest": "sha256:smoke",
    "notes_key_sha256": hashlib.sha256(b"smoke-notes-key").hexdigest(),
    "schema": [f"migrations/{m}" for m in MIGRATIONS[phase]],
    "pid": pid,
}
assert stats == expected, (stats, expected)
ok(f"GET /_rhone/stats -> schema {stats['schema']}")

if phase == "none":
    answer = get_json("/notes", 503)
    assert answer["error"] == "UndefinedTable" and "notes" in answer["message"], answer
    status, _, _ = request("POST", "/notes", {"body": "too early"})
    assert status == 503, status
    status, _, page = request("GET", "/")
    assert status == 200 and b"UndefinedTable" in page, (status, page)
    ok("no table yet: GET /notes and POST /notes -> 503 UndefinedTable, GET / says so")
    sys.exit(0)

columns = COLUMNS[phase]
before = get_json("/notes")
assert before["columns"] == columns, before["columns"]
for note in before["notes"]:
    assert list(note) == columns, note
ok(f"GET /notes -> columns {columns}, {len(before['notes'])} notes")

# Input validation names the field.
for bad, field, words in [
    ({}, "body", "required"),
    ({"body": ""}, "body", "empty"),
    ({"body": "  \n "}, "body", "empty"),
    ({"body": 5}, "body", "string"),
    ({"body": "x" * 1001}, "body", "1000"),
    ([], "body", "object"),
    ({"body": "fine", "author": 7}, "author", "string"),
    ({"body": "fine", "author": "a" * 201}, "author", "200"),
]:
    status, _, data = request("POST", "/notes", bad)
    answer = json.loads(data)
    assert status == 400 and answer["field"] == field and words in answer["error"], (bad, status, answer)
status, _, data = request("POST", "/notes", b"{not json", {"Content-Type": "application/json"})
assert status == 400 and "not JSON" in json.loads(data)["error"], (status, data)
ok("POST /notes with a bad body -> 400 naming the field (body, author), or saying it is not JSON")

created = []
body = f"<b>{phase}</b> & \"quoted\" <script>alert(1)</script>"
status, headers, data = request("POST", "/notes", {"body": body})
row = json.loads(data)
assert status == 201 and list(row) == columns and row["body"] == body, (status, row)
assert isinstance(row["id"], int) and row["created_at"], row
created.append(row)
status, headers, data = request("POST", "/notes", {"body": "x" * 1000, "author": "ada"})
row = json.loads(data)
assert status == 201 and list(row) == columns and len(row["body"]) == 1000, (status, row)
if "author" in columns:
    assert row["author"] == "ada" and headers["Notes-Ignored-Fields"] is None, (row, headers)
    ok("POST /notes -> 201 with the row; author stored")
else:
    assert headers["Notes-Ignored-Fields"] == "author", headers
    ok("POST /notes -> 201 with the row; author ignored (no such column yet), said in Notes-Ignored-Fields")
created.append(row)
status, headers, _ = request("POST", "/notes", b"body=from+the+form&author=",
                             {"Content-Type": "application/x-www-form-urlencoded"})
assert status == 303 and headers["Location"] == "/", (status, headers)
ok("POST /notes from the page's form -> 303 to /")

after = get_json("/notes")
ids = [n["id"] for n in after["notes"]]
assert ids == sorted(ids) and len(ids) == len(before["notes"]) + 3, ids
assert [n for n in after["notes"] if n["id"] in {c["id"] for c in created}] == created
assert after["notes"][-1]["body"] == "from the form"
if "author" in columns:
    assert after["notes"][-1]["author"] is None, after["notes"][-1]
ok(f"GET /notes -> {len(ids)} notes ordered by id, the new ones as answered")

status, headers, page = request("GET", "/")
page = page.decode()
assert status == 200 and headers["Content-Type"].startswith("text/html"), (status, headers)
assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page, "not escaped"
assert "&amp; &quot;quoted&quot;" in page
assert ('name="author"' in page) == ("author" in columns)
for column in columns:
    assert f"<th>{column}</th>" in page, column
ok("GET / -> 200, every note html-escaped, a column per column")

status, _, data = request("HEAD", health_path)
assert status == 200 and data == b"", (status, data)
assert request("GET", "/nope")[0] == 404
ok(f"HEAD {health_path} -> 200 without a body; GET /nope -> 404")
EOF

cat >"$work/broken.py" <<'EOF'
"""Checks of the app given a DATABASE_URL that cannot work: python3 broken.py PORT HEALTH SENTINEL LABEL."""
import http.client, json, sys, time

port, health_path, sentinel, label = int(sys.argv[1]), sys.argv[2], sys.argv[3].encode(), sys.argv[4]


def request(method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    conn.request(method, path, body=body, headers=headers or {})
    res = conn.getresponse()
    data = res.read()
    conn.close()
    return res.status, data


deadline = time.monotonic() + 10
while True:
    try:
        started = time.monotonic()
        status, body = request("GET", health_path)
        took = time.monotonic() - started
        break
    except OSError:
        assert time.monotonic() < deadline, "the app did not listen within 10 s"
        time.sleep(0.05)
if status == 200 and label == "wrong password":
    print(f"note [{label}]: the server accepted a wrong password (trust authentication): not checked")
    sys.exit(0)
assert status == 503 and body.startswith(b"database unavailable: "), (status, body)
assert took < 5, f"health took {took:.1f} s"
assert sentinel not in body, body
print(f"ok   [{label}] GET {health_path} -> 503 in {took:.1f} s: {body.decode().strip()}")
for method, path, payload in [("GET", "/notes", None), ("POST", "/notes", b'{"body": "x"}'), ("GET", "/", None)]:
    status, data = request(method, path, payload, {"Content-Type": "application/json"} if payload else None)
    answer = json.loads(data)
    assert status == 503 and answer["error"] and answer["message"] and sentinel not in data, (status, data)
status, data = request("GET", "/_rhone/stats")
stats = json.loads(data)
assert status == 200 and stats["schema"] is None and stats["database_error"] and sentinel not in data, stats
print(f"ok   [{label}] /notes, POST /notes, / -> 503 and /_rhone/stats -> database_error, no password shown")
EOF

echo "== run: $run_cmd (against the scratch database)"
start "$work/server.log" "$db_url"
echo "== checks"
python3 "$work/check.py" "$port" "$server_pid" "$health_path" none
apply 0001_notes.sql expand
python3 "$work/check.py" "$port" "$server_pid" "$health_path" 0001
apply 0002_author.sql expand
python3 "$work/check.py" "$port" "$server_pid" "$health_path" 0002
apply 0003_drop_legacy_tag.sql contract
python3 "$work/check.py" "$port" "$server_pid" "$health_path" 0003
apply 0003_drop_legacy_tag.down.sql down no-record
python3 "$work/check.py" "$port" "$server_pid" "$health_path" down
stop "$work/server.log"

sentinel="Sentinel-pw-$$-$RANDOM"
broken() { # LABEL [DATABASE_URL]
    local log
    log="$work/broken-$(echo "$1" | tr ' ' -).log"
    start "$log" "${2:-}"
    python3 "$work/broken.py" "$port" "$health_path" "$sentinel" "$1"
    stop "$log"
    if grep -q "$sentinel" "$log"; then echo "FAIL: the log shows the password"; cat "$log"; exit 1; fi
}
echo "== broken DATABASE_URLs"
broken "wrong password" "$(url_with "$scratch" "$sentinel")"
broken "malformed URL" "postgresql://notes:$sentinel@[::1:5432/notes"
broken "unreachable" "postgresql://notes:$sentinel@192.0.2.1:5432/notes"
# A server that takes the connection and never answers: connect_timeout (2 s) ends the wait.
python3 -c 'import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(64)
print(s.getsockname()[1], flush=True); time.sleep(3600)' >"$work/silent.port" &
silent_pid=$!
while [ ! -s "$work/silent.port" ]; do sleep 0.05; done
broken "silent server" "postgresql://notes:$sentinel@127.0.0.1:$(cat "$work/silent.port")/notes"
kill "$silent_pid"
silent_pid=""
broken "no DATABASE_URL"
echo "== server log"
cat "$work/server.log"
echo "== smoke test passed"

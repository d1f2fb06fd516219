#!/usr/bin/env python3
"""The notes example's server: Vango's runtime contract over a PostgreSQL table.

Run from the artifact root (the build output): reads PORT (default 8080), HOST (default
0.0.0.0), DATABASE_URL (set by Rhone when the environment is bound to a database) and
NOTES_KEY (a secret, shown only as a hash). Serves the page, the health check (which proves
the database answers), the notes as JSON, and stats. Every request opens its own connection
(`connect_timeout=2`) and closes it. The code reads whatever columns the `notes` table has,
so it runs against each schema its migrations produce. Logs one line per request to stdout;
stops on SIGTERM/SIGINT, letting requests in flight finish, and exits 0.

Error messages never carry DATABASE_URL or its password: every one goes through scrub().
"""

import datetime
import decimal
import hashlib
import html
import json
import os
import re
import signal
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

try:
    import psycopg2
    import psycopg2.errors
except ImportError:  # pragma: no cover - the sandbox's system Python has it
    sys.exit("notes: psycopg2 is missing: install Debian's python3-psycopg2 (scripts/install-deps.sh does)")

MAX_BODY = 64 * 1024
MAX_NOTE_CHARS = 1000
MAX_AUTHOR_CHARS = 200
CONNECT_TIMEOUT_SECS = 2
HEALTH_STATEMENT_TIMEOUT_MS = 2000
STATEMENT_TIMEOUT_MS = 10000
DATABASE_URL = os.environ.get("DATABASE_URL") or None


def log(message):
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}", flush=True)


# --- never showing the database's credentials ---------------------------------------------


def _secret_strings(url):
    """The strings of `url` that must never be shown: the URL and its password, as written
    and percent-decoded."""
    if not url:
        return []
    found = {url}
    try:
        password = urlsplit(url).password
    except ValueError:  # not a URL libpq would take either; the URL itself is still hidden
        password = None
    if password:
        found.update({password, unquote(password)})
    match = re.search(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", url)  # key=value form
    if match:
        found.update({match.group(1), match.group(1).strip("'")})
    return sorted((s for s in found if s), key=len, reverse=True)


SECRETS = _secret_strings(DATABASE_URL)


def scrub(text):
    """`text` without DATABASE_URL, its password, or any URL's or key=value password."""
    for secret in SECRETS:
        text = text.replace(secret, "***")
    text = re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)
    text = re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", text, flags=re.IGNORECASE)
    return " ".join(text.split())


class NoDatabase(Exception):
    """DATABASE_URL is not set."""


def message_of(err):
    """The scrubbed message of an error of the database or its driver."""
    return scrub(str(err)) or "no message"


def describe(err):
    """`Class: message`, scrubbed."""
    return f"{type(err).__name__}: {message_of(err)}"


# --- the database ---------------------------------------------------------------------------


@contextmanager
def database(statement_timeout_ms=STATEMENT_TIMEOUT_MS, autocommit=True):
    """One connection for one request, closed after it."""
    if DATABASE_URL is None:
        raise NoDatabase("DATABASE_URL is not set: bind a database to the environment (rhone databases bind)")
    conn = psycopg2.connect(
        DATABASE_URL,
        connect_timeout=CONNECT_TIMEOUT_SECS,
        application_name="notes",
        options=f"-c statement_timeout={statement_timeout_ms}",
    )
    try:
        conn.autocommit = autocommit
        yield conn
    finally:
        conn.close()


def jsonable(value):
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (bytes, memoryview)):
        return bytes(value).hex()
    return value


def read_notes():
    """(columns, rows) of `notes`, ordered by id: every column the table has now."""
    with database() as conn, conn.cursor() as cur:
        cur.execute("SELECT * FROM notes ORDER BY id")
        columns = [d.name for d in cur.description]
        rows = [dict(zip(columns, map(jsonable, row))) for row in cur.fetchall()]
    return columns, rows


def insert_note(body, author):
    """Inserts a note; `author` only where the column exists. Returns (row, ignored fields)."""
    with database(autocommit=False) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT * FROM notes LIMIT 0")
            columns = {d.name for d in cur.description}
            ignored = []
            if author is not None and "author" in columns:
                cur.execute("INSERT INTO notes (body, author) VALUES (%s, %s) RETURNING *", (body, author))
            else:
                if author is not None:
                    ignored.append("author")
                cur.execute("INSERT INTO notes (body) VALUES (%s) RETURNING *", (body,))
            names = [d.name for d in cur.description]
            row = dict(zip(names, map(jsonable, cur.fetchone())))
        conn.commit()
    return row, ignored


def applied_migrations():
    """The paths Rhone recorded as applied to this database, or [] before any."""
    with database(HEALTH_STATEMENT_TIMEOUT_MS) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('rhone.applied_migrations') IS NOT NULL")
        if not cur.fetchone()[0]:
            return []
        cur.execute("SELECT path FROM rhone.applied_migrations ORDER BY path")
        return [path for (path,) in cur.fetchall()]


def validate(data):
    """(body, author) of a new note, or raises Invalid naming the field."""
    if not isinstance(data, dict):
        raise Invalid("body", "expected a JSON object like {\"body\": \"...\", \"author\": \"...\"}")
    body = data.get("body")
    if body is None:
        raise Invalid("body", f"required: a non-empty string of at most {MAX_NOTE_CHARS} characters")
    if not isinstance(body, str):
        raise Invalid("body", f"must be a string, got {type(body).__name__}")
    if not body.strip():
        raise Invalid("body", "must not be empty")
    if len(body) > MAX_NOTE_CHARS:
        raise Invalid("body", f"at most {MAX_NOTE_CHARS} characters, got {len(body)}")
    author = data.get("author")
    if author is not None and not isinstance(author, str):
        raise Invalid("author", f"must be a string or null, got {type(author).__name__}")
    if author is not None and len(author) > MAX_AUTHOR_CHARS:
        raise Invalid("author", f"at most {MAX_AUTHOR_CHARS} characters, got {len(author)}")
    if author is not None:
        author = author.strip() or None  # a blank author is no author
    return body, author


class Invalid(Exception):
    def __init__(self, field, message):
        super().__init__(f"{field}: {message}")
        self.field = field


# --- HTTP -----------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "notes-example"

    def log_message(self, format, *args):  # noqa: A002 (the base class's signature)
        pass  # one line per request is written by respond() instead

    def respond(self, status, body=b"", content_type="text/plain; charset=utf-8", headers=()):
        if isinstance(body, (dict, list)):
            body, content_type = (json.dumps(body) + "\n").encode(), "application/json"
        elif isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        client = self.headers.get("X-Forwarded-For", self.client_address[0])
        millis = (time.monotonic() - self.started) * 1000
        log(f"{self.command} {self.path} {status} {millis:.0f}ms client={client}")

    def handle_one_request(self):
        self.started = time.monotonic()
        super().handle_one_request()

    def guarded(self, route, *args):
        """Runs a route; a database error answers 503, anything else 500, both scrubbed."""
        try:
            route(*args)
        except (psycopg2.Error, NoDatabase) as err:
            self.respond(503, {"error": type(err).__name__, "message": message_of(err)})
        except Exception as err:  # noqa: BLE001 - a bug must not show a secret either
            log(f"error {describe(err)}")
            self.respond(500, {"error": type(err).__name__, "message": message_of(err)})

    # --- routes ---------------------------------------------------------------------------

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        path = urlsplit(self.path).path
        if path == "/healthz":
            return self.health()
        if path == "/notes":
            return self.guarded(self.list_notes)
        if path == "/_rhone/stats":
            return self.guarded(self.stats)
        if path == "/":
            return self.guarded(self.page)
        self.respond(404, "not found\n")

    def do_POST(self):
        path = urlsplit(self.path).path
        length = self.headers.get("Content-Length", "0" if "Transfer-Encoding" not in self.headers else "")
        if not length.isdigit():
            self.close_connection = True
            return self.respond(411, {"error": "a POST needs a Content-Length"})
        if int(length) > MAX_BODY:
            self.close_connection = True
            return self.respond(413, {"error": f"body over {MAX_BODY} bytes"})
        raw = self.rfile.read(int(length))
        if path == "/notes":
            return self.guarded(self.create_note, raw)
        self.respond(404, "not found\n")

    def health(self):
        try:
            with database(HEALTH_STATEMENT_TIMEOUT_MS) as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetchone()
        except (psycopg2.Error, NoDatabase) as err:
            return self.respond(503, f"database unavailable: {describe(err)}\n")
        self.respond(200, "ok\n")

    def list_notes(self):
        columns, rows = read_notes()
        self.respond(200, {"notes": rows, "columns": columns})

    def create_note(self, raw):
        form = self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded")
        try:
            if form:  # the page's form: answered with a redirect back to the page
                data = {k: v[0] for k, v in parse_qs(raw.decode("utf-8"), keep_blank_values=True).items()}
            else:
                data = json.loads(raw)
            body, author = validate(data)
        except (ValueError, UnicodeDecodeError) as err:
            return self.respond(400, {"error": f"the request body is not JSON: {err}", "field": None})
        except Invalid as err:
            return self.respond(400, {"error": str(err), "field": err.field})
        row, ignored = insert_note(body, author)
        log(f"inserted note id={row.get('id')}" + (f" ignored={','.join(ignored)}" if ignored else ""))
        if form:
            return self.respond(303, "", headers=[("Location", "/")])
        headers = [("Notes-Ignored-Fields", ",".join(ignored))] if ignored else []
        self.respond(201, row, headers=headers)

    def stats(self):
        key = os.environ.get("NOTES_KEY")
        answer = {
            "artifact_digest": os.environ.get("RHONE_ARTIFACT_DIGEST"),
            "notes_key_sha256": hashlib.sha256(key.encode()).hexdigest() if key is not None else None,
            "schema": None,
            "pid": os.getpid(),
        }
        try:
            answer["schema"] = applied_migrations()
        except (psycopg2.Error, NoDatabase) as err:
            answer["database_error"] = describe(err)
        self.respond(200, answer)

    def page(self):
        try:
            columns, rows = read_notes()
            problem = None
        except psycopg2.errors.UndefinedTable as err:  # no migration applied yet
            columns, rows, problem = [], [], describe(err)
        e = html.escape
        head = "".join(f"<th>{e(c)}</th>" for c in columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{e('' if r[c] is None else str(r[c]))}</td>" for c in columns) + "</tr>\n"
            for r in rows
        )
        author = '<input name="author" placeholder="author" maxlength="200">' if "author" in columns else ""
        note = f'<p class="problem">{e(problem)}</p>' if problem else ""
        page = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Notes</title>
<style>
body {{ font: 16px/1.4 system-ui, sans-serif; margin: 2rem auto; max-width: 48rem; padding: 0 1rem; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .3rem .5rem; text-align: left; vertical-align: top; }}
textarea {{ width: 100%; }}
.meta, .problem {{ color: #666; font-size: .85rem; }}
</style>
</head>
<body>
<h1>Notes</h1>
<form method="post" action="/notes">
<textarea name="body" rows="3" maxlength="{MAX_NOTE_CHARS}" required></textarea>
{author}<button>Add</button>
</form>
{note}<table>
<thead><tr>{head}</tr></thead>
<tbody>
{body}</tbody>
</table>
<p class="meta">{len(rows)} notes; columns: {e(", ".join(columns)) or "none"}; artifact {e(os.environ.get("RHONE_ARTIFACT_DIGEST") or "-")}</p>
</body>
</html>
"""
        self.respond(200, page, "text/html; charset=utf-8")


def main():
    host, port = os.environ.get("HOST", "0.0.0.0"), int(os.environ.get("PORT", "8080"))
    ThreadingHTTPServer.request_queue_size = 1024
    server = ThreadingHTTPServer((host, port), Handler)
    # Requests in flight finish before the process exits (server_close joins them).
    server.daemon_threads = False

    def stop(signum, _frame):
        log(f"received {signal.Signals(signum).name}, stopping")
        # shutdown() waits for serve_forever() to return, so it cannot run on its thread.
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(
        f"listening on {host}:{port} pid={os.getpid()} artifact={os.environ.get('RHONE_ARTIFACT_DIGEST')} "
        f"database={'set' if DATABASE_URL else 'unset'} notes_key={'set' if 'NOTES_KEY' in os.environ else 'unset'}"
    )
    server.serve_forever()
    server.server_close()
    log("stopped")


if __name__ == "__main__":
    main()

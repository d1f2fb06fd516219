#!/usr/bin/env bash
# Smoke test of the counter example, with nothing but bash and python3's standard library:
# builds a copy in a temp dir with rhone.toml's build command, starts the output with its run
# command on a free port, checks the runtime contract over HTTP and WebSocket, then stops the
# server with SIGTERM and expects a clean exit.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then kill "$server_pid"; fi
    rm -rf "$work"
}
trap cleanup EXIT

cp -R "$here" "$work/app"
rm -rf "$work/app/dist"

# Read the commands from rhone.toml, as the platform does.
eval "$(python3 - "$work/app/rhone.toml" <<'EOF'
import shlex, sys, tomllib
m = tomllib.load(open(sys.argv[1], "rb"))
for name, value in [("build_cmd", m["build"]["command"]), ("output_dir", m["build"].get("output_dir", "dist")),
                    ("run_cmd", m["run"]["command"]), ("health_path", m["run"].get("health_path", "/healthz"))]:
    print(f"{name}={shlex.quote(value)}")
EOF
)"

echo "== build: $build_cmd"
(cd "$work/app" && sh -c "$build_cmd")

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
echo "== run: $run_cmd (PORT=$port)"
# `exec` all the way down, so the signal below reaches the app process itself.
(cd "$work/app/$output_dir" && HOST=127.0.0.1 PORT="$port" RHONE_ARTIFACT_DIGEST=sha256:smoke \
    exec sh -c "exec $run_cmd") >"$work/server.log" 2>&1 &
server_pid=$!

echo "== checks"
python3 - "$port" "$server_pid" "$health_path" <<'EOF'
import base64, hashlib, http.client, json, os, re, signal, socket, struct, sys, time

port, server_pid, health_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]


def ok(what):
    print(f"ok   {what}")


def request(method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request(method, path, body=body, headers=headers or {})
    res = conn.getresponse()
    data = res.read()
    conn.close()
    return res.status, res.headers, data


# Health, within a deadline.
deadline = time.monotonic() + 10
while True:
    try:
        status, _, _ = request("GET", health_path)
        if status == 200:
            break
    except OSError:
        pass
    assert time.monotonic() < deadline, "the server did not become healthy within 10 s"
    time.sleep(0.05)
ok(f"GET {health_path} -> 200")

# The page references fingerprinted assets through manifest.json.
status, headers, body = request("GET", "/")
page = body.decode()
assert status == 200 and headers["Content-Type"].startswith("text/html"), (status, headers)
css = re.search(r'href="/public/(app\.([0-9a-f]{8})\.css)"', page)
js = re.search(r'src="/public/(app\.([0-9a-f]{8})\.js)"', page)
assert css and js, page
ok(f"GET / -> 200, links {css.group(1)} and {js.group(1)}")

for name, digest, content_type in [(css.group(1), css.group(2), "text/css"), (js.group(1), js.group(2), "javascript")]:
    status, headers, body = request("GET", f"/public/{name}")
    assert status == 200, status
    assert headers["Cache-Control"] == "public, max-age=31536000, immutable", headers["Cache-Control"]
    assert content_type in headers["Content-Type"], headers["Content-Type"]
    assert hashlib.sha256(body).hexdigest()[:8] == digest, "the name does not match the content"
    ok(f"GET /public/{name} -> 200, immutable, sha256 starts {digest}")
status, _, _ = request("GET", "/public/../server.py")
assert status == 404, status
ok("GET /public/../server.py -> 404")

# An idempotent POST is applied once per key.
def increment(key=None, body=b""):
    headers = {"Idempotency-Key": key} if key else {}
    status, headers, data = request("POST", "/actions/increment", body=body, headers=headers)
    return status, headers.get("Idempotent-Replayed"), json.loads(data)

assert increment("key-1") == (200, None, {"counter": 1, "idempotency_key": "key-1"})
assert increment("key-1") == (200, "true", {"counter": 1, "idempotency_key": "key-1"})
assert increment() == (200, None, {"counter": 2, "idempotency_key": None})
assert increment("key-1", b'{"other": 1}')[0] == 422
status, _, data = request("GET", "/_rhone/stats")
stats = json.loads(data)
expected = {"handled_posts": 2, "replayed_posts": 1, "counter": 2, "pid": server_pid, "artifact_digest": "sha256:smoke"}
assert {k: stats[k] for k in expected} == expected, stats
ok(f"POST /actions/increment: same key applied once; stats {stats}")

# /_vango/*: every path answered.
assert request("GET", "/_vango/live")[0] == 426
assert request("GET", "/_vango/nope")[0] == 404
ok("GET /_vango/live without upgrade -> 426, /_vango/nope -> 404")


# A tiny RFC 6455 client.
class WebSocket:
    def __init__(self, path, cookie=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        if cookie:
            lines.append(f"Cookie: {cookie}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            assert chunk, "closed during the handshake"
            head += chunk
        status_line, *header_lines = head.decode().split("\r\n")
        assert status_line.startswith("HTTP/1.1 101"), status_line
        self.headers = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in header_lines if l)}
        guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
        accept = base64.b64encode(hashlib.sha1((key + guid).encode()).digest()).decode()
        assert self.headers["sec-websocket-accept"] == accept, self.headers

    def send(self, opcode, payload):
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def recv_exact(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            assert chunk, "connection closed"
            data += chunk
        return data

    def recv(self):
        first, second = self.recv_exact(2)
        assert not second & 0x80, "server frames are not masked"
        n = second & 0x7F
        if n == 126:
            n = struct.unpack("!H", self.recv_exact(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self.recv_exact(8))[0]
        return first & 0x0F, self.recv_exact(n)

    def send_text(self, text):
        self.send(0x1, text.encode())

    def recv_json(self):
        opcode, payload = self.recv()
        assert opcode == 0x1, opcode
        return json.loads(payload)


ws = WebSocket("/_vango/live?path=/")
hello = ws.recv_json()
session = hello["session"]
assert hello["type"] == "hello" and not hello["resumed"], hello
assert ws.headers["set-cookie"].startswith(f"vango_session={session};"), ws.headers
ws.send_text("hi")
assert ws.recv_json() == {"session": session, "seq": 1, "echo": "hi"}
ws.send(0x9, b"are you there")
assert ws.recv() == (0xA, b"are you there")
ws.send(0x8, struct.pack("!H", 1000))
assert ws.recv() == (0x8, struct.pack("!H", 1000))
ok(f"WS /_vango/live: session {session}, echo seq 1, ping/pong, close")

ws = WebSocket(f"/_vango/live?path=/&session={session}")
hello = ws.recv_json()
assert hello["session"] == session and hello["resumed"], hello
ws.send_text("again")
assert ws.recv_json() == {"session": session, "seq": 2, "echo": "again"}
ok("WS reconnect with ?session= resumes the session (seq 2)")

live = WebSocket("/_vango/ws", cookie=f"vango_session={session}")
assert live.recv_json()["resumed"], "the cookie resumes the session"
ok("WS /_vango/ws with the session cookie resumes the session")

# SIGTERM: the open socket is closed with 1001 and the server exits.
os.kill(server_pid, signal.SIGTERM)
assert live.recv() == (0x8, struct.pack("!H", 1001) + b"server going away")
ok("SIGTERM closes live sockets with 1001")
EOF

deadline=$((SECONDS + 10))
while kill -0 "$server_pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then echo "FAIL: server still running 10 s after SIGTERM"; exit 1; fi
    sleep 0.05
done
status=0
wait "$server_pid" || status=$?
server_pid=""
grep -q "stopped" "$work/server.log" || { echo "FAIL: no 'stopped' line"; cat "$work/server.log"; exit 1; }
[ "$status" -eq 0 ] || { echo "FAIL: server exited with $status"; cat "$work/server.log"; exit 1; }
echo "ok   server exited 0 after SIGTERM"
echo "== server log"
cat "$work/server.log"
echo "== smoke test passed"

#!/usr/bin/env python3
"""The counter example's server, following Vango's runtime contract (standard library only).

Run from the artifact root (the build output): reads PORT (default 8080) and HOST (default
0.0.0.0), serves the page, the health check, fingerprinted assets from public/ (named in
manifest.json), an idempotent POST action, stats, and a WebSocket at /_vango/live whose
session survives reconnects. Logs one line per request to stdout; stops on SIGTERM/SIGINT.
"""

import base64
import hashlib
import html
import json
import mimetypes
import os
import re
import secrets
import signal
import socket
import struct
import sys
import threading
import time
from collections import OrderedDict
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parent
PUBLIC = ROOT / "public"
IMMUTABLE = "public, max-age=31536000, immutable"
SHORT = "public, max-age=60"
MAX_BODY = 64 * 1024
MAX_FRAME = 1024 * 1024
MAX_IDEMPOTENCY_KEYS = 10_000
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def log(message):
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}", flush=True)


class App:
    """The app's state: counters, idempotency records, live sessions and sockets."""

    def __init__(self, manifest):
        self.manifest = manifest  # source name -> fingerprinted name
        self.immutable = {name for source, name in manifest.items() if name != source}
        self.lock = threading.Lock()
        self.counter = 0
        self.handled_posts = 0  # POSTs whose effect was applied
        self.replayed_posts = 0  # POSTs answered from an idempotency record
        self.handled_webhooks = 0  # webhook deliveries processed
        self.responses = OrderedDict()  # Idempotency-Key -> (body sha256, answer)
        self.sessions = {}  # session id -> messages echoed so far
        self.sockets = set()

    def increment(self, key, body):
        """Applies one increment; a repeated key gets the first answer without applying again."""
        body_hash = hashlib.sha256(body).hexdigest()
        with self.lock:
            if key is not None and key in self.responses:
                first_hash, answer = self.responses[key]
                if first_hash != body_hash:
                    return 422, {"error": "Idempotency-Key reused with a different body"}, False
                self.replayed_posts += 1
                return 200, answer, True
            self.counter += 1
            self.handled_posts += 1
            answer = {"counter": self.counter, "idempotency_key": key}
            # One line per applied action: the output outlives the process (scale to zero).
            log(f"applied increment key={key} counter={self.counter}")
            if key is not None:
                self.responses[key] = (body_hash, answer)
                if len(self.responses) > MAX_IDEMPOTENCY_KEYS:
                    self.responses.popitem(last=False)
            return 200, answer, False

    def stats(self):
        with self.lock:
            return {
                "handled_posts": self.handled_posts,
                "replayed_posts": self.replayed_posts,
                "handled_webhooks": self.handled_webhooks,
                "counter": self.counter,
                "sessions": len(self.sessions),
                "pid": os.getpid(),
                "artifact_digest": os.environ.get("RHONE_ARTIFACT_DIGEST"),
                "allocation_id": os.environ.get("RHONE_ALLOCATION_ID"),
                # The secret Rhone hands the app (`rhone secrets set … STRIPE_KEY`), shown
                # only as a hash.
                "stripe_key_sha256": (
                    hashlib.sha256(os.environ["STRIPE_KEY"].encode()).hexdigest()
                    if "STRIPE_KEY" in os.environ
                    else None
                ),
            }

    def attach(self, requested):
        """The session for a socket: the requested one if known or well-formed, else a new one."""
        with self.lock:
            resumed = requested is not None and requested in self.sessions
            if requested is None or not SESSION_ID.match(requested):
                requested = secrets.token_urlsafe(12)
            self.sessions.setdefault(requested, 0)
            return requested, resumed

    def next_seq(self, session):
        with self.lock:
            self.sessions[session] += 1
            return self.sessions[session]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "counter-example"
    app: App  # set on the class by main()

    # --- plumbing -----------------------------------------------------------------------

    def log_message(self, format, *args):  # noqa: A002 (the base class's signature)
        pass  # one line per request is written by respond() instead

    def respond(self, status, body=b"", content_type="text/plain; charset=utf-8", headers=()):
        if isinstance(body, (dict, list)):
            body, content_type = json.dumps(body).encode(), "application/json"
        elif isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.log_request_line(status)

    def log_request_line(self, status):
        client = self.headers.get("X-Forwarded-For", self.client_address[0])
        log(f"{self.command} {self.path} {status} client={client}")

    # --- routes -------------------------------------------------------------------------

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path in ("/_vango/live", "/_vango/ws"):
            return self.live(url)
        if url.path.startswith("/_vango/"):
            return self.respond(404, {"error": "unknown Vango runtime path"})
        if url.path == "/":
            return self.page()
        if url.path == "/healthz":
            return self.respond(200, "ok\n", headers=[("Cache-Control", "no-store")])
        if url.path == "/_rhone/stats":
            return self.respond(200, self.app.stats(), headers=[("Cache-Control", "no-store")])
        if url.path.startswith("/public/"):
            return self.asset(url.path[len("/public/"):])
        self.respond(404, "not found\n")

    def do_POST(self):
        url = urlsplit(self.path)
        length = self.headers.get("Content-Length", "0" if "Transfer-Encoding" not in self.headers else "")
        if not length.isdigit():
            self.close_connection = True
            return self.respond(411, {"error": "a POST needs a Content-Length"})
        if int(length) > MAX_BODY:
            self.close_connection = True
            return self.respond(413, {"error": f"body over {MAX_BODY} bytes"})
        body = self.rfile.read(int(length))
        if url.path == "/actions/increment":
            key = self.headers.get("Idempotency-Key")
            status, answer, replayed = self.app.increment(key, body)
            headers = [("Cache-Control", "no-store")]
            if replayed:
                headers.append(("Idempotent-Replayed", "true"))
            return self.respond(status, answer, headers=headers)
        if url.path == "/webhooks/stripe":
            # A real app verifies the Stripe-Signature HMAC with its signing secret here.
            with self.app.lock:
                self.app.handled_webhooks += 1
            log(f"applied webhook /webhooks/stripe bytes={len(body)}")
            return self.respond(200, {"received": True})
        if url.path.startswith("/_vango/"):
            return self.respond(404, {"error": "unknown Vango runtime path"})
        self.respond(404, "not found\n")

    def page(self):
        css = self.app.manifest.get("app.css", "app.css")
        js = self.app.manifest.get("app.js", "app.js")
        count = self.app.stats()["counter"]
        body = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Counter</title>
<link rel="stylesheet" href="/public/{html.escape(css)}">
</head>
<body>
<h1>Counter</h1>
<p class="count" id="count">{count}</p>
<button id="increment">+1</button>
<p class="live" id="live">live: connecting…</p>
<script src="/public/{html.escape(js)}" defer></script>
</body>
</html>
"""
        self.respond(200, body, "text/html; charset=utf-8", [("Cache-Control", "no-cache")])

    def asset(self, name):
        path = (PUBLIC / name).resolve()
        if PUBLIC not in path.parents or not path.is_file():
            return self.respond(404, "not found\n")
        cache = IMMUTABLE if name in self.app.immutable else SHORT
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self.respond(200, path.read_bytes(), content_type, [("Cache-Control", cache)])

    # --- WebSocket (RFC 6455) -----------------------------------------------------------

    def live(self, url):
        key = self.headers.get("Sec-WebSocket-Key", "")
        upgrade = self.headers.get("Upgrade", "").lower() == "websocket"
        connection = "upgrade" in self.headers.get("Connection", "").lower()
        if not (upgrade and connection and key):
            return self.respond(426, "WebSocket upgrade required\n", headers=[("Upgrade", "websocket")])
        if self.headers.get("Sec-WebSocket-Version") != "13":
            return self.respond(426, "unsupported WebSocket version\n", headers=[("Sec-WebSocket-Version", "13")])

        cookie = SimpleCookie(self.headers.get("Cookie", ""))
        requested = parse_qs(url.query).get("session", [None])[0]
        if requested is None and "vango_session" in cookie:
            requested = cookie["vango_session"].value
        session, resumed = self.app.attach(requested)

        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.send_header("Set-Cookie", f"vango_session={session}; Path=/; HttpOnly; SameSite=Lax")
        self.end_headers()
        self.log_request_line(101)
        self.close_connection = True

        socket_ = LiveSocket(self.connection, self.rfile)
        self.app.sockets.add(socket_)
        try:
            hello = {"type": "hello", "session": session, "resumed": resumed, "pid": os.getpid()}
            socket_.send_text(json.dumps(hello))
            for opcode, payload in socket_.messages():
                if opcode == OP_TEXT:
                    echo = {"session": session, "seq": self.app.next_seq(session), "echo": payload.decode()}
                    socket_.send_text(json.dumps(echo))
                else:
                    socket_.send(OP_BINARY, payload)
        except (OSError, ConnectionError):
            pass
        finally:
            self.app.sockets.discard(socket_)
            log(f"live session={session} closed")


OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class ProtocolError(Exception):
    def __init__(self, code, reason):
        super().__init__(reason)
        self.code = code


class LiveSocket:
    """One server-side WebSocket: reads masked client frames, writes unmasked frames."""

    def __init__(self, sock, rfile):
        self.sock = sock
        self.rfile = rfile
        self.write_lock = threading.Lock()
        self.closed = False

    def send(self, opcode, payload=b""):
        header = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([n])
        elif n < 1 << 16:
            header += bytes([126]) + struct.pack("!H", n)
        else:
            header += bytes([127]) + struct.pack("!Q", n)
        with self.write_lock:
            if not self.closed:
                self.sock.sendall(header + payload)
                self.closed = opcode == OP_CLOSE

    def send_text(self, text):
        self.send(OP_TEXT, text.encode())

    def close(self, code, reason=""):
        try:
            self.send(OP_CLOSE, struct.pack("!H", code) + reason.encode()[:120])
        except OSError:
            pass

    def read_exact(self, n):
        data = self.rfile.read(n)
        if len(data) < n:
            raise ConnectionError("peer went away")
        return data

    def read_frame(self):
        first, second = self.read_exact(2)
        fin, opcode = bool(first & 0x80), first & 0x0F
        if first & 0x70:
            raise ProtocolError(1002, "reserved bits set")
        if not second & 0x80:
            raise ProtocolError(1002, "client frames must be masked")
        n = second & 0x7F
        if n == 126:
            n = struct.unpack("!H", self.read_exact(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self.read_exact(8))[0]
        if opcode >= 0x8 and (n > 125 or not fin):
            raise ProtocolError(1002, "bad control frame")
        if n > MAX_FRAME:
            raise ProtocolError(1009, "frame too big")
        mask = self.read_exact(4)
        data = self.read_exact(n)
        return fin, opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(data))

    def messages(self):
        """Yields (opcode, payload) per complete data message; answers ping and close itself."""
        opcode, parts = None, []
        try:
            while True:
                fin, op, payload = self.read_frame()
                if op == OP_PING:
                    self.send(OP_PONG, payload)
                elif op == OP_PONG:
                    continue
                elif op == OP_CLOSE:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1000
                    self.close(code if code in (1000, 1001) else 1000)
                    return
                elif op in (OP_TEXT, OP_BINARY) and opcode is None:
                    opcode, parts = op, [payload]
                elif op == OP_CONT and opcode is not None:
                    parts.append(payload)
                    if sum(map(len, parts)) > MAX_FRAME:
                        raise ProtocolError(1009, "message too big")
                else:
                    raise ProtocolError(1002, "unexpected frame")
                if op in (OP_TEXT, OP_BINARY, OP_CONT) and fin:
                    message = b"".join(parts)
                    if opcode == OP_TEXT:
                        try:
                            message.decode("utf-8")
                        except UnicodeDecodeError:
                            raise ProtocolError(1007, "text is not UTF-8") from None
                    yield opcode, message
                    opcode, parts = None, []
        except ProtocolError as err:
            self.close(err.code, str(err))


def main():
    try:
        manifest = json.loads((ROOT / "manifest.json").read_text())
    except (OSError, ValueError) as err:
        sys.exit(f"cannot read {ROOT / 'manifest.json'} (run from the build output): {err}")
    Handler.app = app = App(manifest)
    host, port = os.environ.get("HOST", "0.0.0.0"), int(os.environ.get("PORT", "8080"))
    # A listen backlog like a production server's (socketserver's default is 5): a woken
    # app meets every request held for it at once.
    ThreadingHTTPServer.request_queue_size = 1024
    server = ThreadingHTTPServer((host, port), Handler)
    # Requests in flight finish before the process exits (server_close joins them): a drain
    # never cuts one. Live sockets are closed first, below.
    server.daemon_threads = False

    def stop(signum, _frame):
        log(f"received {signal.Signals(signum).name}, stopping")
        # shutdown() waits for serve_forever() to return, so it cannot run on its thread.
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(f"listening on {host}:{port} pid={os.getpid()} artifact={os.environ.get('RHONE_ARTIFACT_DIGEST')}")
    server.serve_forever()
    for live in list(app.sockets):
        live.close(1001, "server going away")
        try:
            live.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    server.server_close()
    log("stopped")


if __name__ == "__main__":
    main()

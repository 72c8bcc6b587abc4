"""Small HTTP servers on loopback that stand in for the world around the Imagine server.

`serve_files` is an image host; `FaultProxy` sits in front of a real Imagine
server and misbehaves on cue (a 429, a lost answer), so client behaviour under
faults is tested against the real service rather than a mock of it;
`Http2CutProxy` does the same for gRPC at the TCP level (a connection lost
after the server acted, before its answer arrived), and `TcpCut` relays TCP
to a real server (PostgreSQL, Redis) and can cut it off.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx


class _Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_args: Any) -> None:
        pass

    def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def _serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextmanager
def serve_files(files: dict[str, tuple[str, bytes]]) -> Iterator[str]:
    """Serve `{path: (content type, bytes)}`; yields the base URL."""

    class Handler(_Quiet):
        def do_GET(self) -> None:
            found = files.get(self.path)
            if found is None:
                self.reply(404, b"not found")
                return
            self.reply(200, found[1], {"Content-Type": found[0]})

    with _serving(Handler) as url:
        yield url


@dataclass(frozen=True)
class Reply:
    """Answer this instead of the server; with `forward`, only after the server handled it."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    forward: bool = False
    delay: float = 0.0  # seconds of silence first (longer than a client's timeout: a hang)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    status: int = 0


Rule = Callable[[Seen, int], Reply | None]  # (request, its 0-based number) -> fault or None


class FaultProxy:
    """Forwards to `upstream` unless `rule` says otherwise; records what it saw."""

    def __init__(self, upstream: str, rule: Rule) -> None:
        self.upstream = upstream
        self.rule = rule
        self.seen: list[Seen] = []
        self._lock = threading.Lock()

    @contextmanager
    def running(self) -> Iterator[str]:
        proxy = self
        forwarder = httpx.Client(base_url=self.upstream, timeout=30)

        class Handler(_Quiet):
            def do_GET(self) -> None:
                self.handle_any()

            def do_POST(self) -> None:
                self.handle_any()

            def do_PUT(self) -> None:
                self.handle_any()

            def do_DELETE(self) -> None:
                self.handle_any()

            def handle_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = Seen(self.command, self.path, dict(self.headers.items()))
                with proxy._lock:
                    number = len(proxy.seen)
                    proxy.seen.append(seen)
                fault = proxy.rule(seen, number)
                if fault is not None and fault.delay:
                    time.sleep(fault.delay)
                if fault is not None and not fault.forward:
                    seen.status = fault.status
                    self.reply(fault.status, fault.body, fault.headers)
                    return
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")
                }
                answer = forwarder.request(self.command, self.path, content=body, headers=headers)
                if fault is not None:
                    seen.status = fault.status
                    self.reply(fault.status, fault.body, fault.headers)
                    return
                seen.status = answer.status_code
                kept = {
                    k: v
                    for k, v in answer.headers.items()
                    if k.lower() not in ("content-length", "transfer-encoding", "connection")
                }
                self.reply(answer.status_code, answer.content, kept)

        try:
            with _serving(Handler) as url:
                yield url
        finally:
            forwarder.close()


def envelope(status: int, error: str, message: str) -> bytes:
    """An error body exactly as the contract writes it."""
    return json.dumps({"code": status, "message": message, "error": error}).encode()


def _listening() -> tuple[socket.socket, int]:
    """A loopback socket accepting connections, polled (so its thread can stop)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(0.1)
    return sock, int(sock.getsockname()[1])


class CountingListener:
    """A real loopback socket that counts connection attempts."""

    def __init__(self) -> None:
        self.sock, self.port = _listening()
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (the slow answer's caller) is expected here."""


class ModerationStub:
    """OpenAI's `POST /v1/moderations` on loopback, from its documented protocol.

    Flags any input whose text contains `FLAGGED_WORD` (category `violence`),
    records every request, and on cue answers slowly (`slow = True`) or is
    down: `down()` closes the listening socket (connections are refused) and
    `up()` opens it again on the same port.
    """

    FLAGGED_WORD = "harmful"

    def __init__(self, key: str, delay: float = 3.0) -> None:
        self.key = key
        self.delay = delay
        self.slow = False
        self.requests: list[dict[str, Any]] = []
        self.port = 0
        self._httpd: _QuietServer | None = None
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/moderations"

    @property
    def is_up(self) -> bool:
        return self._httpd is not None

    def up(self) -> None:
        stub = self

        class Handler(_Quiet):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != "/v1/moderations":
                    self.reply(404, b"{}")
                    return
                if self.headers.get("Authorization") != f"Bearer {stub.key}":
                    self.reply(401, b'{"error": {"message": "Incorrect API key provided"}}')
                    return
                request = json.loads(body)
                stub.requests.append(request)
                if stub.slow:
                    threading.Event().wait(stub.delay)
                self.reply(200, json.dumps(stub.verdict(request)).encode())

        httpd = _QuietServer(("127.0.0.1", self.port), Handler)
        httpd.daemon_threads = True
        self.port = int(httpd.server_address[1])
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        self._httpd = httpd

    def down(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def verdict(self, request: dict[str, Any]) -> dict[str, Any]:
        given = request["input"]
        parts = given if isinstance(given, list) else [{"type": "text", "text": given}]
        text = " ".join(part.get("text", "") for part in parts if part["type"] == "text")
        flagged = self.FLAGGED_WORD in text.lower()
        return {
            "id": f"modr-{len(self.requests)}",
            "model": request.get("model", "omni-moderation-latest"),
            "results": [
                {
                    "flagged": flagged,
                    "categories": {"violence": flagged, "sexual": False},
                    "category_scores": {"violence": 0.93 if flagged else 0.01, "sexual": 0.002},
                }
            ],
        }


_HTTP2_FRAME_HEADER = 9
_HTTP2_HEADERS = 0x1


class Http2CutProxy:
    """A TCP proxy on loopback in front of a gRPC (HTTP/2) server.

    It counts the connections clients open through it, and when `cut_next` is
    set it closes the next connection at the moment the server begins an answer
    (its first HEADERS frame on a stream), which it never passes on: the server
    has done the work, the client sees a connection lost before any answer.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.sock, self.port = _listening()
        self.connections = 0
        self.cuts = 0
        self.cut_next = threading.Event()
        self._stop = threading.Event()
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            server = socket.create_connection(("127.0.0.1", self.target_port))
            self._open += [client, server]
            threading.Thread(target=self._copy, args=(client, server), daemon=True).start()
            threading.Thread(target=self._answers, args=(server, client), daemon=True).start()

    @staticmethod
    def _copy(source: socket.socket, target: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
        except OSError:
            pass
        Http2CutProxy._close(source, target)

    def _answers(self, server: socket.socket, client: socket.socket) -> None:
        """Server to client, frame by frame, so a cut falls before an answer."""
        pending = b""
        try:
            while chunk := server.recv(65536):
                pending += chunk
                while len(pending) >= _HTTP2_FRAME_HEADER:
                    length = int.from_bytes(pending[:3], "big")
                    end = _HTTP2_FRAME_HEADER + length
                    if len(pending) < end:
                        break
                    stream = int.from_bytes(pending[5:9], "big") & 0x7FFFFFFF
                    if pending[3] == _HTTP2_HEADERS and stream and self.cut_next.is_set():
                        self.cut_next.clear()
                        self.cuts += 1
                        self._close(server, client)
                        return
                    client.sendall(pending[:end])
                    pending = pending[end:]
        except OSError:
            pass
        self._close(server, client)

    @staticmethod
    def _close(*sockets: socket.socket) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        self._close(*self._open)


class TcpCut:
    """A loopback TCP relay to `127.0.0.1:upstream_port` that a test cuts (every
    open connection dropped, new ones closed at once: the server is gone) and
    restores (the server is back, at the same address)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self._up = threading.Event()
        self._up.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def cut(self) -> None:
        self._up.clear()
        with self._lock:
            doomed, self._open = self._open, set()
        for conn in doomed:
            _drop(conn)

    def restore(self) -> None:
        self._up.set()

    def close(self) -> None:
        self.cut()
        self._closed.set()
        self._thread.join()
        self.sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            if not self._up.is_set():
                _drop(conn)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                _drop(conn)
                continue
            with self._lock:
                self._open.update((conn, upstream))
            for source, sink in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        for conn in (source, sink):
            _drop(conn)
            with self._lock:
                self._open.discard(conn)


def _drop(conn: socket.socket) -> None:
    """Reset the connection (RST, not a polite FIN) and wake whoever reads it."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()

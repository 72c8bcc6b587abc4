"""Image fetching against real loopback servers, and the SSRF policy.

The SSRF tests point URLs at a "trap": real listening sockets that count
accepted connections. A refusal only counts if the trap saw zero connections.
"""

from __future__ import annotations

import base64
import gzip
import io
import ipaddress
import random
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from imagine.failures import FailureReason, TaskFailure
from imagine.media.fetch import ImageFetcher
from imagine.media.netguard import (
    IPAddress,
    Resolver,
    UnsafeURL,
    check_url_syntax,
    is_forbidden_address,
)

# -- test images -----------------------------------------------------------


def _encode(fmt: str, size: tuple[int, int] = (8, 6), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (200, 30, 90)).save(buf, format=fmt)
    return buf.getvalue()


IMAGES: dict[str, bytes] = {
    "png": _encode("PNG"),
    "jpeg": _encode("JPEG"),
    "webp": _encode("WEBP"),
    "gif": _encode("GIF", mode="P"),
}
MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "gif": "image/gif"}


def _png_with_size(width: int, height: int) -> bytes:
    """A valid small PNG whose IHDR claims another size (CRC fixed up)."""
    data = bytearray(IMAGES["png"])
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _noise_png() -> bytes:
    img = Image.frombytes("RGB", (64, 64), random.Random(7).randbytes(64 * 64 * 3))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


BOMB_PNG = _png_with_size(8000, 8000)  # 64 Mpx > default 50 Mpx, below Pillow's own warning
TRUNCATED_PNG = _noise_png()[:-2000]
GZIP_BOMB = gzip.compress(b"\0" * (20 * 1024 * 1024), compresslevel=9)


# -- a real HTTP server --------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str) -> None:
        super().__init__((host, 0), _Handler)
        self.requests: list[tuple[str, str]] = []  # (path, Host header)
        self.streams: dict[str, StreamStats] = {}
        self.lock = threading.Lock()


@dataclass
class StreamStats:
    written: int = 0
    done: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        merged = {"Content-Length": str(len(body)), "Connection": "close"}
        merged.update(headers or {})
        for name, value in merged.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.requests.append((self.path, self.headers.get("Host", "")))
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        segments = path.strip("/").split("/")
        octet = {"Content-Type": "application/octet-stream"}
        if segments[0] == "img":
            self._send(200, IMAGES[segments[1]], {"Content-Type": "text/plain"})
        elif path == "/html":
            self._send(
                200, b"<html><body>not an image</body></html>", {"Content-Type": "image/png"}
            )
        elif segments[0] == "redirect":
            n = int(segments[1])
            if n == 0:
                self._send(200, IMAGES["png"], octet)
            else:
                status = (301, 302, 303, 307, 308)[n % 5]
                self._send(status, headers={"Location": f"/redirect/{n - 1}"})
        elif path == "/to":
            self._send(302, headers={"Location": query["loc"][0]})
        elif segments[0] == "status":
            self._send(int(segments[1]), b"nope")
        elif path == "/slow-headers":
            time.sleep(3)
            self._send(200, IMAGES["png"])
        elif path == "/dribble":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            deadline = time.monotonic() + 5
            try:
                while time.monotonic() < deadline:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass
        elif segments[0] == "delay":
            time.sleep(int(segments[1]) / 1000)
            self._send(200, IMAGES[segments[2]])
        elif segments[0] == "infinite":
            self._infinite(chunked=segments[1] == "chunked")
        elif path == "/declared-big":
            self.send_response(200)
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
            self.wfile.write(IMAGES["png"])
        elif path == "/gzip":
            body = gzip.compress(IMAGES["png"])
            self._send(200, body, {"Content-Encoding": "gzip"})
        elif path == "/gzip-bomb":
            self._send(200, GZIP_BOMB, {"Content-Encoding": "gzip"})
        elif path == "/brotli":
            self._send(200, b"\x0b\x02\x80", {"Content-Encoding": "br"})
        elif path == "/bomb":
            self._send(200, BOMB_PNG, octet)
        elif path == "/truncated":
            self._send(200, TRUNCATED_PNG, octet)
        else:
            self._send(404, b"no such thing")

    def _infinite(self, *, chunked: bool) -> None:
        """Send a body that never ends (no Content-Length) and record how much went out."""
        stats = StreamStats()
        with self.server.lock:
            self.server.streams[self.path] = stats
        self.send_response(200)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
        self.end_headers()
        block = IMAGES["png"][:64] + b"\0" * (65536 - 64)
        try:
            while stats.written < 1024**3:
                if chunked:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
                else:
                    self.wfile.write(block)
                stats.written += len(block)
        except OSError:
            pass
        finally:
            stats.done.set()
            self.close_connection = True


@dataclass
class HTTPServerHandle:
    server: _Server
    thread: threading.Thread
    host: str

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _start(host: str, tls: ssl.SSLContext | None = None) -> HTTPServerHandle:
    server = _Server(host)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    return HTTPServerHandle(server, thread, host)


@pytest.fixture(scope="module")
def web() -> Iterator[HTTPServerHandle]:
    """Image server on 127.0.0.1 (used with allow_private=True)."""
    handle = _start("127.0.0.1")
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def web2() -> Iterator[HTTPServerHandle]:
    """Image server on 127.0.0.2, the one address the SSRF tests explicitly allow."""
    handle = _start("127.0.0.2")
    yield handle
    handle.stop()


ALLOW_WEB2 = [ipaddress.ip_network("127.0.0.2/32")]


# -- the trap: real listeners that count connections ---------------------------


class Trap:
    """Listening sockets on 127.0.0.1 and ::1 (same port if possible) counting accepts."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        v4 = socket.create_server(("127.0.0.1", 0))
        self.port = int(v4.getsockname()[1])
        self._socks.append(v4)
        self.has_v6 = True
        try:
            v6 = socket.create_server(("::1", self.port), family=socket.AF_INET6)
        except OSError:
            self.has_v6 = False
        else:
            self._socks.append(v6)
        self._threads = [
            threading.Thread(target=self._run, args=(s,), daemon=True) for s in self._socks
        ]
        for t in self._threads:
            t.start()

    def _run(self, sock: socket.socket) -> None:
        sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.count += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2)
        for s in self._socks:
            s.close()


@pytest.fixture
def trap() -> Iterator[Trap]:
    t = Trap()
    yield t
    t.close()


def fake_resolver(mapping: dict[str, list[str]], calls: list[str] | None = None) -> Resolver:
    """A resolver answering from `mapping` (and recording lookups in `calls`)."""

    async def resolve(host: str, port: int) -> list[IPAddress]:
        if calls is not None:
            calls.append(host)
        if host not in mapping:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ipaddress.ip_address(a) for a in mapping[host]]

    return resolve


async def _fail(fetcher: ImageFetcher, url: str) -> TaskFailure:
    with pytest.raises(TaskFailure) as info:
        await fetcher.fetch(url)
    return info.value


# -- address policy -------------------------------------------------------------

FORBIDDEN = [
    "127.0.0.1",
    "127.255.255.254",
    "0.0.0.0",
    "0.1.2.3",
    "10.1.2.3",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "100.64.0.1",
    "100.127.255.255",
    "169.254.169.254",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.1",
    "198.18.0.1",
    "::1",
    "::",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "fe80::1%eth0",
    "fec0::1",
    "ff02::1",
    "2001:db8::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::127.0.0.1",  # IPv4-compatible
    "::8.8.8.8",  # IPv4-compatible is deprecated: refused whatever it embeds
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b:1::1",  # local-use NAT64
    "64:ff9b:1:808:8:800::",  # local-use NAT64, even of a public IPv4 (8.8.8.8)
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    # IPv4-translated (SIIT): refused whatever it embeds
    "::ffff:0:7f00:1",
    "::ffff:0:a9fe:a9fe",
    "::ffff:0:808:808",
    # the IANA IPv6 special-purpose registry
    "100::1",  # discard-only
    "100:0:0:1::1",  # dummy prefix
    "2001:1::1",  # PCP anycast: the instance nearest the server
    "2001:1::2",  # TURN anycast
    "2001:2::1",  # benchmarking
    "2001:3::1",  # AMT
    "2001:4:112::1",  # AS112-v6
    "2001:10::1",  # deprecated ORCHID
    "2001:20::1",  # ORCHIDv2
    "2001:30::1",  # drone remote ID tags
    "2001:1ff:ffff::1",  # the end of the IETF protocol assignments
    "3fff::1",  # documentation
    "3fff:fff:ffff::1",
    "5f00::1",  # SRv6 SIDs
    "5f00:ffff::1",
    "fdff:ffff::1",  # unique local
    "febf::1",  # link-local, the end of fe80::/10
    "ff0e::1",  # global-scope multicast
    # reserved space outside 2000::/3, not (yet) in any registry
    "::1:0:0:0",
    "1::1",
    "4000::1",
    "e000::1",
]
ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "172.32.0.1",
    "100.128.0.1",
    "2606:4700::1111",
    "2001:4860:4860::8888",
    "::ffff:8.8.8.8",
    "2002:808:808::",
    "64:ff9b::808:808",
    "2001:200::1",  # just past the IETF protocol assignments (WIDE, Japan)
    "2620:4f:8000::1",  # AS112 direct delegation: globally reachable
    "3fff:1000::1",  # just past the documentation block
    "2a00:1450:4001::1",
]


@pytest.mark.parametrize("address", FORBIDDEN)
def test_forbidden_addresses(address: str) -> None:
    assert is_forbidden_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_allowed(address: str) -> None:
    assert not is_forbidden_address(ipaddress.ip_address(address))


REFUSED_ALWAYS = [
    "ftp://example.com/a.png",
    "file:///etc/passwd",
    "gopher://example.com/",
    "http:///a.png",
    "http://user:pass@example.com/a.png",
    "http://user@example.com/a.png",
    "http://example.com:0/",
    "http://example.com:65536/",
    "http://example.com:+80/",
    "http://example.com:/",
    "http://exa mple.com/",
    "http://example.com/\ta.png",
    "http://example.com\\@evil.test/",
    "http://2130706433/",
    "http://0x7f.1/",
    "http://017700000001/",
    "http://0177.0.0.1/",
    "http://127.1/",
    "http://example.123/",
    "http://[::1/",
    "http://[fe80::1%25eth0]/",
    "http://exa%6dple.com/",
    "http://-bad-.com/",
]
REFUSED_PUBLIC_ONLY = [
    "http://127.0.0.1/",
    "http://localhost/",
    "http://LocalHost./a",
    "http://foo.localhost/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://METADATA.GOOGLE.INTERNAL./",
    "http://10.0.0.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://0.0.0.0/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[64:ff9b::7f00:1]/",
]
ACCEPTED = [
    "http://example.com/a.png",
    "https://Example.COM:8443/a.png?x=1&y=2#frag",
    "https://example.com./a.png",
    "https://8.8.8.8/a.png",
    "https://[2606:4700::1111]/a.png",
    "https://bücher.example/a.png",
]


@pytest.mark.parametrize("url", REFUSED_ALWAYS)
@pytest.mark.parametrize("allow_private", [False, True])
def test_url_syntax_refused(url: str, allow_private: bool) -> None:
    with pytest.raises(UnsafeURL):
        check_url_syntax(url, allow_private=allow_private)


@pytest.mark.parametrize("url", REFUSED_PUBLIC_ONLY)
def test_url_internal_targets_refused_unless_private_allowed(url: str) -> None:
    with pytest.raises(UnsafeURL):
        check_url_syntax(url, allow_private=False)
    check_url_syntax(url, allow_private=True)


@pytest.mark.parametrize("url", ACCEPTED)
def test_url_syntax_accepted(url: str) -> None:
    check_url_syntax(url, allow_private=False)


# -- fetching real images (allow_private=True) ----------------------------------


@pytest.mark.parametrize("kind", sorted(IMAGES))
async def test_fetch_each_type(web: HTTPServerHandle, kind: str) -> None:
    async with ImageFetcher(allow_private=True, timeout=5) as fetcher:
        image = await fetcher.fetch(web.url(f"/img/{kind}"))
    assert image.mime_type == MIME[kind]  # from magic bytes, server said text/plain
    assert (image.width, image.height) == (8, 6)
    assert image.data == IMAGES[kind]


@pytest.mark.alone
async def test_fetch_all_concurrent_and_ordered(web: HTTPServerHandle) -> None:
    kinds = ["gif", "png", "webp", "jpeg"]
    async with ImageFetcher(allow_private=True, timeout=5) as fetcher:
        started = time.monotonic()
        images = await fetcher.fetch_all([web.url(f"/delay/300/{k}") for k in kinds])
        elapsed = time.monotonic() - started
    assert [i.mime_type for i in images] == [MIME[k] for k in kinds]
    assert elapsed < 0.9  # 4 x 300 ms sequentially would be 1.2 s


async def test_fetch_all_fails_if_one_fails(web: HTTPServerHandle) -> None:
    async with ImageFetcher(allow_private=True, timeout=5) as fetcher:
        with pytest.raises(TaskFailure) as info:
            await fetcher.fetch_all([web.url("/img/png"), web.url("/html")])
    assert info.value.reason is FailureReason.FILE_TYPE


async def test_html_is_not_an_image(web: HTTPServerHandle) -> None:
    async with ImageFetcher(allow_private=True, timeout=5) as fetcher:
        failure = await _fail(fetcher, web.url("/html"))
    assert failure.reason is FailureReason.FILE_TYPE
    assert not failure.retryable


@pytest.mark.parametrize("mode", ["chunked", "close"])
async def test_endless_body_is_cut_off(web: HTTPServerHandle, mode: str) -> None:
    path = f"/infinite/{mode}"
    async with ImageFetcher(allow_private=True, timeout=5, max_bytes=256 * 1024) as fetcher:
        failure = await _fail(fetcher, web.url(path))
    assert failure.reason is FailureReason.FILE_TYPE
    assert "larger than" in failure.detail
    stats = web.server.streams[path]
    assert stats.done.wait(3), "server kept sending: the download was not stopped"
    assert stats.written < 64 * 1024 * 1024


async def test_declared_length_too_big_refused_early(web: HTTPServerHandle) -> None:
    async with ImageFetcher(allow_private=True, timeout=5, max_bytes=1024 * 1024) as fetcher:
        failure = await _fail(fetcher, web.url("/declared-big"))
    assert failure.reason is FailureReason.FILE_TYPE
    assert "Content-Length" in failure.detail


async def test_gzip_encoded_body_is_decoded(web: HTTPServerHandle) -> None:
    async with ImageFetcher(allow_private=True, timeout=5) as fetcher:
        image = await fetcher.fetch(web.url("/gzip"))
    assert image.data == IMAGES["png"]


async def test_gzip_bomb_hits_byte_cap(web: HTTPServerHandle) -> None:
    assert len(GZIP_BOMB) < 1024 * 1024
    async with ImageFetcher(allow_private=True, timeout=5, max_bytes=1024 * 1024) as fetcher:
        failure = await _fail(fetcher, web.url("/gzip-bomb"))
    assert failure.reason is FailureReason.FILE_TYPE
    assert "larger than" in failure.detail


async def test_unknown_content_encoding_refused(web: HTTPServerHandle) -> None:
    async with ImageFetcher(allow_private=True, timeout=5) as fetcher:
        failure = await _fail(fetcher, web.url("/brotli"))
    assert failure.reason is FailureReason.NETWORK
    assert not failure.retryable


async def test_three_redirects_followed(web: HTTPServerHandle) -> None:
    async with ImageFetcher(allow_private=True, timeout=5, max_redirects=3) as fetcher:
        image = await fetcher.fetch(web.url("/redirect/3"))
    assert image.mime_type == "image/png"


async def test_four_redirects_refused(web: HTTPServerHandle) -> None:
    async with ImageFetcher(allow_private=True, timeout=5, max_redirects=3) as fetcher:
        failure = await _fail(fetcher, web.url("/redirect/4"))
    assert failure.reason is FailureReason.NETWORK
    assert not failure.retryable
    assert "redirects" in failure.detail
    paths = [p for p, _ in web.server.requests]
    assert "/redirect/0" not in paths[paths.index("/redirect/4") :]  # 5th request never made


@pytest.mark.alone
async def test_slow_headers_time_out(web: HTTPServerHandle) -> None:
    async with ImageFetcher(allow_private=True, timeout=0.5) as fetcher:
        started = time.monotonic()
        failure = await _fail(fetcher, web.url("/slow-headers"))
    assert time.monotonic() - started < 2
    assert failure.reason is FailureReason.NETWORK
    assert failure.retryable


@pytest.mark.alone
async def test_dribbling_body_hits_total_deadline(web: HTTPServerHandle) -> None:
    """A byte every 50 ms never trips a per-read timeout; the total deadline must."""
    async with ImageFetcher(allow_private=True, timeout=0.6) as fetcher:
        started = time.monotonic()
        failure = await _fail(fetcher, web.url("/dribble"))
    assert time.monotonic() - started < 2
    assert failure.reason is FailureReason.NETWORK
    assert failure.retryable


@pytest.mark.parametrize(("status", "retryable"), [(404, False), (403, False), (503, True)])
async def test_http_errors(web: HTTPServerHandle, status: int, retryable: bool) -> None:
    async with ImageFetcher(allow_private=True, timeout=5) as fetcher:
        failure = await _fail(fetcher, web.url(f"/status/{status}"))
    assert failure.reason is FailureReason.NETWORK
    assert failure.retryable is retryable
    assert str(status) in failure.detail


async def test_connection_refused_is_retryable() -> None:
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    async with ImageFetcher(allow_private=True, timeout=5) as fetcher:
        failure = await _fail(fetcher, f"http://127.0.0.1:{port}/a.png")
    assert failure.reason is FailureReason.NETWORK
    assert failure.retryable


async def test_decompression_bomb_refused_before_decoding(web: HTTPServerHandle) -> None:
    async with ImageFetcher(allow_private=True, timeout=5) as fetcher:
        failure = await _fail(fetcher, web.url("/bomb"))
    assert failure.reason is FailureReason.FILE_TYPE
    assert "8000x8000" in failure.detail


async def test_max_pixels_setting(web: HTTPServerHandle) -> None:
    async with ImageFetcher(allow_private=True, timeout=5, max_pixels=47) as fetcher:
        failure = await _fail(fetcher, web.url("/img/webp"))
    assert failure.reason is FailureReason.FILE_TYPE


async def test_truncated_image_refused(web: HTTPServerHandle) -> None:
    async with ImageFetcher(allow_private=True, timeout=5) as fetcher:
        failure = await _fail(fetcher, web.url("/truncated"))
    assert failure.reason is FailureReason.FILE_TYPE
    assert "does not decode" in failure.detail


# -- data: URLs ---------------------------------------------------------------


def _data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


@pytest.mark.parametrize("kind", sorted(IMAGES))
async def test_data_url_ok(kind: str) -> None:
    async with ImageFetcher() as fetcher:
        image = await fetcher.fetch(_data_url(IMAGES[kind]))
    assert image.mime_type == MIME[kind]
    assert image.data == IMAGES[kind]


@pytest.mark.parametrize(
    "url",
    [
        "data:image/png,%89PNG",  # not base64
        "data:image/png;base64",  # no comma
        "data:image/png;base64,!!!notbase64",
        "data:image/png;base64,iVBORw0KGgo= AAAA",  # whitespace is not strict base64
        _data_url(b"hello, world"),  # decodes, but not an image
        _data_url(IMAGES["png"], media="text/plain"),
        _data_url(BOMB_PNG),
    ],
)
async def test_data_url_bad(url: str) -> None:
    async with ImageFetcher() as fetcher:
        failure = await _fail(fetcher, url)
    assert failure.reason is FailureReason.FILE_TYPE
    assert not failure.retryable


async def test_data_url_too_large() -> None:
    async with ImageFetcher(max_bytes=len(IMAGES["png"]) - 1) as fetcher:
        failure = await _fail(fetcher, _data_url(IMAGES["png"]))
    assert failure.reason is FailureReason.FILE_TYPE
    assert "larger than" in failure.detail


# -- SSRF (allow_private=False) ---------------------------------------------------


async def test_trap_counts_real_connections(trap: Trap) -> None:
    """Control: the trap does see a connection when one is made."""
    async with ImageFetcher(allow_private=True, timeout=2) as fetcher:
        await _fail(fetcher, f"http://127.0.0.1:{trap.port}/")
    assert trap.count == 1


@pytest.mark.alone
@pytest.mark.parametrize(
    "template",
    [
        "http://127.0.0.1:{port}/a.png",
        "http://localhost:{port}/a.png",
        "http://LOCALHOST.:{port}/a.png",
        "http://[::1]:{port}/a.png",
        "http://[::ffff:127.0.0.1]:{port}/a.png",
        "http://0.0.0.0:{port}/a.png",
        "http://2130706433:{port}/a.png",
        "http://0x7f.1:{port}/a.png",
        "http://10.0.0.1:{port}/a.png",
        "http://169.254.169.254:{port}/latest/meta-data/",
        "http://metadata.google.internal:{port}/computeMetadata/v1/",
        "https://127.0.0.1:{port}/a.png",
    ],
)
async def test_internal_urls_refused_without_connecting(trap: Trap, template: str) -> None:
    calls: list[str] = []
    resolver = fake_resolver({"localhost": ["127.0.0.1", "::1"]}, calls)
    async with ImageFetcher(timeout=2, resolver=resolver) as fetcher:
        started = time.monotonic()
        failure = await _fail(fetcher, template.format(port=trap.port))
    assert failure.reason is FailureReason.NETWORK
    assert not failure.retryable
    assert time.monotonic() - started < 1  # refused, not a connect timeout
    assert calls == []  # refused before any lookup
    assert trap.count == 0


async def test_name_resolving_to_loopback_refused(trap: Trap) -> None:
    calls: list[str] = []
    resolver = fake_resolver({"images.example.com": ["127.0.0.1"]}, calls)
    async with ImageFetcher(timeout=2, resolver=resolver) as fetcher:
        failure = await _fail(fetcher, f"http://images.example.com:{trap.port}/a.png")
    assert failure.reason is FailureReason.NETWORK
    assert not failure.retryable
    assert "127.0.0.1" in failure.detail
    assert calls == ["images.example.com"]
    assert trap.count == 0


async def test_any_private_answer_refuses_the_name(trap: Trap) -> None:
    resolver = fake_resolver({"mixed.example.com": ["93.184.216.34", "127.0.0.1"]})
    async with ImageFetcher(timeout=2, resolver=resolver) as fetcher:
        failure = await _fail(fetcher, f"http://mixed.example.com:{trap.port}/a.png")
    assert failure.reason is FailureReason.NETWORK
    assert not failure.retryable
    assert "127.0.0.1" in failure.detail
    assert trap.count == 0


async def test_unknown_name_is_not_retryable() -> None:
    async with ImageFetcher(timeout=2, resolver=fake_resolver({})) as fetcher:
        failure = await _fail(fetcher, "http://nothing.example.com/a.png")
    assert failure.reason is FailureReason.NETWORK
    assert not failure.retryable


async def test_connects_to_checked_address_with_original_host(
    web2: HTTPServerHandle, trap: Trap
) -> None:
    """DNS rebinding: the second answer (loopback) is never asked for or used."""
    calls: list[str] = []
    answers = iter([["127.0.0.2"], ["127.0.0.1"], ["127.0.0.1"]])

    async def rebinding(host: str, port: int) -> list[IPAddress]:
        calls.append(host)
        return [ipaddress.ip_address(a) for a in next(answers)]

    async with ImageFetcher(timeout=5, resolver=rebinding, allowed_networks=ALLOW_WEB2) as fetcher:
        image = await fetcher.fetch(f"http://img.test:{web2.port}/img/png?host-check=1")
    assert image.mime_type == "image/png"
    assert calls == ["img.test"]
    assert ("/img/png?host-check=1", f"img.test:{web2.port}") in web2.server.requests
    assert trap.count == 0


@pytest.mark.parametrize(
    "location",
    [
        "http://127.0.0.1:{trap}/a.png",
        "http://rebind.test:{trap}/a.png",
        "http://localhost:{trap}/a.png",
        "http://[::1]:{trap}/a.png",
        "http://2130706433:{trap}/a.png",
        "file:///etc/passwd",
        "data:image/png;base64,iVBORw0KGgo=",
    ],
)
async def test_redirect_to_internal_refused(
    web2: HTTPServerHandle, trap: Trap, location: str
) -> None:
    resolver = fake_resolver({"rebind.test": ["127.0.0.1"]})
    loc = location.format(trap=trap.port)
    first = web2.url(f"/to?loc={loc}")
    async with ImageFetcher(timeout=2, resolver=resolver, allowed_networks=ALLOW_WEB2) as fetcher:
        failure = await _fail(fetcher, first)
    assert failure.reason is FailureReason.NETWORK
    assert not failure.retryable
    assert any(p.startswith("/to?") for p, _ in web2.server.requests)  # first hop was real
    assert trap.count == 0


async def test_allowed_network_still_follows_good_redirects(web2: HTTPServerHandle) -> None:
    async with ImageFetcher(timeout=5, allowed_networks=ALLOW_WEB2) as fetcher:
        image = await fetcher.fetch(web2.url("/redirect/2"))
    assert image.mime_type == "image/png"


# -- HTTPS: SNI and certificate checked against the name, not the IP -------------


@dataclass
class TLSServer:
    handle: HTTPServerHandle
    client_context: ssl.SSLContext
    server_names: list[str | None]


@pytest.fixture(scope="module")
def tls_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSServer]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not available to make a test certificate")
    directory: Path = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=img.test",
            "-addext", "subjectAltName=DNS:img.test",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    names: list[str | None] = []
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)

    def remember(sock: Any, name: str | None, ctx: Any) -> None:
        names.append(name)

    server_ctx.sni_callback = remember
    handle = _start("127.0.0.2", tls=server_ctx)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    yield TLSServer(handle, client_ctx, names)
    handle.stop()


async def test_https_uses_hostname_for_sni_and_verification(tls_web: TLSServer) -> None:
    port = tls_web.handle.port
    resolver = fake_resolver({"img.test": ["127.0.0.2"]})
    async with ImageFetcher(
        timeout=5,
        resolver=resolver,
        allowed_networks=ALLOW_WEB2,
        ssl_context=tls_web.client_context,
    ) as fetcher:
        image = await fetcher.fetch(f"https://img.test:{port}/img/jpeg")
    assert image.mime_type == "image/jpeg"
    assert "img.test" in tls_web.server_names
    assert ("/img/jpeg", f"img.test:{port}") in tls_web.handle.server.requests


async def test_https_certificate_for_other_name_refused(tls_web: TLSServer) -> None:
    port = tls_web.handle.port
    resolver = fake_resolver({"other.test": ["127.0.0.2"]})
    async with ImageFetcher(
        timeout=5,
        resolver=resolver,
        allowed_networks=ALLOW_WEB2,
        ssl_context=tls_web.client_context,
    ) as fetcher:
        failure = await _fail(fetcher, f"https://other.test:{port}/img/jpeg")
    assert failure.reason is FailureReason.NETWORK
    assert "other.test" in tls_web.server_names

"""Download user-supplied image URLs without letting them reach internal hosts.

The worker calls `ImageFetcher.fetch_all` before handing images to an engine.
Rules follow the OWASP SSRF Prevention Cheat Sheet (see `netguard` for the
address policy) and RELIABILITY.md, "Fetching user-supplied URLs":

* only http/https and ``data:image/...;base64,``;
* resolve the host, refuse if *any* address is forbidden, then connect to the
  checked address itself (the request goes to the IP, with the original
  ``Host`` header and TLS SNI), so a second DNS answer cannot rebind it;
* redirects are followed by hand, each hop re-parsed, re-resolved, re-checked;
* the body is streamed under a byte cap, and the whole fetch under one deadline;
* the type comes from magic bytes, the pixel count is capped before decoding.

Error mapping (the contract allows only four client-visible sentences; the
precise cause is in ``TaskFailure.detail``, which is logged, never shown):

==========================================  ===========  =========
cause                                       reason       retryable
==========================================  ===========  =========
malformed / non-http(s) URL, credentials    NETWORK      no
internal hostname or forbidden address      NETWORK      no
name does not exist (NXDOMAIN)              NETWORK      no
too many redirects, redirect w/o Location   NETWORK      no
HTTP 4xx (except 408, 429), other non-2xx   NETWORK      no
unsupported Content-Encoding                NETWORK      no
DNS temporary failure, connect/read error   NETWORK      yes
total timeout                               NETWORK      yes
HTTP 408, 429, 5xx                          NETWORK      yes
body or data: URL larger than max_bytes     FILE_TYPE    no
not PNG/JPEG/WebP/GIF by magic bytes        FILE_TYPE    no
width*height above max_pixels (bomb)        FILE_TYPE    no
image does not decode                       FILE_TYPE    no
bad data: URL (not base64, not image/*)     FILE_TYPE    no
==========================================  ===========  =========

Refusals use NETWORK rather than FILE_TYPE because "File type not supported"
would mislead a client whose URL simply cannot be fetched; they are not
retryable because the same URL will be refused again.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import socket
import ssl
import zlib
from collections.abc import Awaitable, Sequence
from types import TracebackType
from typing import Self, TypeVar
from urllib.parse import urljoin

import httpx

from imagine.failures import FailureReason, TaskFailure
from imagine.media.images import (
    InputImage,
    check_task_pixels,
    decode_reduced,
    probe_image,
    sniff_image_type,
)
from imagine.media.netguard import (
    IPAddress,
    IPNetwork,
    Resolver,
    TargetURL,
    UnsafeURL,
    check_target,
    default_resolver,
    guarded_transport,
    resolve_checked,
    send_pinned,
)

__all__ = [
    "ImageFetcher",
    "decode_data_url",
    "gather_or_cancel",
    "inspect_images",
    "sniff_image_type",
]

T = TypeVar("T")

# A data: URL's header is a media type and a few parameters; a longer one is not an image.
_MAX_DATA_HEADER = 256

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_RETRYABLE_STATUS = frozenset({408, 429})
_PERMANENT_DNS_ERRORS = frozenset(
    code
    for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None))
    if code is not None
)


def decode_data_url(url: str, max_bytes: int) -> bytes:
    """The bytes of a ``data:image/...;base64,`` URL; ValueError says what is wrong.

    Shared by the API (checked at submit, so a bad one is a 400) and the worker.
    """
    header, comma, payload = url[5:].partition(",")
    if url[:5].lower() != "data:" or not comma:
        raise ValueError("must be a data:image/...;base64, URL")
    if len(header) > _MAX_DATA_HEADER:
        raise ValueError(f"has a data: header longer than {_MAX_DATA_HEADER} characters")
    params = [p.strip().lower() for p in header.split(";")]
    if len(params) < 2 or params[-1] != "base64":
        raise ValueError("must be a data:image/...;base64, URL (base64-encoded)")
    if not params[0].startswith("image/"):
        raise ValueError(f"media type {params[0]!r} is not an image")
    # Refuse before decoding so a huge string is never turned into bytes.
    if len(payload) > (max_bytes // 3 + 1) * 4:
        raise ValueError(f"is larger than {max_bytes} bytes")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64") from None
    if len(data) > max_bytes:
        raise ValueError(f"is larger than {max_bytes} bytes")
    return data


async def gather_or_cancel(awaitables: Sequence[Awaitable[T]]) -> list[T]:
    """Run concurrently and return the results in order; the first failure
    cancels the others and is raised."""
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def inspect_images(
    blobs: Sequence[bytes],
    *,
    max_pixels: int,
    max_task_pixels: int | None = None,
    short_side: int | None = None,
) -> list[InputImage]:
    """Check every image's type and size from its header, and their sum against
    the task's pixel budget, before decoding any; then decode them one at a
    time, each reduced to keep `short_side` pixels (blocking: run it in a thread).

    One at a time, so a task holds one decoded image at once (at most
    `max_pixels` × 4 bytes) rather than all of them.
    """
    headers = []
    for number, data in enumerate(blobs):
        try:
            headers.append(probe_image(data, max_pixels))
        except ValueError as exc:
            raise _bad_file(f"images[{number}] {exc} (starts {data[:16]!r})") from None
    if max_task_pixels is not None:
        try:
            check_task_pixels(headers, max_task_pixels)
        except ValueError as exc:
            raise _bad_file(f"the images {exc}") from None
    images = []
    for number, (data, header) in enumerate(zip(blobs, headers, strict=True)):
        try:
            images.append(decode_reduced(data, header, short_side))
        except ValueError as exc:
            raise _bad_file(f"images[{number}] {exc}") from None
    return images


def _refused(detail: str) -> TaskFailure:
    return TaskFailure(FailureReason.NETWORK, detail, retryable=False)


def _transient(detail: str) -> TaskFailure:
    return TaskFailure(FailureReason.NETWORK, detail, retryable=True)


def _bad_file(detail: str) -> TaskFailure:
    return TaskFailure(FailureReason.FILE_TYPE, detail, retryable=False)


class ImageFetcher:
    """Fetches and checks input images; one connection pool per fetcher.

    Use as ``async with ImageFetcher() as f: await f.fetch_all(urls)`` or call
    `aclose` when done. `allow_private` turns the address policy off (local
    development only). `allowed_networks` exempts specific networks from it,
    e.g. an internal image store an operator trusts. `ssl_context` replaces
    the default certificate verification (private CAs, tests).
    """

    def __init__(
        self,
        *,
        max_bytes: int = 10 * 1024 * 1024,
        timeout: float = 20.0,
        max_redirects: int = 3,
        max_pixels: int = 50_000_000,
        allow_private: bool = False,
        resolver: Resolver | None = None,
        user_agent: str = "imagine-image-fetcher",
        allowed_networks: Sequence[IPNetwork] = (),
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._max_redirects = max_redirects
        self._max_pixels = max_pixels
        self._allow_private = allow_private
        self._resolver: Resolver = resolver or default_resolver
        self._allowed_networks = tuple(allowed_networks)
        self._ssl_context = ssl_context
        self._transport: httpx.AsyncHTTPTransport | None = None
        self._headers = {
            "User-Agent": user_agent,
            "Accept": "image/png,image/jpeg,image/webp,image/gif;q=0.9,*/*;q=0.1",
            "Accept-Encoding": "identity",
        }

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool (a later fetch opens a new one)."""
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.aclose()

    def _http(self) -> httpx.AsyncHTTPTransport:
        # Why a bare transport, no proxies, no keep-alive: see `guarded_transport`.
        if self._transport is None:
            self._transport = guarded_transport(ssl_context=self._ssl_context)
        return self._transport

    async def fetch_all(
        self, urls: Sequence[str], *, short_side: int | None = None
    ) -> list[InputImage]:
        """Download every URL concurrently, then check and decode the images in
        order, one at a time (see `inspect_images`); the first failure cancels the rest."""
        blobs = await gather_or_cancel([self.download(url) for url in urls])
        return await asyncio.to_thread(
            inspect_images, blobs, max_pixels=self._max_pixels, short_side=short_side
        )

    async def fetch(self, url: str) -> InputImage:
        """Fetch one http(s) or data: URL and check it is a supported, sane image."""
        return (await self.fetch_all([url]))[0]

    async def download(self, url: str) -> bytes:
        """The bytes behind one http(s) or data: URL, not yet looked at."""
        if url[:5].lower() == "data:":
            try:
                return decode_data_url(url, self._max_bytes)
            except ValueError as exc:
                raise _bad_file(str(exc)) from None
        try:
            async with asyncio.timeout(self._timeout):
                return await self._download(url)
        except TimeoutError:
            raise _transient(f"fetch exceeded {self._timeout}s total") from None
        except httpx.TransportError as exc:  # includes httpx timeouts
            raise _transient(f"transport error: {type(exc).__name__}: {exc}") from None
        except httpx.InvalidURL as exc:  # not expected: URLs are built from checked parts
            raise _refused(f"invalid URL: {exc}") from None

    # -- http(s) --------------------------------------------------------------

    async def _download(self, url: str) -> bytes:
        current = url
        for hop in range(self._max_redirects + 1):
            target = self._check_target(current)
            addresses = await self._resolve(target)
            response = await self._send(target, addresses)
            try:
                if response.status_code in _REDIRECTS:
                    location = response.headers.get("location")
                    if not location:
                        raise _refused(f"{response.status_code} without Location from {target}")
                    if hop == self._max_redirects:
                        raise _refused(
                            f"more than {self._max_redirects} redirects (last: {target} -> "
                            f"{location[:200]!r})"
                        )
                    current = urljoin(str(target), location)
                    continue
                self._check_status(response, target)
                return await self._read_body(response, target)
            finally:
                await response.aclose()
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_target(self, url: str) -> TargetURL:
        try:
            return check_target(url, allow_private=self._allow_private)
        except UnsafeURL as exc:
            raise _refused(f"refused URL {url[:200]!r}: {exc}") from None

    async def _resolve(self, target: TargetURL) -> list[IPAddress]:
        """All addresses for the host; refuse if any is forbidden (OWASP: check every A/AAAA)."""
        try:
            return await resolve_checked(
                target,
                resolver=self._resolver,
                allow_private=self._allow_private,
                allowed_networks=self._allowed_networks,
            )
        except UnsafeURL as exc:
            raise _refused(str(exc)) from None
        except socket.gaierror as exc:
            detail = f"cannot resolve {target.host!r}: {exc}"
            if exc.errno in _PERMANENT_DNS_ERRORS:
                raise _refused(detail) from None
            raise _transient(detail) from None
        except OSError as exc:
            raise _transient(f"cannot resolve {target.host!r}: {exc}") from None

    async def _send(self, target: TargetURL, addresses: list[IPAddress]) -> httpx.Response:
        """Connect to a checked address (never the name again), trying each in turn."""
        try:
            return await send_pinned(
                self._http(),
                "GET",
                target,
                addresses,
                headers=self._headers,
                io_timeout=self._timeout,
            )
        except UnsafeURL as exc:
            raise _refused(str(exc)) from None
        except httpx.ConnectError as exc:
            raise _transient(str(exc)) from None

    @staticmethod
    def _check_status(response: httpx.Response, target: TargetURL) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        detail = f"HTTP {status} from {target}"
        if status >= 500 or status in _RETRYABLE_STATUS:
            raise _transient(detail)
        raise _refused(detail)

    async def _read_body(self, response: httpx.Response, target: TargetURL) -> bytes:
        """Stream the body, stopping as soon as it passes max_bytes (Content-Length is a hint)."""
        limit = self._max_bytes
        length = response.headers.get("content-length", "").strip()
        if length.isdigit() and int(length) > limit:
            raise _bad_file(f"Content-Length {length} > {limit} bytes from {target}")
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        decoder: zlib._Decompress | None = None
        if encoding in ("gzip", "x-gzip", "deflate"):
            # Decode ourselves with an output cap: a small gzip chunk can expand
            # a thousandfold, and httpx's decoder has no limit per chunk.
            decoder = zlib.decompressobj(wbits=47)  # gzip or zlib header
        elif encoding not in ("", "identity"):
            raise _refused(f"unsupported Content-Encoding {encoding!r} from {target}")
        body = bytearray()
        async for chunk in response.aiter_raw():
            if decoder is not None:
                try:
                    chunk = decoder.decompress(chunk, limit - len(body) + 1)
                except zlib.error as exc:
                    raise _bad_file(f"bad {encoding} body from {target}: {exc}") from None
            body += chunk
            if len(body) > limit:
                raise _bad_file(f"body larger than {limit} bytes from {target}")
        return bytes(body)

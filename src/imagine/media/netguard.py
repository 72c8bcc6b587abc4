"""Which URLs and addresses the service may contact on a user's behalf (SSRF).

Follows the OWASP SSRF Prevention Cheat Sheet: allow only http/https, refuse
credentials in URLs, refuse internal hostnames, resolve the name and refuse the
request if *any* address is internal, then connect to the address that was
checked. This module holds that policy and the pinned connection (resolve and
check every address, then send to a checked address with the original `Host`
header and TLS server name), so image fetching and webhook delivery share one
definition.

Why an explicit deny list: `ipaddress.is_global` alone misses multicast and
(depending on the Python version) IPv4 tunnelled inside IPv6, e.g.
`64:ff9b::7f00:1` (NAT64 of 127.0.0.1) or `2002:7f00:1::` (6to4) report as
global on 3.11, and it lags the IANA special-purpose registries (3.11 calls
`3fff::1` and `5f00::1` global). We unwrap embedded IPv4 and check it
against the IPv4 list, refuse every IPv6 address outside 2000::/3 (the only
block IANA allocates for global unicast) but the IPv4-mapped and NAT64 forms
judged by their IPv4, and additionally refuse anything that is not global.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any
from urllib.parse import urlsplit

import httpx

__all__ = [
    "IPAddress",
    "IPNetwork",
    "Resolver",
    "TargetURL",
    "UnsafeURL",
    "address_allowed",
    "check_target",
    "check_url_syntax",
    "default_resolver",
    "embedded_ipv4",
    "guarded_transport",
    "is_forbidden_address",
    "is_forbidden_hostname",
    "parse_target_url",
    "resolve_checked",
    "send_pinned",
]

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]
"""Resolve `(hostname, port)` to every address a connection could go to."""


class UnsafeURL(ValueError):
    """A URL the service refuses to contact; the message says why (for logs)."""


_FORBIDDEN_V4: tuple[IPv4Network, ...] = tuple(
    IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network"; 0.0.0.0 reaches localhost on Linux
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, cloud metadata (169.254.169.254)
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # TEST-NET-1
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # TEST-NET-2
        "203.0.113.0/24",  # TEST-NET-3
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, includes 255.255.255.255 broadcast
    )
)

# The IANA IPv6 Special-Purpose Address Registry's blocks that are not
# globally reachable, and a few more. Those outside 2000::/3 are refused by
# `_GLOBAL_UNICAST` anyway; they are listed so the policy reads in one place.
_FORBIDDEN_V6: tuple[IPv6Network, ...] = tuple(
    IPv6Network(n)
    for n in (
        "::/96",  # unspecified, loopback and deprecated IPv4-compatible ::a.b.c.d
        "::ffff:0:0/96",  # IPv4-mapped (only allowed if the unwrapped IPv4 is)
        "::ffff:0:0:0/96",  # IPv4-translated (SIIT, RFC 2765): ::ffff:0:a.b.c.d
        "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215)
        "100::/64",  # discard-only (RFC 6666)
        "100:0:0:1::/64",  # dummy prefix (RFC 9780)
        # IETF protocol assignments, Teredo 2001::/32 and benchmarking included.
        # Refused whole, although the registry marks a few of its blocks
        # globally reachable: those are anycast services answered by the
        # instance nearest the server (PCP, TURN, AMT relays, AS112) or
        # identifiers (ORCHIDv2, drone tags), never a web host to fetch from.
        "2001::/23",
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation (RFC 9637)
        "5f00::/16",  # segment routing (SRv6) SIDs (RFC 9602)
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # deprecated site-local
        "ff00::/8",  # multicast
    )
)

_GLOBAL_UNICAST = IPv6Network("2000::/3")
_NAT64 = IPv6Network("64:ff9b::/96")
_IPV4_MAPPED = IPv6Network("::ffff:0:0/96")
_IPV4_TRANSLATED = IPv6Network("::ffff:0:0:0/96")
_IPV4_COMPATIBLE = IPv6Network("::/96")


def embedded_ipv4(ip: IPv6Address) -> list[IPv4Address]:
    """IPv4 addresses an IPv6 address tunnels to (mapped, translated, compatible,
    6to4, NAT64, Teredo).

    Connecting to any of these forms can reach the embedded IPv4 host, so the
    policy must judge them as that host. (Local-use NAT64, 64:ff9b:1::/48,
    spreads the IPv4 around a reserved octet; it is refused whole instead.)
    """
    found: list[IPv4Address] = []
    packed = int(ip)
    if any(ip in net for net in (_IPV4_MAPPED, _IPV4_TRANSLATED, _IPV4_COMPATIBLE, _NAT64)):
        found.append(IPv4Address(packed & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)  # (server, client)
    return found


def _v4_forbidden(ip: IPv4Address) -> bool:
    return not ip.is_global or any(ip in net for net in _FORBIDDEN_V4)


def is_forbidden_address(ip: IPAddress) -> bool:
    """True if the service must never connect to `ip` for a user-supplied URL."""
    if isinstance(ip, IPv4Address):
        return _v4_forbidden(ip)
    if ip.scope_id:  # fe80::1%eth0 and the like: interface-local by definition
        return True
    embedded = embedded_ipv4(ip)
    if any(_v4_forbidden(v4) for v4 in embedded):
        return True
    if ip in _IPV4_MAPPED and embedded:
        # ::ffff:a.b.c.d is a.b.c.d; judge it only by the IPv4 rules.
        return False
    if ip not in _GLOBAL_UNICAST and ip not in _NAT64:
        # Reserved or special-purpose space, including blocks assigned after
        # this list was written.
        return True
    return not ip.is_global or any(ip in net for net in _FORBIDDEN_V6)


def is_forbidden_hostname(host: str) -> bool:
    """Names that point inside the machine or cloud no matter what DNS says.

    `host` should be lower-case without a trailing dot (as `TargetURL.host`).
    """
    host = host.lower().rstrip(".")
    return host == "localhost" or host.endswith(".localhost") or host == "metadata.google.internal"


@dataclass(frozen=True)
class TargetURL:
    """The parts of an http(s) URL a client needs to connect safely.

    `host` is lower-case ASCII (IDNA), without brackets or trailing dot;
    `ip` is set when the host is an IP literal; `port` is always explicit.
    """

    scheme: str
    host: str
    port: int
    ip: IPAddress | None
    path_query: str

    @property
    def default_port(self) -> bool:
        return self.port == (443 if self.scheme == "https" else 80)

    @property
    def host_header(self) -> str:
        """Value for the `Host` header (the original name, not the checked IP)."""
        host = f"[{self.host}]" if isinstance(self.ip, IPv6Address) else self.host
        return host if self.default_port else f"{host}:{self.port}"

    def url_for(self, ip: IPAddress) -> str:
        """The same URL with the host replaced by `ip` (what we actually connect to)."""
        host = f"[{ip}]" if isinstance(ip, IPv6Address) else str(ip)
        return f"{self.scheme}://{host}:{self.port}{self.path_query}"

    def __str__(self) -> str:
        host = f"[{self.host}]" if isinstance(self.ip, IPv6Address) else self.host
        port = "" if self.default_port else f":{self.port}"
        return f"{self.scheme}://{host}{port}{self.path_query}"


_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
# What inet_aton (and so getaddrinfo) would read as an IPv4 number:
# 2130706433, 0x7f.1, 017700000001, 127.1 ...
_NUMERIC_LABEL = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$")
_PORT = re.compile(r"^[0-9]{1,5}$")
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f\\]")


def parse_target_url(url: str) -> TargetURL:
    """Parse an http(s) URL strictly, without any DNS or address policy.

    Strict because parser differences are an SSRF vector (OWASP): whitespace,
    control characters and backslashes (which `urlsplit` silently strips or
    other parsers treat as `/`) are refused, as are userinfo, bad ports, and
    numeric hosts other than canonical dotted-quad IPv4.
    """
    if len(url) > 8192:
        raise UnsafeURL("URL is too long")
    if _BAD_CHARS.search(url):
        raise UnsafeURL("URL contains whitespace, control characters or backslashes")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise UnsafeURL(f"URL cannot be parsed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeURL(f"scheme {parts.scheme!r} is not allowed (only http and https)")
    netloc = parts.netloc
    if not netloc:
        raise UnsafeURL("URL has no host")
    if "@" in netloc:
        raise UnsafeURL("URL must not contain credentials (user:pass@)")

    # Split host and port ourselves: urlsplit's port parsing is lenient.
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise UnsafeURL("unterminated IPv6 literal")
        raw_host, rest = netloc[1:end], netloc[end + 1 :]
        if rest and not rest.startswith(":"):
            raise UnsafeURL("garbage after IPv6 literal")
        has_port, port_text = bool(rest), rest[1:]
        if "%" in raw_host:
            raise UnsafeURL("IPv6 zone identifiers are not allowed")
        try:
            ip6 = IPv6Address(raw_host)
        except ValueError:
            raise UnsafeURL(f"invalid IPv6 literal {raw_host!r}") from None
        host: str = str(ip6)
        ip: IPAddress | None = ip6
    else:
        raw_host, sep, port_text = netloc.rpartition(":")
        has_port = bool(sep)
        if not has_port:
            raw_host = netloc
        host, ip = _parse_hostname(raw_host)

    if not has_port:
        port = 443 if scheme == "https" else 80
    elif _PORT.match(port_text) and 1 <= int(port_text) <= 65535:
        port = int(port_text)
    else:
        raise UnsafeURL(f"invalid port {port_text!r}")

    path_query = parts.path or "/"
    if not path_query.startswith("/"):
        raise UnsafeURL("path must start with '/'")
    if parts.query:
        path_query += "?" + parts.query
    return TargetURL(scheme=scheme, host=host, port=port, ip=ip, path_query=path_query)


def _parse_hostname(raw: str) -> tuple[str, IPAddress | None]:
    if not raw:
        raise UnsafeURL("URL has no host")
    if "%" in raw:
        raise UnsafeURL("percent-encoded hosts are not allowed")
    host = raw[:-1] if raw.endswith(".") else raw  # "example.com." is "example.com"
    try:
        host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise UnsafeURL(f"host {raw!r} is not a valid hostname") from None
    if not host or len(host) > 253:
        raise UnsafeURL(f"host {raw!r} is not a valid hostname")
    labels = host.split(".")
    if _NUMERIC_LABEL.match(labels[-1]):
        # Looks numeric: only canonical dotted-quad IPv4 is accepted. Other
        # inet_aton forms (2130706433, 0x7f.1, 0177.0.0.1) are refused outright
        # rather than normalised, since parsers disagree on them.
        try:
            ip4 = IPv4Address(host)
        except ValueError:
            raise UnsafeURL(f"non-canonical numeric host {raw!r}") from None
        return str(ip4), ip4
    if not all(_LABEL.match(label) for label in labels):
        raise UnsafeURL(f"host {raw!r} is not a valid hostname")
    return host, None


def check_url_syntax(url: str, *, allow_private: bool) -> None:
    """Cheap submit-time check of an http(s) URL (no DNS).

    Raises `UnsafeURL`. With `allow_private` only the syntax rules apply;
    otherwise internal hostnames and forbidden literal addresses are refused
    too. Names still have to be resolved and re-checked when fetching.
    """
    target = parse_target_url(url)
    if allow_private:
        return
    if is_forbidden_hostname(target.host):
        raise UnsafeURL(f"host {target.host!r} is internal")
    if target.ip is not None and is_forbidden_address(target.ip):
        raise UnsafeURL(f"address {target.ip} is not publicly routable")


async def default_resolver(host: str, port: int) -> list[IPAddress]:
    """Every A/AAAA address for `host`, via the event loop's getaddrinfo."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    found: list[IPAddress] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        ip = ipaddress.ip_address(sockaddr[0])
        if isinstance(ip, IPv6Address) and ip.scope_id is None and len(sockaddr) == 4:
            scope = sockaddr[3]
            if scope:
                ip = IPv6Address(f"{ip}%{scope}")
        if ip not in found:
            found.append(ip)
    return found


# -- Connecting under the policy ------------------------------------------------


def check_target(url: str, *, allow_private: bool) -> TargetURL:
    """Parse `url` strictly and refuse internal hostnames (no DNS yet); `UnsafeURL` if not."""
    target = parse_target_url(url)
    if not allow_private and is_forbidden_hostname(target.host):
        raise UnsafeURL(f"refused internal host {target.host!r}")
    return target


def address_allowed(
    ip: IPAddress, *, allow_private: bool, allowed_networks: Sequence[IPNetwork] = ()
) -> bool:
    """The policy for one resolved address; `allowed_networks` are operator exemptions."""
    if allow_private:
        return True
    if any(ip.version == net.version and ip in net for net in allowed_networks):
        return True
    return not is_forbidden_address(ip)


async def resolve_checked(
    target: TargetURL,
    *,
    resolver: Resolver,
    allow_private: bool,
    allowed_networks: Sequence[IPNetwork] = (),
) -> list[IPAddress]:
    """Every address of the target's host, refused (`UnsafeURL`) if *any* is forbidden.

    OWASP: one forbidden A/AAAA record is enough to refuse, since the client
    could connect to any of them. DNS failures propagate as `OSError`
    (`socket.gaierror`), so each caller decides which are worth retrying.
    """
    if target.ip is not None:
        addresses = [target.ip]
    else:
        addresses = list(await resolver(target.host, target.port))
        if not addresses:
            raise UnsafeURL(f"{target.host!r} has no addresses")
    forbidden = [
        str(ip)
        for ip in addresses
        if not address_allowed(ip, allow_private=allow_private, allowed_networks=allowed_networks)
    ]
    if forbidden:
        raise UnsafeURL(f"{target.host!r} resolves to forbidden address(es) {forbidden}")
    return addresses


def guarded_transport(
    *, ssl_context: ssl.SSLContext | None = None, max_connections: int | None = None
) -> httpx.AsyncHTTPTransport:
    """An httpx transport fit for `send_pinned`.

    A bare transport rather than an `AsyncClient`: the client parses every
    Location header to prepare a redirect even with redirects off (a hostile
    Location then raises), and keeps a cookie jar shared between unrelated
    users' URLs. No proxies or `SSL_CERT_*` from the environment: a proxy
    would make the connection, and its DNS lookup, somewhere unchecked. No
    keep-alive: the pool is keyed by IP, so a connection whose certificate was
    verified for one hostname could otherwise be reused for another.
    """
    return httpx.AsyncHTTPTransport(
        verify=ssl_context if ssl_context is not None else True,
        trust_env=False,
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=0),
        retries=0,
    )


async def send_pinned(
    transport: httpx.AsyncHTTPTransport,
    method: str,
    target: TargetURL,
    addresses: Sequence[IPAddress],
    *,
    headers: dict[str, str],
    io_timeout: float,
    content: bytes | None = None,
) -> httpx.Response:
    """Send to the checked addresses (never the name again: DNS rebinding), in turn.

    The request goes to the IP with the original `Host` header, and for https
    the TLS server name and certificate check use the real hostname. Redirects
    are never followed here. `io_timeout` bounds each connect, read and write.
    Raises `httpx.ConnectError` when no address accepts the connection; the
    caller closes the response.
    """
    extensions: dict[str, Any] = {"timeout": httpx.Timeout(io_timeout).as_dict()}
    if target.scheme == "https" and target.ip is None:
        extensions["sni_hostname"] = target.host
    headers = {**headers, "Host": target.host_header}
    last_error: httpx.ConnectError | None = None
    for ip in addresses:
        request = httpx.Request(
            method, target.url_for(ip), headers=headers, content=content, extensions=extensions
        )
        # Belt and braces: the URL httpx will connect to is the checked IP.
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        if request.url.host != ip.compressed or port != target.port:
            raise UnsafeURL(f"request URL {request.url} does not match checked {ip}")
        try:
            response = await transport.handle_async_request(request)
        except httpx.ConnectError as exc:
            last_error = exc
            continue
        response.request = request
        return response
    raise httpx.ConnectError(
        f"cannot connect to {target} via {[str(a) for a in addresses]}: {last_error}"
    )

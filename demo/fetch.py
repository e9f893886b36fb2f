"""Public image URLs fetched on a caller's behalf without reaching anything private (SSRF).

A URL is http(s) only. Its host is resolved once (numeric spellings such as 2130706433, 0177.0.0.1 or
0x7f.1 are read as addresses, never handed to a resolver), and the URL is refused when any of the
addresses is not a public one (`refusal`). The connection goes to the address that was checked, with
the URL's host in the Host header and, for https, in SNI and the certificate check, so a second DNS
answer can never redirect it (no DNS rebinding). Each redirect is checked the same way, at most
`MAX_REDIRECTS` of them; the body is read in chunks up to a byte limit within one overall time limit, and
must be declared an image. Each refusal is a `FetchError` naming the reason, never a server detail.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple
from urllib.parse import urljoin, urlsplit

from PIL import Image

from wmoe.errors import WMoEError
from wmoe.preprocess import load_image

MAX_REDIRECTS = 3
TIMEOUT_S = 20.0  # the whole fetch: connecting, every redirect, every byte of the body
CHUNK = 64 * 1024
REDIRECTS = (301, 302, 303, 307, 308)
METADATA = frozenset(  # cloud instance metadata services (most are inside a refused range anyway)
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "192.0.0.192")
)
NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
METADATA_NAMES = frozenset(("metadata", "metadata.google.internal", "metadata.goog", "instance-data"))
_PART = re.compile(r"0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]


class FetchError(WMoEError, ValueError):
    """A URL that is not fetched (scheme, address, redirect, size, time, content type); says why."""


class Fetched(NamedTuple):
    """What a fetch brings back: the bytes, and the type the server declared for them."""

    body: bytes
    content_type: str  # as the server declared it, e.g. "image/png"


def fetch(
    url: str,
    max_bytes: int,
    timeout: float = TIMEOUT_S,
    resolve: Resolver | None = None,
    tls: ssl.SSLContext | None = None,
) -> Fetched:
    """An image at a public http(s) URL, at most `max_bytes`, within `timeout` seconds in all (a watchdog
    cuts the connection then, however slowly the server sends). `resolve(host, port)` -> addresses
    (default: the system's resolver); `tls` the https context."""
    deadline = time.monotonic() + timeout
    for _ in range(MAX_REDIRECTS + 1):
        scheme, host, port, address = check_url(url, resolve or system_resolve)
        kind = _Pinned if scheme == "http" else _PinnedTLS
        conn = kind(host, port, timeout=_left(deadline), **({} if scheme == "http" else {"context": tls}))
        conn.address = address
        watchdog = threading.Timer(_left(deadline), conn.cut)
        watchdog.start()
        response = None
        try:
            response = _request(conn, _target(url), deadline)
            if response.status not in REDIRECTS:
                return _body(conn, response, max_bytes, deadline)
            location = response.getheader("Location")
        finally:
            watchdog.cancel()
            if response is not None:
                response.close()
            conn.close()
        if not location:
            raise FetchError(f"the server answered a redirect ({response.status}) without a location")
        url = urljoin(url, location)
    raise FetchError(f"more than {MAX_REDIRECTS} redirects: not followed")


def fetch_image(url: str, max_bytes: int, **options) -> Image.Image:
    """`fetch`, decoded by wmoe's image loader (the same pixel limit as an upload)."""
    return load_image(fetch(url, max_bytes, **options).body)


def check_url(url: str, resolve: Resolver) -> tuple[str, str, int, str]:
    """(scheme, host, port, the one address to connect to) for a URL that may be fetched, or FetchError."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise FetchError("not a valid URL") from None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").rstrip(".")
    if scheme not in ("http", "https"):
        raise FetchError(f"only http and https URLs are fetched, not {scheme or 'this'}")
    if not host:
        raise FetchError("the URL has no host")
    port = port or (443 if scheme == "https" else 80)
    if host.lower() in METADATA_NAMES:
        raise FetchError(f"{host} is a cloud metadata service: not fetched")
    literal = host_address(host)
    if literal is not None:
        addresses = [literal]
    else:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", host) or re.fullmatch(
            r"\d+|0[xX][0-9a-fA-F]*", host.split(".")[-1]
        ):
            raise FetchError(f"{host} is not a valid host name")
        try:
            addresses = [ipaddress.ip_address(a.split("%")[0]) for a in resolve(host, port)]
        except (OSError, UnicodeError, ValueError):
            raise FetchError(f"{host} could not be resolved") from None
        if not addresses:
            raise FetchError(f"{host} could not be resolved")
    for address in addresses:
        why = refusal(address)
        if why:
            raise FetchError(f"{host} is {why}: not fetched")
    return scheme, host, port, str(addresses[0])


def host_address(host: str) -> Address | None:
    """The address a numeric host stands for, in any spelling a resolver would accept (IPv6, dotted IPv4
    with 1 to 4 decimal, octal or hex parts); None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if ":" in host:  # brackets held an IPv6 literal that is not one (e.g. with a zone)
        raise FetchError(f"{host} is not a valid address")
    parts = host.split(".")
    if len(parts) > 4 or not all(_PART.fullmatch(p) for p in parts):
        return None
    values = [
        int(p, 16) if p[:2].lower() == "0x" else int(p, 8) if p.startswith("0") else int(p) for p in parts
    ]
    value, width = 0, 32
    for v in values[:-1]:
        if v > 255:
            raise FetchError(f"{host} is not a valid address")
        width -= 8
        value |= v << width
    if values[-1] >= 1 << width:
        raise FetchError(f"{host} is not a valid address")
    return ipaddress.IPv4Address(value | values[-1])


def refusal(address: Address) -> str | None:
    """Why an address is not fetched from (e.g. "a loopback address"), None for a public one: globally
    routable unicast, judged for IPv6 by the IPv4 address it embeds, if any (IPv4-mapped, 6to4, Teredo,
    NAT64). The one rule; tests override it (and only tests) to reach their loopback server."""
    if address in METADATA:
        return "a cloud metadata address"
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo or (None, None))[1]
        if embedded is None and any(address in net for net in NAT64):
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return refusal(embedded)
    for name, test in (
        ("an unspecified address", address.is_unspecified),
        ("a loopback address", address.is_loopback),
        ("a link-local address", address.is_link_local),
        ("a multicast address", address.is_multicast),
        ("a private address", address.is_private),
        ("a reserved address", address.is_reserved or not address.is_global),
    ):
        if test:
            return name
    return None


def system_resolve(host: str, port: int) -> list[str]:
    """Every address the system's resolver gives for host."""
    return list(dict.fromkeys(info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)))


def _target(url: str) -> str:
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


TOO_LONG = "the server took too long: not fetched"


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchError(TOO_LONG)
    return left


def _request(conn, target: str, deadline: float) -> http.client.HTTPResponse:
    """GET target, connected to the checked address (Host header, SNI and certificate: the URL's host)."""
    try:
        conn.request("GET", target, headers={"Accept": "image/*", "User-Agent": "wmoe-demo"})
        conn.pinned.settimeout(_left(deadline))
        response = conn.getresponse()
        if time.monotonic() >= deadline:  # a head cut short by the watchdog is no answer
            response.close()
            raise FetchError(TOO_LONG)
        return response
    except TimeoutError:
        raise FetchError(TOO_LONG) from None
    except ssl.SSLCertVerificationError:
        raise FetchError(f"{conn.host}: the TLS certificate could not be verified") from None
    except (OSError, http.client.HTTPException):
        _left(deadline)  # cut by the watchdog, or timed out: too long
        raise FetchError(f"{conn.host} could not be reached") from None


def _body(conn, response: http.client.HTTPResponse, max_bytes: int, deadline: float) -> Fetched:
    """The body of a 200 answer that declares an image: read a chunk at a time, each within what is left
    of the time limit, and given up as soon as it passes max_bytes (whatever Content-Length said)."""
    if response.status != 200:
        raise FetchError(f"the server answered HTTP {response.status}, not an image")
    kind = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
    if not kind.startswith("image/"):
        raise FetchError(f"the server sent {kind or 'no content type'}, not an image")
    too_big = f"the image is over the size limit of {max_bytes:,} bytes: not fetched"
    declared = response.getheader("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise FetchError(too_big)
    body = bytearray()
    try:
        while chunk := response.read1(CHUNK):
            body += chunk
            if len(body) > max_bytes:
                raise FetchError(too_big)
            conn.pinned.settimeout(_left(deadline))
    except TimeoutError:
        raise FetchError(TOO_LONG) from None
    except (OSError, http.client.HTTPException):
        _left(deadline)
        raise FetchError("the connection broke before the whole image arrived") from None
    _left(deadline)  # an end cut short by the watchdog is no image
    return Fetched(bytes(body), kind)


class _Pinned(http.client.HTTPConnection):
    """Plain HTTP to a fixed address; the host name only in the Host header. `pinned` stays the socket
    while the response reads from it (http.client lets go of it when the server closes after it)."""

    address, pinned = "", None

    def connect(self):
        self.sock = self.pinned = socket.create_connection((self.address, self.port), self.timeout)

    def cut(self):
        """The watchdog: whatever is blocked on the socket returns at once."""
        if self.pinned is not None:
            try:
                socket.socket.shutdown(self.pinned, socket.SHUT_RDWR)  # the descriptor, not TLS state
            except OSError:
                pass


class _PinnedTLS(_Pinned, http.client.HTTPSConnection):
    """HTTPS to a fixed address; SNI and the certificate checked against the URL's host name."""

    def __init__(self, host, port, timeout, context=None):
        super().__init__(host, port, timeout=timeout, context=context or ssl.create_default_context())

    def connect(self):
        raw = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self.pinned = self._context.wrap_socket(raw, server_hostname=self.host)

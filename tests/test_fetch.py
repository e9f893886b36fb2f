"""demo/fetch.py: public image URLs only, pinned to the checked address, bounded in size, time and redirects.

A threaded loopback server plays the public web; each test that reaches it lets exactly its address
(127.0.0.1) through `demo.fetch.refusal`, nothing else. Without that override every private spelling is
refused before any connection is made.
"""

import datetime
import io
import ipaddress
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from demo import fetch as fetching
from demo.fetch import FetchError, fetch, fetch_image
from wmoe.errors import WMoEError
from wmoe.preprocess import ImageError

LIMIT = 100_000


def in_flight_max() -> int:
    """The most bytes a TCP connection can hold unread: the receive and send buffer maxima (Linux), or
    64 MiB where they cannot be read."""
    try:
        return sum(int(Path(f"/proc/sys/net/ipv4/tcp_{k}mem").read_text().split()[2]) for k in "rw")
    except (OSError, ValueError, IndexError):
        return 64 * 2**20


SERVER = ipaddress.ip_address("127.0.0.1")


def png(size=(4, 3)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buffer, "PNG")
    return buffer.getvalue()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, status, kind=None, body=b"", length=True, **headers):
        self.send_response(status)
        if kind:
            self.send_header("Content-Type", kind)
        for name, value in headers.items():
            self.send_header(name, value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def stream(self, kind="image/png", declared=None, pause=0.0, chunk=b"\0" * 8192, seconds=5.0):
        """Bytes for `seconds` (or until the client hangs up), counted in server.sent."""
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header(
            "Content-Length" if declared else "Connection", str(declared) if declared else "close"
        )
        self.end_headers()
        end = time.monotonic() + seconds
        try:
            while time.monotonic() < end:
                self.wfile.write(chunk)
                self.server.sent += len(chunk)
                time.sleep(pause)
        except OSError:
            pass
        self.close_connection = True

    def do_GET(self):
        self.server.hosts.append(self.headers.get("Host"))
        path, _, query = self.path.partition("?")
        if path == "/ok.png":
            self.send(200, "image/png; charset=binary", png())
        elif path == "/declared-too-big":  # headers only, then silence: refused without waiting for a body
            self.stream(declared=LIMIT + 1, pause=10, chunk=b"")
        elif path == "/endless":  # no Content-Length: read until the limit, then given up
            self.stream()
        elif path == "/endless-chunked":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            end = time.monotonic() + 5.0  # or until the client hangs up
            try:
                while time.monotonic() < end:
                    self.wfile.write(b"2000\r\n" + b"\0" * 0x2000 + b"\r\n")
                    self.server.sent += 0x2000
            except OSError:
                pass
            self.close_connection = True
        elif path == "/drip":  # a byte at a time, forever: only the overall time limit stops it
            self.stream(pause=0.05, chunk=b"\0", seconds=10)
        elif path == "/slow-headers":  # the answer's head a byte at a time: only the watchdog stops it
            try:
                for byte in b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nX-Pad: " + b"a" * 1000:
                    self.wfile.write(bytes([byte]))
                    time.sleep(0.05)
            except OSError:
                pass
            self.close_connection = True
        elif path == "/silent":
            time.sleep(5)
            self.send(200, "image/png", png())
        elif path == "/page":
            self.send(200, "text/html", b"<html></html>")
        elif path == "/untyped":
            self.send(200, None, png())
        elif path == "/missing":
            self.send(404, "text/plain", b"no")
        elif path == "/to":
            self.send(302, Location=query)
        elif path.startswith("/hops/"):  # /hops/N redirects N times, then the image
            n = int(path.rsplit("/", 1)[1])
            self.send(302, Location=f"/hops/{n - 1}") if n else self.send(200, "image/png", png())
        elif path == "/loop":
            self.send(301, Location="/loop")
        else:
            self.send(404, "text/plain", b"no")


def serve(tls: ssl.SSLContext | None = None):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.sent, server.hosts = 0, []
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def server():
    s = serve()
    yield s
    s.shutdown()
    s.server_close()


@pytest.fixture
def loopback_is_public(monkeypatch):
    """This test's server counts as public; every other address keeps the real rule."""
    real = fetching.refusal
    monkeypatch.setattr(fetching, "refusal", lambda address: None if address == SERVER else real(address))


def url(server, path, host="127.0.0.1"):
    return f"http://{host}:{server.server_address[1]}{path}"


def refused(match, *args, **kwargs):
    start = time.monotonic()
    with pytest.raises(FetchError, match=match) as e:
        fetch(*args, **kwargs)
    return e.value, time.monotonic() - start


def test_a_public_png_is_fetched_and_decoded(server, loopback_is_public):
    assert fetch(url(server, "/ok.png"), LIMIT) == (png(), "image/png")
    image = fetch_image(url(server, "/ok.png"), LIMIT)
    assert image.mode == "RGB" and image.size == (4, 3) and image.getpixel((0, 0)) == (200, 10, 10)
    assert issubclass(FetchError, WMoEError)


def test_the_image_loaders_pixel_limit_applies(server, loopback_is_public, monkeypatch):
    monkeypatch.setattr("wmoe.preprocess.MAX_PIXELS", 11)
    with pytest.raises(ImageError, match="over the limit of 11"):
        fetch_image(url(server, "/ok.png"), LIMIT)


def test_a_declared_size_over_the_limit_is_refused_before_the_body(server, loopback_is_public):
    error, took = refused("over the size limit of 100,000 bytes", url(server, "/declared-too-big"), LIMIT)
    assert took < 2  # the server sends no body for 10 s: the header alone refused it


@pytest.mark.parametrize("path", ["/endless", "/endless-chunked"])
def test_a_body_without_a_length_is_cut_at_the_limit(server, loopback_is_public, path):
    _, took = refused("over the size limit", url(server, path), LIMIT)
    assert took < 3
    time.sleep(0.2)
    # stopped reading: the server pushed no more than the client read plus what the two loopback socket
    # buffers hold (a client that drained the 5 s stream would take gigabytes)
    assert server.sent < LIMIT + in_flight_max() + 0x2000


@pytest.mark.parametrize("path", ["/drip", "/slow-headers", "/silent"])
def test_a_slow_server_runs_out_of_time(server, loopback_is_public, path):
    _, took = refused("took too long", url(server, path), LIMIT, timeout=1.0)
    assert 0.9 < took < 2.5


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/page", "sent text/html, not an image"),
        ("/untyped", "sent no content type"),
        ("/missing", "answered HTTP 404"),
    ],
)
def test_only_an_image_answer_is_taken(server, loopback_is_public, path, why):
    refused(why, url(server, path), LIMIT)


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("http://10.0.0.1/x.png", "10.0.0.1 is a private address"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata address"),
        ("http://[::1]/x.png", "loopback address"),
        ("http://2130706434/x.png", "loopback address"),  # 127.0.0.2
        ("file:///etc/passwd", "only http and https"),
    ],
)
def test_a_redirect_is_checked_like_the_url(server, loopback_is_public, target, why):
    error, _ = refused(why, url(server, f"/to?{target}"), LIMIT)
    assert server.hosts  # the first, public hop was fetched; its redirect was refused


def test_at_most_three_redirects(server, loopback_is_public):
    assert fetch(url(server, "/hops/3"), LIMIT).body == png()
    refused("more than 3 redirects", url(server, "/hops/4"), LIMIT)
    refused("more than 3 redirects", url(server, "/loop"), LIMIT)
    assert len(server.hosts) == 4 + 4 + 4  # the URL after a 3rd redirect is never asked for


@pytest.mark.parametrize(
    "link",
    [
        "file:///etc/passwd",
        "ftp://example.com/x.png",
        "gopher://example.com/",
        "data:image/png;base64,AAAA",
        "x.png",
    ],
)
def test_other_schemes_are_refused(link):
    refused("only http and https URLs are fetched", link, LIMIT)


@pytest.fixture
def no_connection(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("a refused URL was connected to")

    monkeypatch.setattr(socket, "create_connection", never)


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("localhost", "loopback"),
        ("[::1]", "loopback"),
        ("[::ffff:127.0.0.1]", "loopback"),
        ("[::ffff:7f00:1]", "loopback"),
        ("[2002:7f00:1::]", "loopback"),  # 6to4 around 127.0.0.1
        ("[64:ff9b::7f00:1]", "loopback"),  # NAT64 around 127.0.0.1
        ("[64:ff9b:1::a00:1]", "private"),  # local-use NAT64 around 10.0.0.1
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("[fc00::1]", "private"),
        ("[::ffff:192.168.0.1]", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("[fd00:ec2::254]", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("[fe80::1]", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("[::]", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("[ff02::1]", "multicast"),
        ("240.0.0.1", "private"),  # Python counts 240/4 as private
        ("100.64.0.1", "reserved"),  # carrier-grade NAT
        ("2130706433", "loopback"),
        ("0177.0.0.1", "loopback"),
        ("0x7f000001", "loopback"),
        ("0x7f.1", "loopback"),
        ("127.1", "loopback"),
        ("017700000001", "loopback"),
        ("0xa9.0xfe.0xa9.0xfe", "cloud metadata"),
        ("metadata.google.internal", "cloud metadata"),
        ("metadata", "cloud metadata"),
    ],
)
def test_private_addresses_are_refused_in_every_spelling(no_connection, host, why):
    error, _ = refused(f"is (a|an) {why}", f"http://{host}/x.png", LIMIT)
    assert "not fetched" in str(error)
    refused(why, f"https://user@{host}:8443/x.png", LIMIT)


@pytest.mark.parametrize("host", ["256.1", "1.2.3.4.5", "127.0.0.08", "[::1%eth0", "exa mple.com"])
def test_malformed_hosts_are_refused(no_connection, host):
    refused("not a valid|could not be resolved|not a valid URL", f"http://{host}/x.png", LIMIT)


def test_one_private_answer_among_public_ones_refuses_the_host(no_connection, loopback_is_public):
    refused(
        "private address",
        "http://images.example/x.png",
        LIMIT,
        resolve=lambda host, port: ["127.0.0.1", "10.0.0.7"],
    )


def test_the_checked_address_is_the_one_connected_to(server, loopback_is_public):
    """DNS rebinding: a resolver that answers the public address first and a private one after is asked
    once; the request goes to the first answer, named by its host in the Host header."""
    answers = iter([["127.0.0.1"], ["10.0.0.7"]])
    asked = []

    def rebinding(host, port):
        asked.append(host)
        return next(answers)

    port = server.server_address[1]
    assert fetch(f"http://images.example:{port}/ok.png", LIMIT, resolve=rebinding).body == png()
    assert asked == ["images.example"]
    assert server.hosts == [f"images.example:{port}"]


def test_a_name_that_does_not_resolve_is_refused(no_connection):
    def fails(host, port):
        raise socket.gaierror("no such name")

    refused("could not be resolved", "http://nowhere.example/x.png", LIMIT, resolve=fails)


def self_signed(name: str, directory):
    """(server TLS context, client TLS context trusting it) for a certificate naming `name`."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(cert_file, key_file)
    return server_side, ssl.create_default_context(cafile=str(cert_file))


def test_https_checks_the_certificate_against_the_host_not_the_address(tmp_path, loopback_is_public):
    server_side, client_side = self_signed("images.example", tmp_path)
    server = serve(server_side)
    try:
        port, to_server = server.server_address[1], (lambda host, port: ["127.0.0.1"])
        link = f"https://images.example:{port}/ok.png"
        assert fetch(link, LIMIT, resolve=to_server, tls=client_side).body == png()
        refused(
            "certificate could not be verified",
            f"https://other.example:{port}/ok.png",
            LIMIT,
            resolve=to_server,
            tls=client_side,
        )
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("link", "address"),
    [
        ("http://93.184.216.34/x.png", "93.184.216.34"),
        ("https://[2606:4700::1111]:8443/x.png", "2606:4700::1111"),
        ("http://[::ffff:8.8.8.8]/x.png", "::ffff:808:808"),
        ("http://0x08080808/x.png", "8.8.8.8"),
        ("https://images.example/x.png", "8.8.4.4"),
    ],
)
def test_public_addresses_pass_the_check(link, address):
    """The rule refuses what is private, not everything: public spellings give the address to connect to."""
    scheme, host, port, checked = fetching.check_url(link, lambda host, port: ["8.8.4.4"])
    assert checked == address and scheme in ("http", "https") and port in (80, 443, 8443)

"""Tests of the test servers themselves (CPython only, no MicroPython).

The library's tests trust these servers to misbehave exactly as asked, so each
fault is checked here with plain http.client / raw sockets.
"""

import gzip
import hashlib
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # so `tools` imports however pytest is invoked

from tools.testservers import (FaultServer, RealServer, make_certs, payload,  # noqa: E402
                               sha256_of, text_payload)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(str(tmp_path_factory.mktemp("certs")))


@pytest.fixture
def srv():
    # only this server's thread is checked: other tests keep session-scoped servers running
    with FaultServer() as s:
        thread = s._thread
        yield s
    assert not thread.is_alive(), "a server thread outlived stop()"


def get(srv, path, headers=None, method="GET"):
    """One request on a fresh connection -> (response, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp, resp.read()
    finally:
        conn.close()


def raw(srv, request, timeout=5):
    """Send raw bytes, read until the server closes -> everything received."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=timeout) as s:
        s.sendall(request)
        out = []
        while True:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            out.append(data)
        return b"".join(out)


def recv_until_error(srv, request):
    """-> (bytes received, the exception that ended the connection or None)."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(request)
        out = b""
        while True:
            try:
                data = s.recv(65536)
            except ConnectionResetError as e:
                return out, e
            if not data:
                return out, None
            out += data


def test_bytes_full_and_head(srv):
    resp, body = get(srv, "/bytes/100000?seed=3")
    assert resp.status == 200
    assert body == payload(100000, 3)
    assert hashlib.sha256(body).hexdigest() == sha256_of(100000, 3)
    assert resp.getheader("Content-Length") == "100000"
    assert resp.getheader("ETag") == '"100000-3"'
    assert resp.getheader("Accept-Ranges") == "bytes"
    resp, body = get(srv, "/bytes/100000", method="HEAD")
    assert resp.status == 200 and body == b"" and resp.getheader("Content-Length") == "100000"


def test_a_request_from_before_a_reset_adds_nothing_to_served(srv):
    # Each test resets the shared server first: a delayed answer to the test before must not count in this one's
    with socket.create_connection(("127.0.0.1", srv.port)) as late:
        late.sendall(b"GET /bytes/1000?delay=0.3 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.1)
        srv.reset()
        late.settimeout(5)
        while b"\r\n\r\n" not in late.recv(65536):  # the answer goes out after the reset
            pass
    resp, body = get(srv, "/bytes/10")
    assert body == payload(10) and srv.served == 10 and srv.requests == 1


@pytest.mark.parametrize("rng,first,last", [
    ("bytes=10-19", 10, 19), ("bytes=999990-", 999990, 999999),
    ("bytes=-5", 999995, 999999), ("bytes=5-5000000", 5, 999999)])
def test_range(srv, rng, first, last):
    resp, body = get(srv, "/bytes/1000000", {"Range": rng})
    assert resp.status == 206
    assert resp.getheader("Content-Range") == "bytes %d-%d/1000000" % (first, last)
    assert body == payload(1000000)[first:last + 1]


def test_range_unsatisfiable(srv):
    resp, body = get(srv, "/bytes/100", {"Range": "bytes=100-"})
    assert resp.status == 416
    assert resp.getheader("Content-Range") == "bytes */100"
    assert b"416" in body  # an error page, as nginx and apache send


def test_if_range(srv):
    resp, body = get(srv, "/bytes/1000", {"Range": "bytes=10-", "If-Range": '"old"'})
    assert resp.status == 200 and body == payload(1000)
    resp, body = get(srv, "/bytes/1000", {"Range": "bytes=10-", "If-Range": '"1000-0"'})
    assert resp.status == 206 and body == payload(1000)[10:]
    resp, body = get(srv, "/bytes/1000?norange=1", {"Range": "bytes=10-"})
    assert resp.status == 200 and body == payload(1000)
    resp, body = get(srv, "/bytes/1000?novalidator=1", {"Range": "bytes=10-"})
    assert resp.status == 206 and not resp.getheader("ETag") and not resp.getheader("Last-Modified")
    resp, body = get(srv, "/bytes/1000?novalidator=1", {"Range": "bytes=10-", "If-Range": '"1000-0"'})
    assert resp.status == 200 and body == payload(1000)


def test_chunked_ext_trailer_exact_bytes(srv):
    out = raw(srv, b"GET /bytes/5000?chunked=1&chunks=7,1,300&ext=1&trailer=1 HTTP/1.1\r\n"
                   b"Host: x\r\nConnection: close\r\n\r\n")
    head, _, rest = out.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head and b"Content-Length" not in head
    # Decode by hand, checking the wire format the client must cope with.
    body, sizes = b"", []
    while True:
        line, _, rest = rest.partition(b"\r\n")
        size_s, sep, _ext = line.partition(b";")
        assert sep, "every size line carries an extension"
        size = int(size_s, 16)
        if size == 0:
            break
        sizes.append(size)
        body, rest = body + rest[:size], rest[size + 2:]
    assert sizes[:4] == [7, 1, 300, 7]
    assert body == payload(5000)
    assert rest == b"X-Checksum: %s\r\n\r\n" % sha256_of(5000).encode()


def test_chunked_via_http_client_and_nolast(srv):
    resp, body = get(srv, "/json/50?chunked=1&chunks=13")
    assert [o["id"] for o in json.loads(body)] == list(range(50))
    out = raw(srv, b"GET /bytes/3000?chunked=1&nolast=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.endswith(b"\r\n") and not out.endswith(b"0\r\n\r\n")


def test_truncate_closes_early(srv):
    out, err = recv_until_error(srv, b"GET /bytes/10000?truncate=1234 HTTP/1.1\r\n\r\n")
    assert err is None
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"Content-Length: 10000" in head
    assert body == payload(10000)[:1234]  # and recv() saw EOF, or raw() would time out


def test_keyed_drop_happens_once(srv):
    out, err = recv_until_error(srv, b"GET /bytes/200000?drop=1000&key=k1 HTTP/1.1\r\n\r\n")
    assert isinstance(err, ConnectionResetError)  # an RST, unlike truncate's FIN
    assert out.partition(b"\r\n\r\n")[2] == payload(200000)[:1000]
    resp, body = get(srv, "/bytes/200000?drop=1000&key=k1")
    assert resp.status == 200 and body == payload(200000)
    # times=2 with fail=: two failures, then success.
    codes = [get(srv, "/bytes/10?fail=503&retry_after=1&key=k2&times=2")[0].status
             for _ in range(3)]
    assert codes == [503, 503, 200]


def test_files_take_the_fault_options(srv):
    data = b"a file the test chose, not a payload" * 100
    srv.files["app.mpk"] = data
    resp, body = get(srv, "/file/app.mpk")
    assert resp.status == 200 and body == data and resp.getheader("ETag") == '"app.mpk"'
    resp, body = get(srv, "/file/app.mpk", {"Range": "bytes=100-", "If-Range": '"app.mpk"'})
    assert resp.status == 206 and body == data[100:]
    out, err = recv_until_error(srv, b"GET /file/app.mpk?drop=50 HTTP/1.1\r\n\r\n")
    assert isinstance(err, ConnectionResetError) and out.partition(b"\r\n\r\n")[2] == data[:50]
    assert get(srv, "/file/other.mpk")[0].status == 404
    srv.reset()
    assert srv.files == {}


def test_keep_alive_counts_one_connection(srv):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    for n in (10, 20):
        conn.request("GET", "/bytes/%d" % n)
        assert conn.getresponse().read() == payload(n)
    conn.close()
    assert (srv.connections, srv.requests) == (1, 2)
    srv.reset()
    assert json.loads(get(srv, "/stats")[1]) == {"connections": 1, "requests": 1}


def test_echo_redirects_gzip_lower(srv):
    body = json.loads(get(srv, "/echo?a=1", {"X-Mixed-Case": "v"}, method="PUT")[1])
    assert body["method"] == "PUT" and body["path"] == "/echo?a=1"
    assert ["X-Mixed-Case", "v"] in body["headers"]
    resp, _ = get(srv, "/chain/2/bytes/100?code=301")
    assert resp.status == 301 and resp.getheader("Location") == "/chain/1/bytes/100?code=301"
    resp, _ = get(srv, "/chain/0/bytes/100?abs=1")
    assert resp.getheader("Location") == srv.base + "/bytes/100?abs=1"
    resp, body = get(srv, "/bytes/5000?text=1&gzip=1&lower=1")
    assert resp.getheader("content-encoding") == "gzip" and b"\r\ncontent-length:" in \
        raw(srv, b"GET /bytes/10?lower=1 HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert gzip.decompress(body) == text_payload(5000)


def test_stop_does_not_hang_on_stall():
    s = FaultServer().start()
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=5)
    sock.sendall(b"GET /bytes/100000?stall=100&stall_s=30 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    t0 = time.monotonic()
    thread = s._thread
    s.stop()
    assert time.monotonic() - t0 < 2
    assert not thread.is_alive()
    sock.settimeout(2)
    with pytest.raises((ConnectionError, AssertionError)):  # server side is gone
        while sock.recv(65536):
            pass
        raise AssertionError("EOF")
    sock.close()


def test_tls_with_ca(certs):
    with FaultServer(certs) as s:
        assert s.base.startswith("https://")
        for host in ("127.0.0.1", "localhost"):
            conn = http.client.HTTPSConnection(host, s.port, timeout=5,
                                               context=certs.client_ctx())
            conn.request("GET", "/bytes/1000")
            assert conn.getresponse().read() == payload(1000)
            conn.close()
        wrong = ssl.create_default_context(cafile=certs.other_ca_pem_path)
        conn = http.client.HTTPSConnection("127.0.0.1", s.port, timeout=5, context=wrong)
        with pytest.raises(ssl.SSLCertVerificationError):
            conn.request("GET", "/bytes/10")
        conn.close()
    assert certs.ca_der == ssl.PEM_cert_to_DER_cert(certs.ca_pem)
    assert open(certs.ca_der_path, "rb").read() == certs.ca_der


def test_real_server(tmp_path):
    digest = RealServer.make_file(str(tmp_path), "f.bin", 300000, seed=5)
    with RealServer(str(tmp_path)) as s:
        thread = s._thread
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=5)
        conn.request("GET", "/files/f.bin", headers={"Range": "bytes=100-199"})
        resp = conn.getresponse()
        assert resp.status == 206 and resp.read() == payload(300000, 5)[100:200]
        conn.request("GET", "/stream/100000")
        resp = conn.getresponse()
        assert resp.getheader("Transfer-Encoding") == "chunked"
        assert resp.read() == payload(100000)
        conn.request("GET", "/files/f.bin")
        assert hashlib.sha256(conn.getresponse().read()).hexdigest() == digest
        conn.close()
        assert s.connections == 1
    assert not thread.is_alive()


def test_cli(tmp_path):
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "testservers.py"),
                             "--tls", str(tmp_path), "--real", str(tmp_path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        info = json.loads(proc.stdout.readline())
        assert info["fault"].startswith("https://127.0.0.1:") and info["real"]
        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        port = int(info["fault"].rsplit(":", 1)[1])
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=ctx)
        conn.request("GET", "/json/3")
        assert len(json.loads(conn.getresponse().read())) == 3
        conn.close()
        proc.stdin.close()  # closing stdin is the shutdown signal
        assert proc.wait(5) == 0
        assert proc.stdout.read() == b""  # one line, nothing else
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- answers a client must not trust

def test_a_resource_that_changes_while_if_range_is_ignored(srv):
    url = "/bytes/1000?key=v&newer=2&ifrange=ignore"
    resp, body = get(srv, url)
    assert body == payload(1000) and resp.getheader("ETag") == '"1000-0"'
    old_date = resp.getheader("Last-Modified")
    # the second request sees the next version, and its Range is served although If-Range names the old one
    resp, body = get(srv, url, {"Range": "bytes=10-", "If-Range": '"1000-0"'})
    assert resp.status == 206 and body == payload(1000, 1)[10:]
    assert resp.getheader("ETag") == '"1000-1"' and resp.getheader("Last-Modified") != old_date
    # honoured (the default), the same If-Range brings the whole new version
    resp, body = get(srv, "/bytes/1000?key=w&newer=2")
    resp, body = get(srv, "/bytes/1000?key=w&newer=2", {"Range": "bytes=10-", "If-Range": '"1000-0"'})
    assert resp.status == 200 and body == payload(1000, 1)


def test_a_weak_etag_changes_with_each_version_and_matches_no_if_range(srv):
    resp, body = get(srv, "/bytes/1000?key=k&newer=2&weak=1")
    assert body == payload(1000) and resp.getheader("ETag") == 'W/"1000-0"'
    # named in If-Range it matches nothing (RFC 9110 13.1.5: a strong comparison), so the Range comes whole
    resp, body = get(srv, "/bytes/1000?key=k&newer=2&weak=1", {"Range": "bytes=10-", "If-Range": 'W/"1000-1"'})
    assert resp.status == 200 and body == payload(1000, 1) and resp.getheader("ETag") == 'W/"1000-1"'
    # a Range without If-Range is served from whatever version is there now
    resp, body = get(srv, "/bytes/1000?key=k&newer=2&weak=1", {"Range": "bytes=10-"})
    assert resp.status == 206 and body == payload(1000, 1)[10:]
    # weak=first: the key's first answer only, as apache's for a file that has just changed, a second later
    tags = [get(srv, "/bytes/1000?key=f&weak=first")[0].getheader("ETag") for _ in range(2)]
    assert tags == ['W/"1000-0"', '"1000-0"']


def test_versions_grow_keep_a_pinned_etag_or_change_only_the_etag(srv):
    get(srv, "/bytes/1000?key=g&newer=2&grow=500&etag=fixed")
    resp, body = get(srv, "/bytes/1000?key=g&newer=2&grow=500&etag=fixed", {"Range": "bytes=10-", "If-Range": "fixed"})
    assert resp.getheader("Content-Range") == "bytes 10-1499/1500" and body == payload(1500, 1)[10:]
    etags = [get(srv, "/bytes/1000?key=t&churn=1&tagonly=1")[0].getheader("ETag") for _ in range(3)]
    assert etags == ['"1000-0"', '"1000-1"', '"1000-2"']
    assert get(srv, "/bytes/1000?key=t&churn=1&tagonly=1")[1] == payload(1000)  # the bytes never change


def test_unasked_short_and_lying_ranges_and_lengths(srv):
    resp, body = get(srv, "/bytes/1000?unasked=100-199")
    assert resp.status == 206 and resp.getheader("Content-Range") == "bytes 100-199/1000"
    assert body == payload(1000)[100:200]
    resp, body = get(srv, "/bytes/1000?rangemax=50", {"Range": "bytes=100-"})
    assert resp.getheader("Content-Range") == "bytes 100-149/1000" and body == payload(1000)[100:150]
    resp, body = get(srv, "/bytes/1000?crange=bytes%%20100-%d/%d" % (2 ** 70 - 1, 2 ** 70), {"Range": "bytes=100-"})
    assert resp.getheader("Content-Range") == "bytes 100-%d/%d" % (2 ** 70 - 1, 2 ** 70)
    out = raw(srv, b"GET /bytes/1000?length=4611686018427387904 HTTP/1.1\r\n\r\n")  # then the server closes
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"Content-Length: 4611686018427387904" in head and body == payload(1000)


def dechunk(rest):
    """A chunked body's data, and what follows its last chunk."""
    body = b""
    while True:
        line, _, rest = rest.partition(b"\r\n")
        size = int(line.split(b";")[0], 16)
        if not size:
            return body, rest
        body, rest = body + rest[:size], rest[size + 2:]


def test_transfer_and_content_codings(srv):
    def answer(query):
        head, _, rest = raw(srv, b"GET /bytes/3000?%s HTTP/1.1\r\nConnection: close\r\n\r\n" % query).partition(
            b"\r\n\r\n")
        return head, rest
    flipped = bytes(b ^ 0xFF for b in payload(3000))
    head, rest = answer(b"te=gzip,%20chunked&length=10")
    assert b"Transfer-Encoding: gzip, chunked" in head and b"Content-Length: 10" in head
    assert gzip.decompress(dechunk(rest)[0]) == payload(3000)
    head, rest = answer(b"te=chunkeda")
    assert b"Transfer-Encoding: chunkeda" in head and dechunk(rest) == (flipped, b"\r\n")
    head, rest = answer(b"te=%0D%0A%20chunked")  # a folded line
    assert b"Transfer-Encoding: \r\n chunked\r\n" in head and dechunk(rest)[0] == payload(3000)
    for ce, decoded in ((b"br", flipped), (b"identity, gzip", gzip.compress(payload(3000), mtime=0)),
                        (b"gzip, gzip", gzip.compress(gzip.compress(payload(3000), mtime=0), mtime=0))):
        head, rest = answer(b"ce=" + ce.replace(b" ", b"%20"))
        assert b"Content-Encoding: " + ce + b"\r\n" in head and rest == decoded


def test_gzip_bomb_and_padded_heads(srv):
    resp, body = get(srv, "/bytes/10?bomb=20")
    assert resp.getheader("Content-Encoding") == "gzip" and len(body) < 30000
    assert gzip.decompress(body) == bytes(20 << 20)
    head = raw(srv, b"GET /bytes/10?pad=99&padlen=300 HTTP/1.1\r\nConnection: close\r\n\r\n").partition(b"\r\n\r\n")[0]
    pads = [line for line in head.split(b"\r\n") if line.startswith(b"X-Pad-")]
    assert len(pads) == 99 and {len(line) + 2 for line in pads} == {300}


def test_drip_sends_the_head_a_byte_at_a_time(srv):
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as s:
        s.sendall(b"GET /bytes/10?drip=5 HTTP/1.1\r\nConnection: close\r\n\r\n")
        reads, data = 0, b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
            reads += 1
        assert reads >= len(data) // 2  # (the kernel may merge a few)
        while True:
            more = s.recv(65536)
            if not more:
                break
            data += more
    assert data.partition(b"\r\n\r\n")[2] == payload(10)


def test_log_tells_the_connection_and_the_time(srv):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    for _ in range(2):
        conn.request("GET", "/bytes/10", headers={"Range": "bytes=1-"})
        conn.getresponse().read()
    conn.close()
    get(srv, "/bytes/10")
    assert [(r.connection, r.target, r.headers.get("range")) for r in srv.log] == [
        (1, "/bytes/10", "bytes=1-"), (1, "/bytes/10", "bytes=1-"), (2, "/bytes/10", None)]
    assert srv.log[0].t <= srv.log[1].t <= srv.log[2].t


@pytest.mark.parametrize("leaf", ["wrong_host", "expired", "self_signed"])
def test_tls_leaves_that_must_not_verify(certs, leaf):
    with FaultServer(certs, leaf=leaf) as s:
        conn = http.client.HTTPSConnection("localhost", s.port, timeout=5, context=certs.client_ctx())
        with pytest.raises(ssl.SSLCertVerificationError) as e:
            conn.request("GET", "/bytes/10")
        conn.close()
        # unverified, the same server answers
        conn = http.client.HTTPSConnection("localhost", s.port, timeout=5, context=ssl._create_unverified_context())
        conn.request("GET", "/bytes/10")
        assert conn.getresponse().read() == payload(10)
        conn.close()
    assert {"wrong_host": "Hostname mismatch", "expired": "expired", "self_signed": "self-signed"}[leaf] in str(e.value)

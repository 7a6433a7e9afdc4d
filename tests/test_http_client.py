"""aiohttp client on MicroPython: what it refuses to send, and what it refuses to receive.

Bad URLs and header injection fail with ValueError before a single byte goes out; malformed or oversized
response heads are a ClientResponseError (never a MemoryError, never a hang).
"""
import socket
import threading

import pytest

from tools.testservers import sha256_of


# ---------------------------------------------------------------- refused before any byte is sent

REFUSE = """
import aiohttp

async def attempt(make):
    try:
        async with aiohttp.ClientSession(**make.get("session", {})) as session:
            async with session.request(make.get("method", "GET"), make["url"], **make.get("kw", {})) as resp:
                await resp.read()
                return "sent", resp.status
    except ValueError as e:
        return type(e).__name__, None
    except aiohttp.ClientError as e:
        return type(e).__name__, None

async def main():
    for case in CASES:
        err, status = await attempt(case)
        result(case=case, err=err, status=status,
               is_value_error=err in ("ValueError", "InvalidURL"))

run(main())
"""


def refused(mpy, fault, cases):
    r = mpy.run(REFUSE, CASES=cases)
    assert len(r.results) == len(cases)
    bad = [x for x in r.results if not x["is_value_error"]]
    assert not bad, bad
    assert fault.connections == 0 and fault.requests == 0  # not a byte went out


def test_header_injection_is_refused(mpy, fault):
    url = fault.url("/echo")
    values = ["a\r\nX-Injected: 1", "a\nb", "a\rb", "a\0b", "\r\n\r\nGET / HTTP/1.1"]
    names = ["X-A\r\nX-B", "X\nY", "X\0Y", "", "Bad Name", "Bad:Name", "Bad\tName", "X-\x01", "X(y)", "X\x7f"]
    cases = [{"url": url, "kw": {"headers": {"X-Test": v}}} for v in values]
    cases += [{"url": url, "kw": {"headers": {n: "v"}}} for n in names]
    # the same through session-wide headers
    cases += [{"url": url, "session": {"headers": {"X-Test": values[0]}}},
              {"url": url, "session": {"headers": {names[0]: "v"}}}]
    refused(mpy, fault, cases)


def test_bad_methods_are_refused(mpy, fault):
    url = fault.url("/echo")
    refused(mpy, fault, [{"url": url, "method": m} for m in ["GET /x HTTP/1.1\r\n", "GE T", "", "G\r\nET"]])


def test_bad_urls_are_refused(mpy, fault):
    p = fault.port
    urls = [
        "ftp://127.0.0.1:%d/x" % p, "file:///etc/passwd", "javascript:alert(1)", "ws://127.0.0.1:%d/" % p,
        "127.0.0.1:%d/x" % p, "//127.0.0.1:%d/x" % p, "/bytes/10", "", "http://", "http:///x", "http://:%d/" % p,
        "http://127.0.0.1:0/", "http://127.0.0.1:65536/", "http://127.0.0.1:-1/", "http://127.0.0.1:8o/",
        "http://127.0.0.1:/x", "http://127.0.0.1:%d:1/" % p, "http://[::1/x", "http://u:pw@127.0.0.1:%d/" % p,
        "http://127.0.0.1:%d/a b" % p, "http://127.0.0.1:%d/a\r\nX: y" % p, "http://127.0.0.1:%d/\0" % p,
        "http://127.0.0.1:%d/\t" % p,
    ]
    cases = [{"url": u} for u in urls]
    # query parameters can't smuggle a line break in either
    cases.append({"url": fault.url("/echo"), "kw": {"params": {"q": "1 HTTP/1.1\r\nX-Injected: 1"}}})
    refused(mpy, fault, cases)


def test_invalid_url_is_a_value_error_subclass(mpy):
    r = mpy.run("""
import aiohttp
async def main():
    async with aiohttp.ClientSession() as session:
        try:
            await session.get("gopher://example.org/")
        except ValueError as e:  # catching ValueError is enough
            result(err=type(e).__name__, sub=issubclass(aiohttp.InvalidURL, ValueError))
run(main())
""")
    assert r.value == {"err": "InvalidURL", "sub": True}


def test_good_requests_still_go_out(mpy, fault):
    # the counterpart of the refusals: ordinary headers, query strings and ports are fine
    r = mpy.run("""
import aiohttp
async def main():
    async with aiohttp.ClientSession(headers={"User-Agent": "mpos/1.0", "X-Over": "session"}) as session:
        hs = {"X-Num": 5, "Accept": "*/*", "x-over": "request"}
        async with session.get(URL, params={"b": "2"}, headers=hs) as resp:
            e = await resp.json()
            result(path=e["path"], headers=e["headers"])
run(main())
""", URL=fault.url("/echo?a=1"))
    h = dict((k.lower(), v) for k, v in r.value["headers"])
    assert r.value["path"] == "/echo?a=1&b=2"
    assert (h["user-agent"], h["x-num"], h["accept"]) == ("mpos/1.0", "5", "*/*")
    # a request's header replaces the session's of the same name, whatever its case: sent once
    assert [v for k, v in r.value["headers"] if k.lower() == "x-over"] == ["request"]
    assert fault.requests == 1


# ---------------------------------------------------------------- malformed and oversized response heads

BIG = 20000
RESPONSES = {
    "/ok": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "/long-header": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * BIG + b"\r\nContent-Length: 2\r\n\r\nok",
    "/long-status": b"HTTP/1.1 200 " + b"O" * BIG + b"\r\nContent-Length: 2\r\n\r\nok",
    "/no-newline": b"HTTP/1.1 200 OK" + b"x" * BIG,
    "/many-headers": b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(1000))
                     + b"Content-Length: 2\r\n\r\nok",
    # each line under the per-line limit, but together far more than a small device's heap can hold
    "/huge-head": b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 8000) for i in range(99))
                  + b"Content-Length: 2\r\n\r\nok",
    # 32,065 bytes: just under the 32 KB a whole head may take
    "/head-at-limit": b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 8000) for i in range(4))
                      + b"Content-Length: 2\r\n\r\nok",
    "/garbage": b"SSH-2.0-OpenSSH_9.0\r\n\r\n",
    "/http09": b"<html>hello</html>\r\n",
    "/bad-status": b"HTTP/1.1 OK 200\r\nContent-Length: 2\r\n\r\nok",
    "/bad-header": b"HTTP/1.1 200 OK\r\nno colon here\r\nContent-Length: 2\r\n\r\nok",
    "/bad-length": b"HTTP/1.1 200 OK\r\nContent-Length: lots\r\n\r\nok",
    "/bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n",
    # size lines that look almost right; they arrive with the head, so the in-place parser sees them first
    "/chunk-ctl": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\x15\r\nhello\r\n0\r\n\r\n",
    "/chunk-cr-junk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\rX\nhello\r\n0\r\n\r\n",
    "/chunk-digit-ctl": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\x10\r\nhello\r\n0\r\n\r\n",
    "/chunk-upper": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nA;x=1\r\n0123456789\r\n0\r\n\r\n",
    "/latin1-header": b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9\r\nContent-Length: 2\r\n\r\nok",
    # one field in UTF-8, one in latin-1 (value and name): each is decoded on its own
    "/mixed-header": b"HTTP/1.1 200 OK\r\nX-Utf: caf\xc3\xa9\r\nX-Lat: caf\xe9\r\nX-Caf\xe9: 1\r\n"
                     b"Content-Length: 2\r\n\r\nok",
    # only whitespace is trimmed from a value: a control byte makes the length unreadable
    "/ctl-length": b"HTTP/1.1 200 OK\r\nContent-Length: 2\x01\r\n\r\nok",
    "/chunk-negative": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n-1;x\r\nabc\r\n0\r\n\r\n",
    "/empty": b"",
    "/fields": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nSet-Cookie: a=1\r\nX-Odd:  spaced value \r\n"
               b"set-cookie: b=2\r\nETag: \"v1:x\"\r\nContent-Length: 2\r\n\r\nok",
}


class RawServer:
    """Answers each connection with one canned byte string chosen by the request path, then closes."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    @staticmethod
    def _answer(conn):
        with conn:
            conn.settimeout(5)
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    part = conn.recv(4096)
                    if not part:
                        return
                    head += part
                path = head.split(b" ", 2)[1].decode()
                conn.sendall(RESPONSES[path])
                conn.shutdown(socket.SHUT_WR)
                while conn.recv(4096):  # let the client close first: no RST over unread data
                    pass
            except OSError:
                pass

    def close(self):
        self.sock.close()


@pytest.fixture(scope="module")
def raw():
    srv = RawServer()
    yield srv
    srv.close()


HEAD = """
import aiohttp, gc

async def main():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        ballast = leave_free(FREE) if FREE else None
        for path in PATHS:
            try:
                async with session.get(URL + path) as resp:
                    body = await resp.read()
                    result(path=path, status=resp.status, body=body.decode(), n=len(resp.headers))
            except Exception as e:  # MemoryError too: it must not be one
                result(path=path, err=type(e).__name__, status=getattr(e, "status", None))

run(main())
"""


def heads(mpy, raw, paths, free=None):
    r = mpy.run(HEAD, URL=raw.url(""), PATHS=paths, FREE=free)
    return {x["path"]: x for x in r.results}


def test_well_formed_raw_response(mpy, raw):
    assert heads(mpy, raw, ["/ok"])["/ok"] == {"path": "/ok", "status": 200, "body": "ok", "n": 1}


@pytest.mark.parametrize("path", ["/long-header", "/long-status", "/no-newline", "/many-headers",
                                  "/garbage", "/http09", "/bad-status", "/bad-header", "/bad-length", "/ctl-length"])
def test_malformed_or_oversized_head_is_a_client_response_error(mpy, raw, path):
    assert heads(mpy, raw, [path])[path]["err"] == "ClientResponseError"


def test_heads_up_to_32_kb_are_read_in_80_kb_of_heap_and_bigger_ones_refused(mpy, raw):
    # 99 lines of 8 KB each: every line is allowed, their sum (800 KB) is not. A head is kept as the bytes it
    # came in, not a str per line and per field and their join (which needed 195 KB for the 32 KB one).
    got = heads(mpy, raw, ["/huge-head", "/head-at-limit", "/ok"], free=80 * 1024)
    assert got["/huge-head"].get("err") == "ClientResponseError", got
    assert (got["/head-at-limit"].get("body"), got["/head-at-limit"].get("n")) == ("ok", 5), got
    assert got["/ok"]["body"] == "ok"  # and the client goes on working


@pytest.mark.parametrize("path", ["/bad-chunk", "/chunk-ctl", "/chunk-cr-junk", "/chunk-digit-ctl"])
def test_bad_chunk_size_is_a_payload_error(mpy, raw, path):
    assert heads(mpy, raw, [path])[path]["err"] == "ClientPayloadError"


@pytest.mark.parametrize("how", ["read", "read_n", "readinto"])
def test_a_negative_chunk_size_is_a_payload_error_however_the_body_is_read(mpy, raw, how):
    # int(b"-1", 16) is -1: read(n) took it for a count, and ended the body early as if it were complete
    v = mpy.run("""
import aiohttp
async def main():
    async with aiohttp.ClientSession() as session:
        async with session.get(URL) as resp:
            got = b""
            try:
                if HOW == "read":
                    got = await resp.read()
                else:
                    buf = bytearray(4)
                    while True:
                        if HOW == "read_n":
                            b = await resp.content.read(4)
                        else:
                            b = bytes(buf[:await resp.content.readinto(buf)])
                        if not b:
                            break
                        got += b
                result(err=None, got=got.decode())
            except aiohttp.ClientError as e:
                result(err=type(e).__name__, got=got.decode())
run(main())
""", URL=raw.url("/chunk-negative"), HOW=how).value
    assert v["err"] == "ClientPayloadError", v


def test_upper_case_chunk_size_with_an_extension(mpy, raw):
    assert heads(mpy, raw, ["/chunk-upper"])["/chunk-upper"]["body"] == "0123456789"


def test_closed_without_a_response(mpy, raw):
    assert heads(mpy, raw, ["/empty"])["/empty"]["err"] == "ServerDisconnectedError"


def test_non_utf8_header_value_does_not_break_the_response(mpy, raw):
    got = heads(mpy, raw, ["/latin1-header"])["/latin1-header"]
    assert got == {"path": "/latin1-header", "status": 200, "body": "ok", "n": 2}


def test_oversized_head_then_normal_download_from_the_fault_server(mpy, raw, fault):
    r = mpy.run("""
import aiohttp
async def main():
    async with aiohttp.ClientSession() as session:
        result(err=(await error_of(session.get(BAD)))[0])
        async with session.get(GOOD) as resp:
            result(sha=sha256(await resp.read()))
run(main())
""", BAD=raw.url("/long-header"), GOOD=fault.url("/bytes/100000"))
    assert r.results == [{"err": "ClientResponseError"}, {"sha": sha256_of(100000)}]


def test_response_headers_read_like_aiohttps(mpy, raw):
    # any case to look up; repeated fields joined by get() and listed by getall(); names listed in lower case
    r = mpy.run("""
import aiohttp
async def main():
    async with aiohttp.ClientSession() as session:
        async with session.get(URL) as resp:
            h = resp.headers
            try:
                h["X-Missing"]
                missing = "no KeyError"
            except KeyError:
                missing = "KeyError"
            result(ct=h["CONTENT-TYPE"], odd=h.get("x-odd"), cookie=h.get("Set-Cookie"), all=h.getall("set-cookie"),
                   etag=h["etag"], has=["etag" in h, "ETAG" in h, "Nope" in h], missing=missing,
                   default=h.get("nope", "d"), n=len(h), items=h.items(), keys=list(h),
                   body=await resp.text())
        async with session.get(MIXED) as resp:  # one field in UTF-8, one in latin-1: each decoded on its own
            h = resp.headers
            result(items=h.items(), utf=h["x-utf"], lat=h["X-LAT"], values=[h[k] for k in h])
run(main())
""", URL=raw.url("/fields"), MIXED=raw.url("/mixed-header"))
    v, mixed = r.results
    cafe = "caf\u00e9"
    assert mixed["items"] == [["x-utf", cafe], ["x-lat", cafe], ["x-" + cafe, "1"], ["content-length", "2"]]
    assert (mixed["utf"], mixed["lat"], mixed["values"]) == (cafe, cafe, [cafe, cafe, "1", "2"])
    assert v["ct"] == "text/plain" and v["odd"] == "spaced value" and v["etag"] == '"v1:x"'
    assert v["cookie"] == "a=1, b=2" and v["all"] == ["a=1", "b=2"]
    assert v["has"] == [True, True, False] and v["missing"] == "KeyError" and v["default"] == "d"
    assert v["n"] == 6 and v["keys"] == ["content-type", "set-cookie", "x-odd", "set-cookie", "etag", "content-length"]
    assert v["items"][0] == ["content-type", "text/plain"] and v["body"] == "ok"

"""aiohttp client on MicroPython: what it refuses to send, and what it refuses to receive.

Bad URLs and header injection fail with ValueError before a single byte goes out; malformed or oversized
response heads are a ClientResponseError (never a MemoryError, never a hang).
"""

import base64
import codecs
import hashlib

import pytest

from tools.testservers import ScriptServer, sha256_of, text_payload


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
               is_value_error=err in ("ValueError", "InvalidURL", "InvalidUrlClientError", "NonHttpUrlClientError"))

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
    # the same through session-wide headers, and as (name, value) pairs
    cases += [{"url": url, "session": {"headers": {"X-Test": values[0]}}},
              {"url": url, "session": {"headers": {names[0]: "v"}}},
              {"url": url, "kw": {"headers": [["X-Ok", "v"], ["X-Test", values[0]]]}},
              {"url": url, "session": {"headers": [[names[0], "v"]]}}]
    refused(mpy, fault, cases)


def test_a_url_with_credentials_is_refused_without_quoting_them(mpy, fault):
    # apps log the error's message: the password stays out of it (BasicAuth is the way to send one)
    r = mpy.run("""
import aiohttp
async def main():
    try:
        await aiohttp.ClientSession().get(URL)
    except aiohttp.InvalidUrlClientError as e:
        result(message=str(e))
run(main())
""", URL="http://app:s3cr3t@127.0.0.1:%d/x" % fault.port)
    assert "s3cr3t" not in r.value["message"] and "127.0.0.1:%d" % fault.port in r.value["message"], r.value
    assert fault.connections == 0


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
        "http://127.0.0.1:%d/\t" % p, "http://127.0.0.1:%d/\x7f" % p,
    ]
    refused(mpy, fault, [{"url": u} for u in urls])


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
    assert r.value == {"err": "NonHttpUrlClientError", "sub": True}


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


def test_params_and_form_data_are_encoded(mpy, fault):
    # what a value holds stays in it: "&" adds no field, CR LF no header line, "#" ends nothing
    r = mpy.run("""
import aiohttp
async def main():
    async with aiohttp.ClientSession() as session:
        params = {"q": "1 HTTP/1.1\\r\\nX-Injected: 1", "a&b": "c=d#\\u00e9"}
        async with session.get(URL + "#part", params=params) as resp:
            e = await resp.json()
            result(path=e["path"], injected=[k for k, v in e["headers"] if k == "X-Injected"], url=resp.url)
        async with session.get(URL, params=[("n", 1), ("n", 2.5)]) as resp:
            result(path=(await resp.json())["path"])
        async with session.post(URL, data={"msg": "a&admin=1 b", "x": "/"}) as resp:
            e = await resp.json()
            result(sha=e["body_sha256"], ct=[v for k, v in e["headers"] if k.lower() == "content-type"])
run(main())
""", URL=fault.url("/echo"))
    get, pairs, post = r.results
    assert get == {"path": "/echo?q=1+HTTP%2F1.1%0D%0AX-Injected%3A+1&a%26b=c%3Dd%23%C3%A9", "injected": [],
                   "url": fault.url("/echo") + "?q=1+HTTP%2F1.1%0D%0AX-Injected%3A+1&a%26b=c%3Dd%23%C3%A9"}
    assert pairs == {"path": "/echo?n=1&n=2.5"}
    assert post == {"sha": hashlib.sha256(b"msg=a%26admin%3D1+b&x=%2F").hexdigest(),
                    "ct": ["application/x-www-form-urlencoded"]}


def test_a_request_body_carries_aiohttps_content_type(mpy, fault):
    # unless the caller gives one: bytes-like as application/octet-stream, str as UTF-8 text, json= as JSON; an
    # empty body none (as MicroPythonOS's aiohttp: its app store reports POST nothing)
    r = mpy.run("""
import aiohttp
async def main():
    async with aiohttp.ClientSession() as session:
        for kw in ({"data": b"\\x00\\xff"}, {"data": bytearray(b"ab")}, {"data": memoryview(b"abcd")[1:3]},
                   {"data": "caf\\u00e9"}, {"json": [1]}, {"data": b"<a/>", "headers": {"content-type": "text/xml"}},
                   {"data": b""}):
            async with session.post(URL, **kw) as resp:
                e = await resp.json()
                result(type=[v for k, v in e["headers"] if k.lower() == "content-type"], sha=e["body_sha256"])
        try:
            await session.post(URL, data=42)
        except TypeError as e:
            result(err=str(e))
        try:
            await session.post(URL, data=b"a", json=[1])
        except ValueError as e:
            result(err=str(e))
run(main())
""", URL=fault.url("/echo"))
    types = [["application/octet-stream"]] * 3 + [["text/plain; charset=utf-8"], ["application/json"], ["text/xml"], []]
    bodies = [b"\x00\xff", b"ab", b"bc", "caf\u00e9".encode(), b"[1]", b"<a/>", b""]
    assert r.results == [{"type": t, "sha": hashlib.sha256(b).hexdigest()} for t, b in zip(types, bodies)] + [
        {"err": "data must be bytes, str, a dict of form fields, a file opened 'rb' or an async iterable, not int"},
        {"err": "data and json parameters can not be used at the same time"}]  # (aiohttp's words)
    assert fault.requests == len(bodies)  # the ones refused sent nothing


def test_basic_auth_for_a_session_or_one_request_as_in_aiohttp(mpy, fault):
    # latin-1 by default, as aiohttp encodes it; a request's auth= wins over the session's; an Authorization header
    # beside auth= is refused; a redirect to another origin drops the credentials
    r = mpy.run("""
import aiohttp
def sent(echo):
    return [v for k, v in echo["headers"] if k.lower() == "authorization"]
async def main():
    async with aiohttp.ClientSession(auth=aiohttp.BasicAuth("user", "p\u00e4ss")) as session:
        async with session.get(URL + "/echo") as resp:
            result(sent=sent(await resp.json()))
        async with session.get(URL + "/echo", auth=aiohttp.BasicAuth("other", "\u20ac", "utf-8")) as resp:
            result(sent=sent(await resp.json()))
        async with session.get(URL + "/redirect?to=" + ELSEWHERE) as resp:
            result(sent=sent(await resp.json()))
        try:
            await session.get(URL + "/echo", headers={"Authorization": "Bearer t"})
        except ValueError as e:
            result(err=str(e))
run(main())
""", URL=fault.url(""), ELSEWHERE="http://localhost:%d/echo" % fault.port)
    assert r.results == [{"sent": ["Basic " + base64.b64encode("user:p\u00e4ss".encode("latin-1")).decode()]},
                         {"sent": ["Basic " + base64.b64encode("other:\u20ac".encode()).decode()]},
                         {"sent": []},
                         {"err": "Cannot combine AUTHORIZATION header with AUTH argument"}]
    assert fault.requests == 4


def test_a_tcp_connector_sets_up_the_sessions_connections_as_in_aiohttp(mpy, fault_tls, fault):
    # ssl=False: TLS without verification (the test certificate's CA is nowhere); force_close: none is reused
    r = mpy.run("""
import aiohttp
async def main():
    for connector in (aiohttp.TCPConnector(ssl=False, limit=2), aiohttp.TCPConnector(force_close=True)):
        async with aiohttp.ClientSession(connector=connector) as session:
            for url in URLS:
                async with session.get(url) as resp:
                    result(sha=sha256(await resp.read()))
    try:
        aiohttp.TCPConnector(family=2)
    except TypeError:
        result(err="TypeError")
run(main())
""", URLS=[fault_tls.url("/bytes/100"), fault_tls.url("/bytes/100"), fault.url("/bytes/100")])
    assert r.results == [{"sha": sha256_of(100)}] * 6 + [{"err": "TypeError"}]
    assert (fault_tls.connections, fault.connections) == (1 + 2, 1 + 1)  # kept alive, then closed after each


def test_params_may_be_a_query_string_as_in_aiohttp(mpy, fault):
    # taken as it is, already encoded ("%2F" stays, "&" and "=" separate); what no query may hold is encoded
    r = mpy.run("""
import aiohttp
async def main():
    async with aiohttp.ClientSession() as session:
        for params in ("a=1&b=x%2Fy", "q=caf\\u00e9 au lait#top", "x=1\\r\\nX-Injected: 1", 'q="a"<b>{c}|d'):
            async with session.get(URL + "?n=0", params=params) as resp:
                e = await resp.json()
                result(path=e["path"], injected=[k for k, v in e["headers"] if k == "X-Injected"])
run(main())
""", URL=fault.url("/echo"))
    assert r.results == [{"path": "/echo?n=0&a=1&b=x%2Fy", "injected": []},
                         {"path": "/echo?n=0&q=caf%C3%A9+au+lait%23top", "injected": []},
                         {"path": "/echo?n=0&x=1%0D%0AX-Injected:+1", "injected": []},
                         {"path": "/echo?n=0&q=%22a%22%3Cb%3E%7Bc%7D%7Cd", "injected": []}]


def test_session_headers_are_copied_and_a_host_header_of_ones_own_is_sent(mpy, fault):
    r = mpy.run("""
import aiohttp
async def main():
    h = {"X-A": "1"}
    async with aiohttp.ClientSession(headers=h) as session:
        h["X-A"] = "1\\r\\nX-Injected: yes"  # changed after the session checked it: not what it sends
        async with session.get(URL, headers={"host": "virtual.example"}) as resp:
            result(headers=(await resp.json())["headers"])
run(main())
""", URL=fault.url("/echo"))
    sent = r.value["headers"]
    assert [v for k, v in sent if k == "X-A"] == ["1"] and "X-Injected" not in [k for k, v in sent]
    assert [v for k, v in sent if k.lower() == "host"] == ["virtual.example"]


def test_headers_may_be_pairs_or_a_multidict_as_in_aiohttp(mpy, fault):
    # A request's field replaces the session's of its name; a name given twice is sent once with both values
    # (RFC 9110 section 5.3: the same meaning as two lines; Cookie values join with "; ", RFC 6265 section 5.4)
    r = mpy.run("""
import aiohttp
async def main():
    async with aiohttp.ClientSession(headers=[("Accept", "text/html"), ("Accept", "*/*"), ("X-App", "demo")]) as s:
        async with s.get(URL, headers=[("x-app", "mine"), ("Cookie", "a=1"), ("Cookie", "b=2"), ("X-N", 5)]) as resp:
            sent = (await resp.json())["headers"]
            result(sent=sorted(kv for kv in sent if kv[0].lower() in ("accept", "x-app", "cookie", "x-n")))
            forwarded = resp.headers  # a response's CIMultiDictProxy, as a mapping
        async with s.get(URL, headers=forwarded) as resp:
            result(sent=[kv for kv in (await resp.json())["headers"] if kv[0].lower() == "content-type"])
run(main())
""", URL=fault.url("/echo"))
    assert r.results == [
        {"sent": [["Accept", "text/html, */*"], ["Cookie", "a=1; b=2"], ["X-N", "5"], ["x-app", "mine"]]},
        {"sent": [["content-type", "application/json"]]}]


def test_a_session_made_with_an_http_version_as_micropythonos_aiohttp_took_it(mpy, fault):
    # MicroPythonOS's bundled aiohttp (micropython-lib's) exported HttpVersion10 and HttpVersion11 and took
    # ClientSession(version=...), as CPython's does; its examples pass version=aiohttp.HttpVersion11. Requests go out
    # as HTTP/1.1 whichever is named: every server answers it.
    r = mpy.run("""
import aiohttp
async def main():
    for version in (aiohttp.HttpVersion11, aiohttp.HttpVersion10):
        async with aiohttp.ClientSession(headers={"Accept-Encoding": "gzip,deflate"}, version=version) as session:
            async with session.get(URL) as response:
                result(status=response.status, type=response.headers["Content-Type"], n=len(await response.json()))
run(main())
""", URL=fault.url("/json/5?gzip=1"))
    assert r.results == [{"status": 200, "type": "application/json", "n": 5}] * 2
    assert [request.headers.get("accept-encoding") for request in fault.log] == ["gzip,deflate"] * 2


# ---------------------------------------------------------------- malformed and oversized response heads

# Bodies that are not valid in the charset they are labelled with (None: no charset), each decoded with every error
# handler. BAD_UTF8: a lone continuation byte, bytes no UTF-8 has, an overlong form, a surrogate, a code point past
# U+10FFFF, sequences cut short in the middle and at the end.
BAD_UTF8 = (b"ok \xe2\x82\xac \xe9t\xc3\xa9 \x80 \xc0\x80 \xed\xa0\x80 \xf4\x90\x80\x80 \xe2\x82! \xf0\x9f\x98!"
            b" \xff \xf0\x9f\x98\x80 \xe2\x82")
# LAX_UTF8: only sequences MicroPython's own decode() takes (overlong forms, a surrogate, code points past U+10FFFF);
# NARROW_UTF8: characters whose lead bytes start those too (U+0904, U+D7A3, U+1F600, U+10FFFF), all well-formed.
LAX_UTF8 = b"\xc0\xaf \xe0\x80\xaf \xf0\x80\x80\xaf \xed\xa0\x80 \xf4\x90\x80\x80 \xf5\x80\x80\x80 \xc1\xbf ok"
NARROW_UTF8 = "\u0904 \ud7a3 \U0001f600 \U0010ffff".encode()
# Sequences, well-formed and not, across the 1 KB spans text() decodes one at a time (aiohttp/charset.py), a bad
# byte after them so that the spans are decoded one by one; -> path: (label, body)
SPAN_CUTS = [("utf-8", 1024 - k, seq.encode() + b"\xff") for seq in ("\u00e9", "\u20ac", "\U0001f600")
             for k in range(1, len(seq.encode()) + 1)] + [
    ("utf-8", 1023, b"\xe2\x82b \xff"),  # a sequence cut short across the boundary
    ("utf-8", 1022, b"\xf0\x9f\x98\x80\x80\x80 \xff"),  # continuation bytes past a whole sequence
    ("utf-8", 1020, b"\x80\x80\x80\x80\x80 ok"),  # five lone continuation bytes, the boundary among them
    ("utf-8", 1023, b"\xed\xa0\x80 \xe0\x80\xaf \xc0\xaf"),  # a surrogate, overlong forms: decode() takes them
    ("utf-8", 2047, b"\xf4\x90\x80\x80 ok"),  # past U+10FFFF, in the second span
    ("windows-1252", 1024, b"\x81 \x8d"), ("windows-1252", 1023, b"\x80\x9d\x81"),
    ("ascii", 1024, b"\x80"), ("ascii", 2047, b"\xff\xfe"), ("latin-1", 1023, b"\xc3\xa9\xe9")]
SPAN_TEXTS = {"/text-span-%d" % i: (label, b"a" * at + cut) for i, (label, at, cut) in enumerate(SPAN_CUTS)}
TEXTS = {
    **SPAN_TEXTS,
    "/text-bad-utf8": ("UTF-8", BAD_UTF8),
    "/text-unlabelled": (None, BAD_UTF8),
    "/text-lax-utf8": ("utf-8", LAX_UTF8),
    "/text-lax-unlabelled": (None, LAX_UTF8),
    "/text-narrow-utf8": (None, NARROW_UTF8),
    "/text-cp1252": ("windows-1252", b"\x93smart\x94 quotes \x80 5 caf\xe9 \x9f\xff"),
    "/text-cp1252-undefined": ("cp1252", b"a\x81b\x8dc\x8fd\x90e\x9df"),
    "/text-ascii": ("us-ascii", b"caf\xc3\xa9 \xff"),
    "/text-latin1-high": ("latin1", b"from 0xa0: " + bytes(range(0xA0, 0x100))),
}

# Long bodies whose decoding is Python's work at every byte that is not ASCII: 64 KB of each charset's high bytes,
# 64 KB of bytes no UTF-8 has (each one an error, and a U+FFFD's three bytes with "replace"), overlong forms
LONG_TEXTS = {
    "/long-latin1": ("iso-8859-1", "strict", bytes(range(0x20, 0x100)) * 293),
    "/long-cp1252": ("windows-1252", "replace", bytes(range(0x20, 0x100)) * 293),
    "/long-ascii": ("ascii", "replace", bytes(range(0x20, 0x100)) * 293),
    "/long-bad-utf8": ("utf-8", "replace", b"\xff" * 65536),
    "/long-lax-utf8": (None, "ignore", b"caf\xc3\xa9 \xc0\xaf " * 6554),
}

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
    # 31,789 bytes in 99 short lines, the shape of a big CDN head: the fields fill many blocks
    "/many-lines-head": b"HTTP/1.1 200 OK\r\nX-Rep: first\r\n" + b"".join(
        b"X-%d: %s\r\n" % (i, b"%d" % i * (300 // len(b"%d" % i))) for i in range(96))
                        + b"X-Rep: last\r\nContent-Length: 2\r\n\r\nok",
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
    # chunk extensions as RFC 9112 section 7.1.1 has them: a token name, a token or quoted value
    "/chunk-ext-ok": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2 ; a=\"x;y\"; b = c\r\nok\r\n0;z\r\n\r\n",
    "/chunk-ext-bad": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;q=0\"a;b\"\r\nok\r\n0\r\n\r\n",
    # blanks come before a ";" only: a CR turned into a tab is no size line (and the line's data may be off too)
    "/chunk-size-tab": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\t\nok\r\n0\r\n\r\n",
    # but spaces may end the line: ESPAsyncWebServer pads each size to four characters with them
    "/chunk-size-padded": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2   \r\nok\r\n0   \r\n\r\n",
    "/chunk-ext-space": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;a=b \r\nok\r\n0\r\n\r\n",
    "/chunk-upper": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nA;x=1\r\n0123456789\r\n0\r\n\r\n",
    "/latin1-header": b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9\r\nContent-Length: 2\r\n\r\nok",
    # one field in UTF-8, one in latin-1 (value and name): each is decoded on its own
    "/mixed-header": b"HTTP/1.1 200 OK\r\nX-Utf: caf\xc3\xa9\r\nX-Lat: caf\xe9\r\nX-Cafe: 1\r\n"
                     b"Content-Length: 2\r\n\r\nok",
    # field names are tokens: one that is not is no field, and the head is refused
    "/latin1-name": b"HTTP/1.1 200 OK\r\nX-Caf\xe9: 1\r\nContent-Length: 2\r\n\r\nok",
    "/space-in-name": b"HTTP/1.1 200 OK\r\nTransfer-Encodin g: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    # blanks between a name and its colon are no part of it: RFC 9112 section 5.1 has a proxy remove them from a
    # response (embedded and PHP servers send "Name : value")
    "/space-before-colon": b"HTTP/1.1 200 OK\r\nContent-Type : text/plain\r\nContent-Length\t \t: 2\r\n\r\nok",
    "/odd-version": b"HTTP/1.1R 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "/bare-cr": b"HTTP/1.1 200 OK\r\nETag: \"a\"\rb\r\nContent-Length: 2\r\n\r\nok",
    # only whitespace is trimmed from a value: a control byte makes the length unreadable
    "/ctl-length": b"HTTP/1.1 200 OK\r\nContent-Length: 2\x01\r\n\r\nok",
    # RFC 9112 section 6.1: an HTTP/1.0 answer with a Transfer-Encoding has faulty framing (no 1.0 server sends one)
    "/http10-chunked": b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    # a status is three digits from 100 to 599 (RFC 9110 section 15)
    "/status-000": b"HTTP/1.1 000 OK\r\nContent-Length: 2\r\n\r\nok",
    "/status-600": b"HTTP/1.1 600 OK\r\nContent-Length: 2\r\n\r\nok",
    # a coding the client can't undo is refused on an empty body too; a bodyless answer has nothing it applies to
    "/empty-br": b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 0\r\n\r\n",
    "/no-content-br": b"HTTP/1.1 204 No Content\r\nContent-Encoding: br\r\n\r\n",
    "/chunk-negative": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n-1;x\r\nabc\r\n0\r\n\r\n",
    "/empty": b"",
    # Content-Length as RFC 9112 section 6.3 has it: digits, and one number however often it is repeated
    "/negative-length": b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok",
    "/plus-length": b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
    "/two-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 4\r\n\r\nokok",
    "/two-in-one-length": b"HTTP/1.1 200 OK\r\nContent-Length: 2, 4\r\n\r\nokok",
    "/same-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2, 2\r\n\r\nok",
    "/long-code": b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
    # obs-fold: a line that starts with a space or tab goes on the field above
    "/fold": b"HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\n\tthree \r\n Content-Length: 99\r\nContent-Length: 2\r\n\r\nok",
    "/fold-first": b"HTTP/1.1 200 OK\r\n X-A: one\r\nContent-Length: 2\r\n\r\nok",
    # informational heads before the answer: skipped, whatever they carry
    "/informational": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
                      b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "/latin1-text": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=ISO-8859-1\r\nContent-Length: 5\r\n\r\n"
                    b"caf\xe9!",
    "/koi8-ascii": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=koi8-r\r\nContent-Length: 5\r\n\r\nplain",
    "/koi8-text": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=koi8-r\r\nContent-Length: 6\r\n\r\n"
                  b"\xf0\xd2\xc9\xd7\xc5\xd4",
    "/quoted-utf8-text": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain;charset=\"utf-8\"\r\nContent-Length: 6\r\n\r\n"
                         b"caf\xc3\xa9!",
    # text() in the charsets servers name (the bodies: TEXTS below)
    **{path: b"HTTP/1.1 200 OK\r\nContent-Type: text/plain%s\r\nContent-Length: %d\r\n\r\n" % (
        b"; charset=" + label.encode() if label else b"", len(body)) + body for path, (label, body) in TEXTS.items()},
    **{path: b"HTTP/1.1 200 OK\r\nContent-Type: text/plain%s\r\nContent-Length: %d\r\n\r\n" % (
        b"; charset=" + label.encode() if label else b"", len(body)) + body
       for path, (label, errors, body) in LONG_TEXTS.items()},
    # json() and the Content-Type: a captive portal's login page, a JSON API's own type, a raw file host's, nothing
    "/portal": b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 13\r\n\r\n<html></html>",
    "/json-api": b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.api+json; charset=utf-8\r\n"
                 b"Content-Length: 8\r\n\r\n{\"a\": 1}",
    "/json-untyped": b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{\"a\": 1}",
    "/json-plain": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 8\r\n\r\n{\"a\": 1}",
    "/json-blank": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n \n",
    "/fields": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nSet-Cookie: a=1\r\nX-Odd:  spaced value \r\n"
               b"set-cookie: b=2\r\nETag: \"v1:x\"\r\nContent-Length: 2\r\n\r\nok",
}


@pytest.fixture(scope="module")
def raw():
    """Answers each path with its canned response, then closes."""
    srv = ScriptServer({path: [answer, "close"] for path, answer in RESPONSES.items()})
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
                                  "/garbage", "/http09", "/bad-status", "/bad-header", "/bad-length", "/ctl-length",
                                  "/negative-length", "/plus-length", "/two-lengths", "/two-in-one-length",
                                  "/long-code", "/fold-first", "/latin1-name", "/space-in-name", "/odd-version",
                                  "/bare-cr", "/http10-chunked", "/status-000", "/status-600", "/empty-br"])
def test_malformed_or_oversized_head_is_a_client_response_error(mpy, raw, path):
    assert heads(mpy, raw, [path])[path]["err"] == "ClientResponseError"


def test_a_coding_on_a_bodyless_answer_is_no_error(mpy, raw):
    assert heads(mpy, raw, ["/no-content-br"])["/no-content-br"] == {
        "path": "/no-content-br", "status": 204, "body": "", "n": 1}


def test_blanks_before_a_fields_colon_are_dropped(mpy, raw):
    r = mpy.run("""
import aiohttp
async def main():
    async with aiohttp.ClientSession() as session:
        async with session.get(URL) as resp:
            result(body=await resp.text(), type=resp.content_type, length=resp.content_length,
                   names=sorted(resp.headers.keys()))
run(main())
""", URL=raw.url("/space-before-colon"))
    assert r.value == {"body": "ok", "type": "text/plain", "length": 2, "names": ["content-length", "content-type"]}


@pytest.mark.parametrize("path", ["/chunk-ext-ok", "/chunk-size-padded", "/chunk-ext-space"])
def test_chunk_extensions_and_spaces_after_a_size_are_read_past(mpy, raw, path):
    assert heads(mpy, raw, [path])[path] == {"path": path, "status": 200, "body": "ok", "n": 1}


def test_a_length_repeated_with_one_value_is_fine(mpy, raw):
    assert heads(mpy, raw, ["/same-lengths"])["/same-lengths"] == {
        "path": "/same-lengths", "status": 200, "body": "ok", "n": 2}


def test_informational_heads_are_skipped_and_folded_lines_join_their_field(mpy, raw):
    r = mpy.run("""
import aiohttp
async def main():
    async with aiohttp.ClientSession() as session:
        for path in ("/informational", "/fold"):
            async with session.get(URL + path) as resp:
                h = resp.headers
                result(status=resp.status, body=await resp.text(), a=h.get("X-A"), link=h.get("Link"),
                       length=resp.content_length, lengths=h.getall("Content-Length"))
run(main())
""", URL=raw.url(""))
    assert r.results == [
        {"status": 200, "body": "ok", "a": None, "link": None, "length": 2, "lengths": ["2"]},
        # the folded "Content-Length: 99" is text of X-A, not a field: it must not frame the body
        {"status": 200, "body": "ok", "a": "one two three Content-Length: 99", "link": None, "length": 2,
         "lengths": ["2"]}]


def test_text_decodes_the_charset_the_content_type_names(mpy, raw):
    r = mpy.run("""
import aiohttp
async def main():
    async with aiohttp.ClientSession() as session:
        for path, enc in (("/latin1-text", None), ("/quoted-utf8-text", None), ("/latin1-header", "latin-1")):
            async with session.get(URL + path) as resp:
                result(text=await resp.text(enc))
run(main())
""", URL=raw.url(""))
    assert r.results == [{"text": "caf\u00e9!"}] * 2 + [{"text": "ok"}]


def test_text_with_an_error_handler_reads_as_cpythons_decode(mpy, raw):
    # errors= as aiohttp passes it to bytes.decode(): "replace" puts U+FFFD for each bad sequence, "ignore" drops it,
    # "strict" raises a UnicodeError that says where
    r = mpy.run("""
import aiohttp
async def main():
    async with aiohttp.ClientSession() as session:
        for path in PATHS:
            for errors in ("strict", "replace", "ignore"):
                async with session.get(URL + path) as resp:
                    try:
                        result(text=await resp.text(errors=errors))
                    except UnicodeError as e:
                        result(err=type(e).__name__, message=str(e))
run(main())
""", URL=raw.url(""), PATHS=list(TEXTS))
    expected = []
    for label, body in TEXTS.values():
        for errors in ("strict", "replace", "ignore"):
            try:
                expected.append({"text": body.decode(label or "utf-8", errors)})
            except UnicodeDecodeError as e:
                name = {"cp1252": "windows-1252"}.get(codecs.lookup(label or "utf-8").name, e.encoding)
                expected.append({"err": "UnicodeError", "message": "can't decode byte 0x%02x in position %d as %s" % (
                    body[e.start], e.start, name)})
    assert r.results == expected


def test_text_in_a_charset_it_does_not_know(mpy, raw):
    # An encoding= it can't decode is a LookupError, as in CPython. A charset the server names and it can't decode
    # is read as UTF-8 (aiohttp's fallback): a body that is none is a UnicodeError naming that charset, not mojibake.
    r = mpy.run("""
import aiohttp
async def main():
    async with aiohttp.ClientSession() as session:
        for path, kw in (("/koi8-ascii", {}), ("/koi8-text", {}), ("/koi8-text", {"errors": "replace"}),
                         ("/ok", {"encoding": "koi8-r"}), ("/ok", {"errors": "backslashreplace"}),
                         ("/text-bad-utf8", {"errors": "backslashreplace"}),
                         ("/text-cp1252", {"encoding": "latin-1"}), ("/latin1-text", {"encoding": "CP1252"})):
            async with session.get(URL + path) as resp:
                try:
                    result(text=await resp.text(**kw))
                except (LookupError, UnicodeError) as e:
                    result(err=type(e).__name__, message=str(e))
run(main())
""", URL=raw.url(""))
    assert r.results == [
        {"text": "plain"},
        {"err": "UnicodeError",
         "message": "charset koi8-r is not supported, and the body is no UTF-8 (byte 0xf0 in position 0)"},
        {"text": "\ufffd\ufffd\ufffd\ufffd\ufffd\ufffd"},
        {"err": "LookupError", "message": "unknown encoding: koi8-r"},
        {"text": "ok"},  # (as in CPython: an error handler is looked for at the first error)
        {"err": "LookupError", "message": "error handler 'backslashreplace' is not supported"},
        {"text": TEXTS["/text-cp1252"][1].decode("latin-1")},  # the caller's encoding wins over the server's
        {"text": "caf\u00e9!"}]


@pytest.mark.parametrize("path", LONG_TEXTS)
def test_text_of_a_long_body_lets_the_ui_run_while_it_decodes(mpy, raw, path):
    # On a device the event loop is the UI's thread: a body decoded a byte at a time in Python must let it turn at
    # least every 8 KB, and a long run of bad bytes must decode in a heap some times the body's size (64 KB of bad
    # bytes replaced make 192 KB of text, held as bytes and then as the str: in 1 MB, one time in ten no hole held it)
    r = mpy.run("""
import aiohttp
async def main():
    async with aiohttp.ClientSession() as session:
        async with session.get(URL) as resp:
            await resp.read()  # (the body is kept: text() only decodes it)
            text, turns = await turns_during(resp.text(errors=ERRORS))
            result(sha=sha256(text.encode()), n=len(text), turns=turns)
run(main())
""", heapsize="2M", URL=raw.url(path), ERRORS=LONG_TEXTS[path][1])
    label, errors, body = LONG_TEXTS[path]
    text = body.decode(label or "utf-8", errors)
    assert r.value["sha"] == hashlib.sha256(text.encode()).hexdigest() and r.value["n"] == len(text)
    assert r.value["turns"] >= len(body) // 8192, r.value


def test_content_type_and_charset_as_in_aiohttp(mpy, raw):
    r = mpy.run("""
import aiohttp
async def main():
    async with aiohttp.ClientSession() as session:
        for path in ("/latin1-text", "/quoted-utf8-text", "/json-api", "/json-untyped"):
            async with session.get(URL + path) as resp:
                result(type=resp.content_type, charset=resp.charset)
run(main())
""", URL=raw.url(""))
    assert r.results == [{"type": "text/plain", "charset": "ISO-8859-1"}, {"type": "text/plain", "charset": "utf-8"},
                         {"type": "application/vnd.api+json", "charset": "utf-8"},
                         {"type": "application/octet-stream", "charset": None}]  # (none sent: aiohttp's default)


def test_heads_up_to_32_kb_are_read_in_64_kb_of_heap_and_bigger_ones_refused(mpy, raw):
    # 99 lines of 8 KB each: every line is allowed, their sum (800 KB) is not. A head is kept as the bytes it
    # came in, in blocks of whole fields: a bytearray grown line by line left holes no later size fit (99 lines
    # of 300 bytes did not fit in 100 KB), and a str per line and per field needed 195 KB for the 32 KB one.
    got = heads(mpy, raw, ["/huge-head", "/ok"], free=64 * 1024)
    for path in ("/head-at-limit", "/many-lines-head"):  # each on its own: a refused head's frames are still held
        got.update(heads(mpy, raw, [path], free=64 * 1024))
    assert got["/huge-head"].get("err") == "ClientResponseError", got
    assert (got["/head-at-limit"].get("body"), got["/head-at-limit"].get("n")) == ("ok", 5), got
    assert (got["/many-lines-head"].get("body"), got["/many-lines-head"].get("n")) == ("ok", 99), got
    assert got["/ok"]["body"] == "ok"  # and the client goes on working


def test_a_head_in_many_blocks_reads_as_one(mpy, raw):
    r = mpy.run("""
import aiohttp
async def main():
    async with aiohttp.ClientSession() as session:
        async with session.get(URL) as resp:
            h = resp.headers
            items = h.items()
            result(rep=h.getall("x-rep"), first=h["X-0"][:3], last=h.get("x-95")[:4], n=len(h), items=len(items),
                   names=[k for k, v in items][:2] + [k for k, v in items][-2:], has="x-50" in h,
                   absent="x-96" in h, length=resp.content_length, body=await resp.text())
run(main())
""", URL=raw.url("/many-lines-head")).value
    assert r == {"rep": ["first", "last"], "first": "000", "last": "9595", "n": 99, "items": 99,
                 "names": ["x-rep", "x-0", "x-rep", "content-length"], "has": True, "absent": False,
                 "length": 2, "body": "ok"}


@pytest.mark.parametrize("path", ["/bad-chunk", "/chunk-ctl", "/chunk-cr-junk", "/chunk-digit-ctl", "/chunk-ext-bad",
                                  "/chunk-size-tab"])
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
    # any case to look up; a repeated field: its first value from get(), all from getall(); names in lower case
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
    assert mixed["items"] == [["x-utf", cafe], ["x-lat", cafe], ["x-cafe", "1"], ["content-length", "2"]]
    assert (mixed["utf"], mixed["lat"], mixed["values"]) == (cafe, cafe, [cafe, cafe, "1", "2"])
    assert v["ct"] == "text/plain" and v["odd"] == "spaced value" and v["etag"] == '"v1:x"'
    assert v["cookie"] == "a=1" and v["all"] == ["a=1", "b=2"]  # get(): the first, as aiohttp's CIMultiDict
    assert v["has"] == [True, True, False] and v["missing"] == "KeyError" and v["default"] == "d"
    assert v["n"] == 6 and v["keys"] == ["content-type", "set-cookie", "x-odd", "set-cookie", "etag", "content-length"]
    assert v["items"][0] == ["content-type", "text/plain"] and v["body"] == "ok"


# ---------------------------------------------------------------- the response as CPython aiohttp's


def test_an_error_status_raised_inside_async_with_leaves_its_body_readable(mpy, fault):
    # aiohttp releases the response in raise_for_status() only outside `async with`: inside it, the handler can
    # still read what the server said, and the body read to its end gives the connection back to the pool
    r = mpy.run("""
import aiohttp
async def main():
    async with aiohttp.ClientSession() as session:
        async with session.get(URL + "/status/404") as resp:
            try:
                resp.raise_for_status()
            except aiohttp.ClientResponseError as e:
                result(status=e.status, message=e.message, body=await resp.text())
        resp = await session.get(URL + "/status/503")
        try:
            resp.raise_for_status()
        except aiohttp.ClientResponseError as e:
            result(status=e.status, closed=resp.closed)
        async with session.get(URL + "/stats") as resp:
            result(stats=await resp.json())
run(main())
""", URL=fault.url(""))
    assert r.results[0] == {"status": 404, "message": "Not Found", "body": "status 404"}
    assert r.results[1] == {"status": 503, "closed": True}  # outside `async with`: released
    assert r.results[2]["stats"]["connections"] == 2  # the 404's connection served again; the 503's was closed


def test_text_and_json_after_the_body_was_read_answer_it_again(mpy, fault):
    # as aiohttp keeps the body: json() that failed, then text() to show what came; release() may be awaited
    r = mpy.run("""
import aiohttp
async def main():
    async with aiohttp.ClientSession() as session:
        for path in ("/json/3", "/json/3?chunked=1", "/json/3?gzip=1"):
            resp = await session.get(URL + path)
            first = await resp.read()
            result(text=await resp.text() == first.decode(), json=len(await resp.json()),
                   again=await resp.read() == first, still=await resp.text() == first.decode(),
                   released=await resp.release())
        async with session.get(URL + "/status/404") as resp:
            try:
                await resp.json()
            except aiohttp.ContentTypeError:
                result(said=await resp.text())
run(main())
""", URL=fault.url(""))
    whole = {"text": True, "json": 3, "again": True, "still": True, "released": None}
    assert r.results == [whole] * 3 + [{"said": "status 404"}]


@pytest.mark.parametrize("query", ["", "&chunked=1&chunks=1,7,300", "&gzip=1"])
def test_a_body_read_by_aiohttps_iterators(mpy, fault, query):
    # iter_chunked(n) (up to n bytes at a time, as aiohttp's), iter_any(), and lines as `async for` gives them (each
    # with its b"\\n"), in every framing
    r = mpy.run("""
import aiohttp
async def each(session, iterate):
    async with session.get(URL) as resp:
        pieces = []
        async for piece in iterate(resp.content):
            pieces.append(piece)
        return pieces

async def main():
    async with aiohttp.ClientSession() as session:
        chunks = await each(session, lambda content: content.iter_chunked(1000))
        result(sha=sha256(b"".join(chunks)), fit=max(len(c) for c in chunks) <= 1000)
        result(sha=sha256(b"".join(await each(session, lambda content: content.iter_any()))))
        lines = await each(session, lambda content: content)
        result(sha=sha256(b"".join(lines)), lines=len(lines), ends=all(x.endswith(b"\\n") for x in lines[:-1]),
               inside=any(b"\\n" in x[:-1] for x in lines))
run(main())
""", URL=fault.url("/bytes/20000?text=1" + query))
    whole = text_payload(20000)  # lines of about 25 bytes, the last one cut short
    sha = hashlib.sha256(whole).hexdigest()
    assert r.results == [{"sha": sha, "fit": True}, {"sha": sha},
                         {"sha": sha, "lines": whole.count(b"\n") + 1, "ends": True, "inside": False}]


def test_json_decodes_json_under_any_type_and_calls_anything_else_a_content_type_error(mpy, raw):
    # JSON served as text/plain (a raw file host) decodes, as with MicroPythonOS's aiohttp; a Wi-Fi login page
    # answering a JSON API is a ContentTypeError, a ClientResponseError: no decoder's ValueError slips past
    # `except aiohttp.ClientError` (content_type=None asks for the decoder's own error)
    r = mpy.run("""
import aiohttp
async def main():
    async with aiohttp.ClientSession() as session:
        for path, kw in (("/portal", {}), ("/portal", {"content_type": None}), ("/json-api", {}),
                         ("/json-blank", {}), ("/json-untyped", {}), ("/json-plain", {}),
                         ("/json-api", {"loads": lambda text: text.upper()})):
            async with session.get(URL + path) as resp:
                try:
                    result(path=path, json=await resp.json(**kw))
                except aiohttp.ClientResponseError as e:
                    result(path=path, err=type(e).__name__, status=e.status)
                except ValueError as e:
                    result(path=path, err="ValueError")
        result(kin=issubclass(aiohttp.ContentTypeError, aiohttp.ClientResponseError))
run(main())
""", URL=raw.url(""))
    assert r.results == [
        {"path": "/portal", "err": "ContentTypeError", "status": 200},
        {"path": "/portal", "err": "ValueError"},
        {"path": "/json-api", "json": {"a": 1}},
        {"path": "/json-blank", "json": None},  # an empty body (blanks only) is None, not a decoder's error
        {"path": "/json-untyped", "json": {"a": 1}},
        {"path": "/json-plain", "json": {"a": 1}},
        {"path": "/json-api", "json": '{"A": 1}'},
        {"kin": True}]


def test_raise_for_status_for_a_whole_session_or_one_request(mpy, fault):
    r = mpy.run("""
import aiohttp
async def json_only(resp):  # an app's own rule, an async function of the response as aiohttp takes it
    if resp.headers.get("Content-Type") != "application/json":
        raise ValueError("not JSON")
async def main():
    before = fd_count()
    async with aiohttp.ClientSession(raise_for_status=True) as session:
        result(err=(await error_of(session.get(URL + "/status/404")))[0])
        async with session.get(URL + "/status/404", raise_for_status=False) as resp:
            result(status=resp.status)
        result(err=(await error_of(session.get(URL + "/bytes/10", raise_for_status=json_only)))[0],
               open=fd_count() - before)  # the answers refused were released: none holds a socket
        async with session.get(URL + "/redirect?code=302&to=/echo", raise_for_status=json_only) as resp:
            result(status=resp.status)
    async with aiohttp.ClientSession() as session:
        result(err=(await error_of(session.get(URL + "/status/503", raise_for_status=True)))[0])
    result(leaked=fd_count() - before)
run(main())
""", URL=fault.url(""))
    assert r.results == [{"err": "ClientResponseError"}, {"status": 404}, {"err": "ValueError", "open": 0},
                         {"status": 200}, {"err": "ClientResponseError"}, {"leaked": 0}]


def test_base_url_joins_relative_urls_and_must_end_with_a_slash_as_in_aiohttp(mpy, fault):
    # without its slash, "http://host/api/v1" joined with "users" is "http://host/api/users": aiohttp refuses it
    r = mpy.run("""
import aiohttp
async def main():
    async with aiohttp.ClientSession(base_url=URL + "/echo/") as session:
        for path in ("a?x=1", "/b", "../c", ""):
            async with session.get(path) as resp:
                result(url=resp.url)
    for base in (URL + "/api/v1", URL + "/api/v1?k=1", "127.0.0.1/"):
        try:
            aiohttp.ClientSession(base_url=base)
            result(err=None)
        except ValueError as e:
            result(err=type(e).__name__)
run(main())
""", URL=fault.url(""))
    assert r.results == [{"url": fault.url(p)} for p in ("/echo/a?x=1", "/b", "/c", "/echo/")] + [
        {"err": "ValueError"}, {"err": "ValueError"}, {"err": "InvalidUrlClientError"}]
    assert fault.requests == 4

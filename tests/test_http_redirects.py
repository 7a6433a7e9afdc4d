"""aiohttp client on MicroPython: redirects (codes, chains, loops, method rewriting, downgrade, credentials)."""
import hashlib
from urllib.parse import quote

import pytest

from tools.testservers import FaultServer, ScriptServer, sha256_of


@pytest.fixture(scope="module")
def twin():
    """A second fault server: same host, another port, i.e. another origin."""
    with FaultServer() as srv:
        yield srv


GET = """
import aiohttp

async def main():
    async with aiohttp.ClientSession(**SESSION) as session:
        try:
            async with session.request(METHOD, URL, **KW) as resp:
                body = await resp.read()
                result(status=resp.status, url=resp.url, sha=sha256(body))
        except aiohttp.ClientError as e:
            result(error=type(e).__name__, status=getattr(e, "status", None), msg=str(e))

run(main())
"""


def chain(srv, redirects, target, query=""):
    """A URL that answers with exactly `redirects` redirects before `target` (/chain/0/ still redirects once)."""
    return srv.url("/chain/%d/%s%s" % (redirects - 1, target, query))


def go(mpy, url, method="GET", session=None, **kw):
    return mpy.run(GET, URL=url, METHOD=method, SESSION=session or {}, KW=kw).value


def hdrs(echo):
    return {k.lower(): v for k, v in echo["headers"]}


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_each_redirect_code_is_followed(mpy, fault, code):
    got = go(mpy, fault.url("/redirect?code=%d&to=/bytes/5000" % code))
    assert got == {"status": 200, "url": fault.url("/bytes/5000"), "sha": sha256_of(5000)}
    assert fault.requests == 2
    assert fault.connections == 1  # the redirect's empty body was read, so the hop reused the connection


def test_absolute_location(mpy, fault):
    to = quote(fault.url("/bytes/3000?seed=2"), safe="")
    got = go(mpy, fault.url("/redirect?code=301&to=" + to))
    assert got == {"status": 200, "url": fault.url("/bytes/3000?seed=2"), "sha": sha256_of(3000, seed=2)}


def test_path_relative_location(mpy, fault):
    # resolved against the redirecting URL's directory, like a browser does
    got = go(mpy, fault.url("/redirect?to=4000"))  # resolves against /redirect -> /4000 (a 404 here)
    assert got["status"] == 404 and got["url"] == fault.url("/4000")
    got = go(mpy, fault.url("/redirect?to=bytes/4000"))
    assert got == {"status": 200, "url": fault.url("/bytes/4000"), "sha": sha256_of(4000)}


@pytest.mark.parametrize("absolute", [False, True])
def test_a_chain_of_ten_is_followed_by_default(mpy, fault, absolute):
    got = go(mpy, chain(fault, 10, "bytes/7000", "?abs=1" if absolute else ""))
    assert got["status"] == 200 and got["sha"] == sha256_of(7000)
    assert fault.requests == 11  # 10 redirects + the target


def test_the_response_tells_the_redirects_that_led_to_it(mpy, fault):
    # resp.history: each hop's status, url and headers, as aiohttp's; released, with no body kept
    r = mpy.run("""
import aiohttp
async def main():
    async with aiohttp.ClientSession() as session:
        async with session.get(URL) as resp:
            body = await resp.read()
            bodies = []
            for hop in resp.history:
                bodies.append(await hop.read())
            result(status=resp.status, url=resp.url, real_url=resp.real_url, sha=sha256(body),
                   history=[(hop.status, hop.url, hop.headers["Location"], hop.closed, hop.connection)
                            for hop in resp.history], kind=type(resp.history).__name__,
                   bodies=bodies)
        async with session.get(TARGET) as resp:
            result(direct=resp.history)
run(main())
""", URL=chain(fault, 2, "bytes/700", "?code=307"), TARGET=fault.url("/bytes/700"))
    target = fault.url("/bytes/700?code=307")
    assert r.results == [{
        "status": 200, "url": target, "real_url": target, "sha": sha256_of(700), "kind": "tuple",
        "history": [[307, fault.url("/chain/1/bytes/700?code=307"), "/chain/0/bytes/700?code=307", True, None],
                    [307, fault.url("/chain/0/bytes/700?code=307"), "/bytes/700?code=307", True, None]],
        "bodies": ["", ""]}, {"direct": []}]


@pytest.mark.parametrize("absolute", [False, True])
def test_eleven_redirects_are_too_many(mpy, fault, absolute):
    got = go(mpy, chain(fault, 11, "bytes/7000", "?abs=1" if absolute else ""))
    assert got["error"] == "TooManyRedirects"
    assert fault.requests == 11  # gave up at the 11th redirect, without fetching the target


def test_max_redirects_per_session_and_per_request(mpy, fault):
    three = {"max_redirects": 3}
    assert go(mpy, chain(fault, 3, "bytes/100"), session=three)["sha"] == sha256_of(100)
    assert go(mpy, chain(fault, 4, "bytes/100"), session=three)["error"] == "TooManyRedirects"
    assert go(mpy, chain(fault, 2, "bytes/100"), max_redirects=2)["sha"] == sha256_of(100)
    assert go(mpy, chain(fault, 3, "bytes/100"), max_redirects=2)["error"] == "TooManyRedirects"
    assert go(mpy, chain(fault, 1, "bytes/100"), max_redirects=0)["error"] == "TooManyRedirects"


def test_allow_redirects_false_returns_the_redirect(mpy, fault):
    got = go(mpy, fault.url("/redirect?code=307&to=/bytes/10"), allow_redirects=False)
    assert got == {"status": 307, "url": fault.url("/redirect?code=307&to=/bytes/10"),
                   "sha": hashlib.sha256(b"").hexdigest()}


def test_a_redirect_loop_fails_fast(mpy, fault):
    r = mpy.run("""
import aiohttp, time
async def main():
    async with aiohttp.ClientSession() as session:
        t = time.ticks_ms()
        err = await error_of(session.get(URL))
        result(err=err[0], ms=time.ticks_diff(time.ticks_ms(), t))
run(main())
""", URL=fault.url("/loop"))
    assert r.value["err"] == "TooManyRedirects"
    assert r.value["ms"] < 1000
    assert fault.requests <= 11


# ---------------------------------------------------------------- methods and bodies across a redirect

BODY = bytes(range(256)) * 40


@pytest.mark.parametrize("code,method,kept", [
    (301, "GET", False), (302, "GET", False), (303, "GET", False),  # POST becomes a body-less GET
    (307, "POST", True), (308, "POST", True),  # method and body are kept
])
def test_post_across_redirects(mpy, fault, code, method, kept):
    r = mpy.run("""
import aiohttp
async def main():
    async with aiohttp.ClientSession() as session:
        async with session.post(URL, data=bytes(range(256)) * 40, headers=BODY_FIELDS) as resp:
            result(status=resp.status, echo=await resp.json())
run(main())
""", URL=fault.url("/redirect?code=%d&to=/echo" % code), BODY_FIELDS=BODY_FIELDS)
    echo = r.value["echo"]
    assert r.value["status"] == 200
    assert echo["method"] == method
    assert echo["body_len"] == (len(BODY) if kept else 0)
    assert echo["body_sha256"] == hashlib.sha256(BODY if kept else b"").hexdigest()
    h = hdrs(echo)
    # the fields about the body go with it (RFC 9110 section 15.4); the others stay
    assert {name: h.get(name.lower()) for name in BODY_FIELDS} == (
        BODY_FIELDS if kept else {name: None for name in BODY_FIELDS} | {"X-Other": "1"})
    assert ("content-length" in h) == kept


BODY_FIELDS = {"Content-Type": "x/y", "Content-Encoding": "identity", "Content-Language": "fr",
               "Content-Location": "/a", "X-Other": "1"}


def test_303_turns_put_into_get_and_307_keeps_put(mpy, fault):
    code = """
import aiohttp
async def main():
    async with aiohttp.ClientSession() as session:
        for url in URLS:
            async with session.put(url, data=b"abc") as resp:
                e = await resp.json()
                result(method=e["method"], n=e["body_len"])
run(main())
"""
    r = mpy.run(code, URLS=[fault.url("/redirect?code=303&to=/echo"), fault.url("/redirect?code=307&to=/echo")])
    assert r.results == [{"method": "GET", "n": 0}, {"method": "PUT", "n": 3}]


# ---------------------------------------------------------------- https -> http

def test_https_to_http_redirect_is_refused(mpy, fault_tls, fault):
    to = quote(fault.url("/bytes/100"), safe="")
    got = go(mpy, fault_tls.url("/redirect?to=" + to))
    assert got["error"] == "ClientResponseError" and got["status"] == 302
    assert fault.connections == 0  # not even connected to the http side


def test_https_to_http_redirect_with_allow_downgrade(mpy, fault_tls, fault):
    to = quote(fault.url("/bytes/100"), safe="")
    got = go(mpy, fault_tls.url("/redirect?to=" + to), session={"allow_downgrade": True})
    assert got == {"status": 200, "url": fault.url("/bytes/100"), "sha": sha256_of(100)}


def test_http_to_https_redirect_is_fine(mpy, fault_tls, fault):
    to = quote(fault_tls.url("/bytes/100"), safe="")
    got = go(mpy, fault.url("/redirect?to=" + to))
    assert got == {"status": 200, "url": fault_tls.url("/bytes/100"), "sha": sha256_of(100)}


# ---------------------------------------------------------------- credentials and Host across origins

ECHO = """
import aiohttp
async def main():
    async with aiohttp.ClientSession(headers={"Cookie": "sid=1"}) as session:
        async with session.get(URL, headers={"Authorization": "Bearer t0k", "X-Other": "kept"}) as resp:
            result(status=resp.status, echo=await resp.json())
run(main())
"""


def test_credentials_kept_on_a_same_origin_redirect(mpy, fault):
    r = mpy.run(ECHO, URL=chain(fault, 3, "echo"))
    h = hdrs(r.value["echo"])
    assert (h["authorization"], h["cookie"], h["x-other"]) == ("Bearer t0k", "sid=1", "kept")
    assert h["host"] == "127.0.0.1:%d" % fault.port


@pytest.mark.parametrize("hops", [1, 3])
def test_credentials_dropped_when_the_origin_changes(mpy, fault, twin, hops):
    twin.reset()
    # /chain/K/... on the twin, reached from the fault server: port changes, host does not
    to = quote(chain(twin, hops - 1, "echo") if hops > 1 else twin.url("/echo"), safe="")
    r = mpy.run(ECHO, URL=fault.url("/redirect?to=" + to))
    h = hdrs(r.value["echo"])
    assert "authorization" not in h and "cookie" not in h
    assert h["x-other"] == "kept"
    assert h["host"] == "127.0.0.1:%d" % twin.port  # Host names the new, non-default port
    assert twin.requests == hops


def test_credentials_dropped_when_the_host_name_changes(mpy, fault):
    # same port, different host name: another origin too
    to = quote("http://localhost:%d/echo" % fault.port, safe="")
    r = mpy.run(ECHO, URL=fault.url("/redirect?to=" + to))
    h = hdrs(r.value["echo"])
    assert "authorization" not in h and "cookie" not in h
    assert h["host"] == "localhost:%d" % fault.port


def test_host_header_carries_the_port(mpy, fault):
    r = mpy.run(ECHO, URL=fault.url("/echo?a=1"))
    echo = r.value["echo"]
    assert echo["path"] == "/echo?a=1"
    assert hdrs(echo)["host"] == "127.0.0.1:%d" % fault.port
    assert [k for k, _ in echo["headers"]].count("Host") == 1


# ---------------------------------------------------------------- how a Location is read

def test_locations_resolve_as_rfc_3986_says(mpy):
    r = mpy.run("""
import aiohttp
for loc in LOCS:
    result(loc=loc, url=aiohttp.join_url("http://h:81/a/b/c?x=1#f", loc))
""", LOCS=list(RESOLVED))
    assert {x["loc"]: x["url"] for x in r.results} == RESOLVED


RESOLVED = {
    "d": "http://h:81/a/b/d", "./d": "http://h:81/a/b/d", "../d": "http://h:81/a/d", "../../../d": "http://h:81/d",
    "..": "http://h:81/a/", "/x/./y/../z": "http://h:81/x/z", "/x//y/../z": "http://h:81/x//z",
    "?q=2": "http://h:81/a/b/c?q=2", "g?y/./x": "http://h:81/a/b/g?y/./x",
    "#top": "http://h:81/a/b/c?x=1", "d#top": "http://h:81/a/b/d",  # a fragment is never sent
    "//o:9/p#z": "http://o:9/p", "https://o/p": "https://o/p",
    "/e/http://x.org/": "http://h:81/e/http://x.org/",  # a path, not a scheme
    # dot segments go from an absolute or network-path reference too (RFC 3986 section 5.2.2)
    "//o/p/../q/./r?s/../t": "http://o/q/r?s/../t", "https://o:8/a/b/..": "https://o:8/a/", "http://o": "http://o",
}


def test_dot_segments_and_a_url_inside_the_path(mpy, fault):
    got = go(mpy, fault.url("/redirect/sub?to=../bytes/300%23top"))
    assert got == {"status": 200, "url": fault.url("/bytes/300"), "sha": sha256_of(300)}
    r = mpy.run(ECHO, URL=fault.url("/redirect?to=" + quote("/echo/http://x.org/", safe="")))
    assert r.value["echo"]["path"] == "/echo/http://x.org/"


@pytest.mark.parametrize("to", ["ftp://127.0.0.1/x", "http://127.0.0.1:99999/", "/a\tb"])
def test_a_location_that_is_no_url_is_a_client_error(mpy, fault, to):
    # the server's mistake, not the caller's: caught by `except aiohttp.ClientError`, with the status
    got = go(mpy, fault.url("/redirect?code=301&to=" + quote(to, safe="")))
    assert (got["error"], got["status"]) == ("InvalidUrlRedirectClientError", 301)
    assert fault.requests == 1


@pytest.mark.parametrize("relative", [True, False])
def test_a_space_in_a_location_is_sent_percent_encoded(mpy, fault, relative):
    # nginx (return 302 "/a b") and apache (Redirect) send the path they were given as it is, relative or absolute;
    # browsers and curl follow it encoded
    to = "/echo/a b?q=c d"
    r = mpy.run(ECHO, URL=fault.url("/redirect?to=" + quote(to if relative else fault.url(to), safe="")))
    assert (r.value["status"], r.value["echo"]["path"]) == (200, "/echo/a%20b?q=c%20d")


def test_a_host_header_of_ones_own_stays_with_its_origin(mpy, fault, twin):
    twin.reset()
    code = """
import aiohttp
async def main():
    async with aiohttp.ClientSession() as session:
        for url in URLS:
            async with session.get(url, headers={"Host": "virtual.example"}) as resp:
                result(host=[v for k, v in (await resp.json())["headers"] if k.lower() == "host"])
run(main())
"""
    r = mpy.run(code, URLS=[fault.url("/redirect?to=/echo"), fault.url("/redirect?to=" + quote(twin.url("/echo")))])
    assert r.results == [{"host": ["virtual.example"]}, {"host": ["127.0.0.1:%d" % twin.port]}]


def test_a_redirect_whose_body_trickles_is_timed_out_as_a_whole(mpy):
    # its 10 bytes 0.1 s apart, each well within sock_read, all of them not: the next hop is not held up for them
    # (before, only each byte's wait was timed: 2 KB a byte every 9 s held a download up for five hours)
    head = b"HTTP/1.1 302 Found\r\nLocation: /ok\r\nContent-Length: 10\r\n\r\n"
    srv = ScriptServer({"/r": [head] + [0.1, b"x"] * 10, "/ok": [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]})
    try:
        r = mpy.run("""
import aiohttp
async def main():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_read=0.3)) as session:
        result(err=(await error_of(session.get(URL)))[0])
run(main())
""", URL=srv.url("/r"))
    finally:
        srv.close()
    assert r.value == {"err": "SocketTimeoutError"}
    assert [path for _, _, path in srv.requests] == ["/r"]


def test_a_redirect_whose_body_stalls_leaves_no_connection_behind(mpy):
    srv = ScriptServer({"/r": [b"HTTP/1.1 302 Found\r\nLocation: /ok\r\nContent-Length: 10\r\n\r\nabc", 3]})
    try:
        r = mpy.run("""
import aiohttp, asyncio, gc
async def main():
    fd0 = fd_count()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_read=0.3)) as session:
        err = (await error_of(session.get(URL)))[0]
        try:  # and cancelled from outside while it reads that body
            await asyncio.wait_for(session.get(URL), 0.1)
        except asyncio.TimeoutError:
            pass
        gc.collect()
        result(err=err, busy=len(session._busy), idle=len(session._idle), fds=fd_count() - fd0)
run(main())
""", URL=srv.url("/r"))
    finally:
        srv.close()
    assert r.value == {"err": "SocketTimeoutError", "busy": 0, "idle": 0, "fds": 0}
    assert len(srv.requests) == 2

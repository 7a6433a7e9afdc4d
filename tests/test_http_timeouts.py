"""aiohttp client on MicroPython: timeouts fire on a stalled server, on time, and leave the session usable."""
import pytest

from tools.testservers import ScriptServer, sha256_of

pytestmark = pytest.mark.asyncio_paths  # every test with asyncio's internals and without them

TIMED = """
import aiohttp, time

async def main():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(**SESSION_TIMEOUT)) as session:
        t0 = time.ticks_ms()
        phase = "connect"
        got = 0
        try:
            kw = {"timeout": aiohttp.ClientTimeout(**REQUEST_TIMEOUT)} if REQUEST_TIMEOUT else {}
            if NUMBER:
                kw = {"timeout": NUMBER}  # a plain number is a total timeout
            async with session.get(URL, **kw) as resp:
                phase = "body"
                t0 = time.ticks_ms() if FROM_BODY else t0
                buf = bytearray(2048)
                while True:
                    n = len(await resp.content.read(2048)) if READ_N else await resp.content.readinto(buf)
                    if not n:
                        break
                    got += n
            result(error=None, got=got)
        except aiohttp.ClientError as e:
            result(error=type(e).__name__, phase=phase, got=got, ms=time.ticks_diff(time.ticks_ms(), t0),
                   connection_error=isinstance(e, aiohttp.ClientConnectionError))
        # the session is still good, and exact
        async with session.get(AFTER) as resp:
            result(sha=sha256(await resp.read()))

run(main())
"""


def timed(mpy, fault, path, session=None, request=None, number=None, from_body=False, read_n=False):
    r = mpy.run(TIMED, URL=fault.url(path), AFTER=fault.url("/bytes/5000"), SESSION_TIMEOUT=session or {},
                REQUEST_TIMEOUT=request, NUMBER=number, FROM_BODY=from_body, READ_N=read_n, timeout=20)
    assert r.results[1] == {"sha": sha256_of(5000)}
    return r.results[0]


@pytest.mark.parametrize("read_n", [False, True])
def test_sock_read_fires_mid_body(mpy, fault, read_n):
    v = timed(mpy, fault, "/bytes/100000?stall=1000&stall_s=5", session={"sock_read": 0.5}, from_body=True,
              read_n=read_n)
    assert (v["error"], v["phase"], v["got"], v["connection_error"]) == ("SocketTimeoutError", "body", 1000, True)
    assert 450 <= v["ms"] <= 1500, v


def test_sock_read_fires_before_the_head(mpy, fault):
    v = timed(mpy, fault, "/bytes/1000?delay=3", session={"sock_read": 0.5})
    assert (v["error"], v["phase"]) == ("SocketTimeoutError", "connect")
    assert 450 <= v["ms"] <= 1500, v


def test_per_request_timeout_overrides_the_session(mpy, fault):
    v = timed(mpy, fault, "/bytes/100000?stall=1000&stall_s=5", session={"sock_read": 30},
              request={"sock_read": 0.3}, from_body=True)
    assert (v["error"], v["phase"]) == ("SocketTimeoutError", "body")
    assert 250 <= v["ms"] <= 1200, v


def test_total_fires_even_while_data_keeps_coming(mpy, fault):
    # 200 KB at 100 KB/s: every read gets data within sock_read, only the total deadline can stop it
    v = timed(mpy, fault, "/bytes/200000?rate=100000", session={"sock_read": 5, "total": 0.8})
    assert (v["error"], v["phase"]) == ("SocketTimeoutError", "body")
    assert 0 < v["got"] < 200000
    assert 700 <= v["ms"] <= 1800, v


def test_total_as_a_plain_number_covers_the_head(mpy, fault):
    v = timed(mpy, fault, "/bytes/1000?delay=3", number=0.6)
    assert (v["error"], v["phase"]) == ("SocketTimeoutError", "connect")
    assert 550 <= v["ms"] <= 1600, v


def test_total_covers_every_hop_of_a_redirect_chain(mpy, fault):
    # three redirects, then the body, each answer 0.4 s late: each hop is within the total, the four are not (before,
    # each hop had a total of its own and the body came)
    v = timed(mpy, fault, "/chain/3/bytes/1000?delay=0.4", number=1)
    assert (v["error"], v.get("phase")) == ("SocketTimeoutError", "connect"), v
    assert "/bytes/1000" not in [r.path for r in fault.log], [r.target for r in fault.log]


def test_trailers_are_timed_out_as_a_whole(mpy):
    # a one-byte chunked body, then 20 trailer lines 0.1 s apart: each within sock_read, all of them not (before,
    # only each wait was timed: trailers a byte every few seconds held a download up for hours)
    body = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n"
    srv = ScriptServer({"/t": [body] + [0.1, b"X-More: trailers\r\n"] * 20 + [b"\r\n"]})
    try:
        r = mpy.run("""
import aiohttp
async def main():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_read=0.3)) as session:
        async with session.get(URL) as resp:
            result(err=(await error_of(resp.read()))[0])
run(main())
""", URL=srv.url("/t"))
    finally:
        srv.close()
    assert r.value == {"err": "SocketTimeoutError"}


def test_no_timeout_fires_on_a_slow_but_steady_body(mpy, fault):
    # the counterpart: sock_read bounds each wait, not the whole body
    v = timed(mpy, fault, "/bytes/100000?rate=200000", session={"sock_read": 0.3})
    assert v == {"error": None, "got": 100000}


# 7 days is more than a 32-bit port's ticks_ms can time (an ESP32's: ticks_add refuses 6.2 days), 30 days more than a
# machine word of milliseconds: such timeouts wait as long as ticks can (about 3 days), and the request goes through
@pytest.mark.parametrize("days", [7, 30])
def test_timeouts_of_days_let_the_request_through(mpy, fault, days):
    s = days * 86400
    v = timed(mpy, fault, "/bytes/100000", session={"total": s, "connect": s, "sock_read": s})
    assert v == {"error": None, "got": 100000}
    v = timed(mpy, fault, "/bytes/100000", number=s)
    assert v == {"error": None, "got": 100000}


def test_timeout_over_tls(mpy, fault_tls, certs):
    r = mpy.run("""
import aiohttp, time
async def main():
    async with aiohttp.ClientSession(ssl=aiohttp.tls_context(CA),
                                     timeout=aiohttp.ClientTimeout(sock_read=0.4)) as session:
        async with session.get(URL) as resp:
            t0 = time.ticks_ms()
            err = await error_of(resp.read())
            result(err=err[0], ms=time.ticks_diff(time.ticks_ms(), t0))
run(main())
""", URL=fault_tls.url("/bytes/100000?stall=3000&stall_s=5"), CA=certs.ca_der_path)
    assert r.value["err"] == "SocketTimeoutError"
    assert 350 <= r.value["ms"] <= 1400, r.value


# An app may give each read a short time and, when it is up, cancel it and read again. The cancelled read must
# not have taken a byte, wherever it was waiting: in the data, a chunk's CRLF or size line, the trailers, the
# gzip stream. (Here the task is cancelled directly: asyncio.wait_for on MicroPython can lose a result that
# arrives as the time runs out, since cancelling its runner also overwrites the finished read's result.)
RETRIED = """
import asyncio, aiohttp


async def within(aw, ms):
    t = asyncio.create_task(aw)
    await asyncio.sleep_ms(ms)
    if not t.done():
        t.cancel()
    try:
        return await t
    except asyncio.CancelledError:
        return None

async def main():
    buf = bytearray(1024)
    sha = new_sha()
    got = cancelled = tries = 0
    async with aiohttp.ClientSession() as s:
        async with s.get(URL) as r:
            while True:
                tries += 1  # 0 to 2 ms: cancelled before, while and after the read waits
                if READ_N:
                    b = await within(r.content.read(1024), tries % 3)
                    n = None if b is None else len(b)
                else:
                    n = await within(r.content.readinto(buf), tries % 3)
                    b = None if n is None else memoryview(buf)[:n]
                if n is None:
                    cancelled += 1
                    continue
                if not n:
                    break
                sha.update(b)
                got += n
    result(sha=hexdigest(sha), got=got, cancelled=cancelled)

run(main())
"""


@pytest.mark.parametrize("read_n", [False, True])
@pytest.mark.parametrize("query", ["", "&chunked=1", "&chunked=1&trailer=1", "&gzip=1", "&chunked=1&gzip=1"])
def test_a_cancelled_read_takes_no_byte(mpy, fault, query, read_n):
    text = "gzip" in query
    n = 60000 if text else 6000  # text compresses 20 to 1: enough of it to be cancelled inside
    # 20 KB/s, slower than any reader here even on a busy machine: most reads wait, and some are cancelled
    v = mpy.run(RETRIED, URL=fault.url("/bytes/%d?trickle=1&rate=20000%s%s" % (n, query, "&text=1" if text else "")),
                READ_N=read_n).value
    assert v["cancelled"] > 0 and (v["sha"], v["got"]) == (sha256_of(n, text=text), n), v

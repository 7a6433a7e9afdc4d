"""State that goes stale as a device runs for weeks: its clock wrapping, pooled connections a server let go.

An ESP32's ticks_ms counts 30 bits and wraps every 2**30 ms (12.4 days); ticks_diff tells two times apart only
within half that. What the library keeps between requests (an address looked up, an idle connection) is kept for
as long as nothing asks for it, which may be days: its age must still read as an age then. These tests give the
library's modules the 32-bit port's clock (`tests/mpy/clock32.py`) and move it on by days at once. The pool's
other side: a keep-alive connection the server closed (its process restarted on the same port), or abandoned without
a word. And the idle session's close, met by a download that starts in the same turn.
"""
import socket
import threading

import pytest

from tools.testservers import _ThreadServer, payload, sha256_of

DAY_MS = 24 * 3600 * 1000
WRAP = 1 << 30  # ms: where a 32-bit port's ticks_ms starts again from 0

# The client's modules on the 32-bit clock; every name looked up answers 127.0.0.1, counted
CLOCK = """
import asyncio, socket
import aiohttp
from aiohttp import client, connection
from clock32 import clock_of_a_32_bit_port

clock = clock_of_a_32_bit_port((connection, client), START)
looked_up = []


def resolver(host, port, *args):
    looked_up.append(host)
    return socket.getaddrinfo("127.0.0.1", port, *args)


connection._getaddrinfo = resolver
opened = [0]
real_open = connection.Connection.open


def counting_open(conn, address):
    opened[0] += 1
    return real_open(conn, address)


connection.Connection.open = counting_open
"""


def test_an_address_looked_up_days_ago_is_looked_up_again_whatever_the_clock_wrapped(mpy, fault):
    # An address is kept 60 s. Its age read by ticks_diff alone comes out negative 6.2 days on (2**29 ms), young for
    # the next 6.2 days, and the address was used as fresh: for half of every 12.4 days, after a first week.
    v = mpy.run(CLOCK + """
async def main():
    seen = []
    for later in STEPS:
        clock[0] += later
        async with aiohttp.ClientSession() as session:  # (its own connection: each request connects)
            async with session.get(URL) as resp:
                seen.append([sha256(await resp.read()) == SHA, len(looked_up)])
    result(seen=seen)

run(main())
""", START=WRAP - 1000, STEPS=[0, 2000, 2 ** 29 + 5000, 30000, WRAP - 40000, 3 * DAY_MS],
                 URL="http://kept.test:%d/bytes/300" % fault.port, SHA=sha256_of(300)).value
    sha = True  # (the bytes are exact)
    # looked up at first; kept across the wrap 2 s later; 6.2 days later: again; kept 30 s later; 12.4 days less
    # 10 s later: again; 3 days later: again
    assert v["seen"] == [[sha, 1], [sha, 1], [sha, 2], [sha, 2], [sha, 3], [sha, 4]], v


def test_an_idle_connection_left_for_days_is_not_reused_whatever_the_clock_wrapped(mpy, fault):
    # A session keeps an idle connection keepalive_timeout (15 s). One left for 6.2 days read as idle for less
    # than nothing, and a long-lived session (an app's) sent its next request on it, to a server that has long
    # forgotten it (found by the probe when the server closed it; a read timeout when a NAT dropped it).
    v = mpy.run(CLOCK + """
async def main():
    seen = []
    async with aiohttp.ClientSession() as session:
        for later in STEPS:
            clock[0] += later
            async with session.get(URL) as resp:
                seen.append([sha256(await resp.read()) == SHA, opened[0]])
    result(seen=seen)

run(main())
""", START=WRAP - 1000, STEPS=[0, 2000, 2 ** 29 + 5000, 10000, WRAP - 20000, 16000],
                 URL=fault.url("/bytes/300"), SHA=sha256_of(300)).value
    sha = True  # (the bytes are exact)
    # reused across the wrap 2 s later; 6.2 days later: a new one; reused 10 s later; 12.4 days less 10 s later: a
    # new one; 16 s later: a new one
    assert v["seen"] == [[sha, 1], [sha, 1], [sha, 2], [sha, 2], [sha, 3], [sha, 4]], v


def test_downloads_and_a_websocket_across_the_wrap(mpy, fault, ws_aiohttp):
    # The clock 300 ms before the wrap: every deadline, read timeout, retry, segment, the session's idle close and
    # a websocket's heartbeat are timed across it, as an ESP32 does 12.4 days after boot
    v = mpy.run(CLOCK + """
from aiohttp import websocket
from mpos import DownloadManager
from mpos.net import admission, download, segments

clock_of_a_32_bit_port((connection, client, websocket, admission, download, segments), START)
DownloadManager.session_idle_ms = 200
DownloadManager.retry_base_ms = 10


async def websocket_across(got):
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(WS + "/echo", heartbeat=0.2)
        try:
            await ws.receive(timeout=0.7)  # nothing comes; the heartbeat pings and hears its pongs meanwhile
        except asyncio.TimeoutError:
            got.append("quiet")
        await ws.send_str("still here")
        got.append((await ws.receive()).data)
        await ws.close()


async def main():
    before = client.ticks_ms()
    heard = []
    websocket_task = asyncio.create_task(websocket_across(heard))
    got = [sha256(await DownloadManager.download_url(URL + "/bytes/30000?rate=60000", deadline=5, timeout=1))]
    got.append(await DownloadManager.download_url(URL + "/bytes/60000", outfile="seg.bin", segments=2, deadline=5))
    got.append(sha256_file("seg.bin"))
    got.append(sha256(await DownloadManager.download_url(URL + "/bytes/20000?stall=5000&stall_s=1&key=w",
                                                         timeout=0.2)))
    waited = 0
    while DownloadManager.is_session_active() and waited < 300:  # (a hang guard: it closes 200 ms on)
        await asyncio.sleep_ms(10)
        waited += 1
    got.append(DownloadManager.is_session_active())
    await websocket_task
    result(got=got + heard, wrapped=client.ticks_ms() < before)

run(main())
""", START=WRAP - 300, URL=fault.base, WS=ws_aiohttp.base).value
    assert v["got"] == [sha256_of(30000), True, sha256_of(60000), sha256_of(20000), False, "quiet", "still here"], v
    assert v["wrapped"], v


# --- a pooled connection the server let go -------------------------------------------------------------------------

class Forgetful(_ThreadServer):
    """GET /bytes/N: payload(N), kept alive. GET /restart/fin (or /restart/reset): every other connection ends (a
    FIN, or a reset: the server's process exited, or crashed) and the port is listened on anew, before the answer.
    GET /abandon: every other connection stays open and is never read or answered again (a server gone without a
    word; a NAT that forgot the connection). .requests: (incarnation, connection number, path) of each request."""

    def __init__(self, certs=None):
        self.requests = []
        self.incarnation = 1
        self.open = {}  # connection number -> what becomes of it: None (served), "fin", "reset" or "abandon"
        self.lock = threading.Lock()
        self.closed = False
        super().__init__(certs)

    def close(self):
        self.closed = True
        super().close()

    def _answer(self, conn, number):
        conn.settimeout(0.02)  # (each wait for a request looks at the connection's fate this often)
        with self.lock:
            self.open[number] = None
        try:
            if self._tls:
                conn.settimeout(10)
                conn = self._tls.wrap_socket(conn, server_side=True)
                conn.settimeout(0.02)
            data = b""
            while True:
                while b"\r\n\r\n" not in data and not self._met_fate(conn, number):
                    try:
                        part = conn.recv(4096)
                    except socket.timeout:
                        continue
                    if not part:
                        return
                    data += part
                if b"\r\n\r\n" not in data:
                    return
                head, data = data.split(b"\r\n\r\n", 1)
                path = head.split(b" ")[1].decode()
                with self.lock:
                    self.requests.append((self.incarnation, number, path))
                if self.open[number] == "abandon":  # read and counted, never answered
                    while not self.closed:
                        threading.Event().wait(0.05)
                    return
                if self._met_fate(conn, number):  # (a request that came as its fate was decided: unanswered)
                    return
                if path.startswith("/restart/") or path == "/abandon":
                    self._let_go(number, path.rsplit("/", 1)[-1])
                    conn.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                    return
                body = payload(int(path.rsplit("/", 1)[-1]))
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        except (OSError, ValueError):
            pass
        finally:
            with self.lock:
                self.open.pop(number, None)
            conn.close()

    def _met_fate(self, conn, number):
        # -> whether the connection's fate came: it then ends as that fate says, once this returns. An abandoned
        # one is still read, so that a request sent on it is counted whenever it comes (a slow client's too)
        fate = self.open[number]
        if fate == "abandon":
            return self.closed
        if fate == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        return fate is not None

    def _let_go(self, me, fate):
        if fate != "abandon":
            port = self.sock.getsockname()[1]
            self.sock.shutdown(socket.SHUT_RDWR)  # (the old process listens no more: its accept() returns now)
            self.sock.close()
        with self.lock:
            others = [n for n in self.open if n != me]
            for n in others:
                self.open[n] = fate
        if fate == "abandon":
            return
        for _ in range(500):  # (a hang guard: each goes within 20 ms)
            if not any(n in self.open for n in others):
                break
            threading.Event().wait(0.01)
        self.sock = socket.create_server(("127.0.0.1", port), backlog=64)  # the new process, on the same port
        self.incarnation += 1
        threading.Thread(target=self._serve, daemon=True).start()


@pytest.fixture
def forgetful():
    with Forgetful() as srv:
        yield srv


@pytest.fixture
def forgetful_tls(certs):
    with Forgetful(certs) as srv:
        yield srv


LET_GO = """
import asyncio
import aiohttp
from mpos import DownloadManager

DownloadManager.session_idle_ms = 60000  # the pooled connection stays between the two downloads
DownloadManager.retry_base_ms = 10


async def let_go(how):  # on a connection of its own
    async with aiohttp.ClientSession() as other:
        async with other.get(BASE + "/" + how) as resp:
            assert resp.status == 204


async def second(client):
    if client == "DownloadManager":
        return sha256(await DownloadManager.download_url(BASE + "/bytes/4000", timeout=TIMEOUT))
    try:
        async with session.get(BASE + "/bytes/4000", timeout=aiohttp.ClientTimeout(sock_read=TIMEOUT)) as resp:
            return sha256(await resp.read())
    except aiohttp.ClientError as e:
        return type(e).__name__


async def main():
    global session
    session = aiohttp.ClientSession(ssl=aiohttp.tls_context(CA) if CA else None)
    if CLIENT == "DownloadManager":
        first = sha256(await DownloadManager.download_url(BASE + "/bytes/3000", timeout=TIMEOUT))
    else:
        async with session.get(BASE + "/bytes/3000") as resp:
            first = sha256(await resp.read())
    await let_go(HOW)
    got = await second(CLIENT)
    await DownloadManager.close_session()
    await session.close()
    result(first=first, second=got)

run(main())
"""


@pytest.mark.parametrize("client", ["DownloadManager", "aiohttp"])
@pytest.mark.parametrize("how", ["restart/fin", "restart/reset"])
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_pooled_connection_whose_server_restarted_is_replaced_before_a_request_goes_out(
        mpy, forgetful, forgetful_tls, certs, client, how, scheme):
    # The server's process restarted on the same port while the connection idled: the probe before its reuse
    # finds it closed, and the request goes out once, on a new connection to the new process
    srv = forgetful_tls if scheme == "https" else forgetful
    v = mpy.run(LET_GO, BASE=srv.url(""), HOW=how, CLIENT=client, TIMEOUT=5,
                CA=certs.ca_der_path if scheme == "https" else None).value
    assert [v["first"], v["second"]] == [sha256_of(3000), sha256_of(4000)], v
    asked = [(incarnation, path) for incarnation, _, path in srv.requests if path.startswith("/bytes")]
    assert asked == [(1, "/bytes/3000"), (2, "/bytes/4000")], srv.requests


@pytest.mark.parametrize("client, second", [("DownloadManager", sha256_of(4000)), ("aiohttp", "SocketTimeoutError")])
def test_a_pooled_connection_the_server_abandoned_costs_one_read_timeout(mpy, forgetful, client, second):
    # No FIN, no reset: nothing tells the connection from a live one, so the request waits out its read timeout.
    # DownloadManager then tries again, on a new connection; the client alone reports the timeout (as aiohttp).
    v = mpy.run(LET_GO, BASE=forgetful.url(""), HOW="abandon", CLIENT=client, TIMEOUT=0.3, CA=None).value
    assert [v["first"], v["second"]] == [sha256_of(3000), second], v
    asked = [(number, path) for _, number, path in forgetful.requests if path.startswith("/bytes")]
    first = asked[0][0]  # the connection abandoned: both requests went out on it
    again = [(asked[-1][0], "/bytes/4000")] if client == "DownloadManager" else []  # a new one
    assert asked == [(first, "/bytes/3000"), (first, "/bytes/4000")] + again, forgetful.requests
    assert first not in [number for number, _ in again], forgetful.requests


# --- the idle session's close, as a download starts ---------------------------------------------------------------

@pytest.mark.parametrize("first", ["download", "closer"])
def test_a_download_that_starts_as_the_idle_session_closes(mpy, fault, first):
    # The task that closes the idle session wakes in the very turn a download starts. Whichever runs first, the
    # download ends whole: on the session and its pooled connection if it came first (the closer leaves it be),
    # else on a new session; the session closes once idle after it, and nothing is left open.
    v = mpy.run("""
import asyncio
from mpos import DownloadManager, TaskManager

wakes = []  # the closer's sleeps, each ended when the test says


async def held_sleep(ms):
    woken = asyncio.Event()
    wakes.append(woken)
    await woken.wait()


async def closer_asleep():
    for _ in range(1000):  # (a hang guard)
        if wakes:
            return wakes.pop()
        await asyncio.sleep_ms(1)


TaskManager.sleep_ms = held_sleep
DownloadManager.session_idle_ms = 1000


async def main():
    base = fd_count()
    got = [sha256(await DownloadManager.download_url(URL + "/bytes/3000"))]
    closer = await closer_asleep()
    if FIRST == "download":
        second = asyncio.create_task(DownloadManager.download_url(URL + "/bytes/4000"))
        closer.set()
    else:
        closer.set()
        second = asyncio.create_task(DownloadManager.download_url(URL + "/bytes/4000"))
    got.append(sha256(await second))
    got.append(DownloadManager.is_session_active())
    (await closer_asleep()).set()  # the next closer, made as the second download ended
    for _ in range(1000):
        if not DownloadManager.is_session_active():
            break
        await asyncio.sleep_ms(1)
    got.append(DownloadManager.is_session_active())
    result(got=got, fds=fd_count() - base, tasks=len(TaskManager.list_tasks()))

run(main())
""", URL=fault.base, FIRST=first).value
    assert v == {"got": [sha256_of(3000), sha256_of(4000), True, False], "fds": 0, "tasks": 0}, v
    assert (fault.connections, fault.requests) == ((1, 2) if first == "download" else (2, 2))


# --- a quiet session's idle connections -----------------------------------------------------------------------------

def test_a_quiet_session_closes_its_idle_connections_once_their_keep_alive_ran_out(mpy, fault, fault_tls):
    # An app's session that goes quiet (a screen left open for hours) held its idle connections until its next
    # request: a socket each, of an ESP32's ten or so, and over TLS mbedTLS's 20-40 KB of buffers. Its watchdog now
    # closes them once their keep-alive ran out, as aiohttp's connector does, then ends; a request meanwhile is
    # timed as before.
    v = mpy.run("""
import asyncio, aiohttp

async def main():
    base = fd_count()
    session = aiohttp.ClientSession(keepalive_timeout=0.5)
    for url in URLS:
        async with session.get(url) as resp:
            await resp.read()
    held = [len(session._idle), fd_count() - base]
    try:
        async with session.get(STALLED, timeout=aiohttp.ClientTimeout(sock_read=0.2)) as resp:
            await resp.read()
        timed = "not timed out"
    except aiohttp.ClientError as e:
        timed = type(e).__name__
    for _ in range(300):  # (a hang guard: they go half a second on, at the watchdog's next tick)
        if not session._idle and session._watchdog_task is None:
            break
        await asyncio.sleep_ms(10)
    quiet = [len(session._idle), fd_count() - base, session._watchdog_task is None]
    async with session.get(URLS[0]) as resp:  # (the session serves on)
        sha = sha256(await resp.read())
    await session.close()
    result(held=held, timed=timed, quiet=quiet, sha=sha, fds=fd_count() - base)

run(main())
""", URLS=[fault.url("/bytes/300"), fault_tls.url("/bytes/300")], STALLED=fault.url("/bytes/3000?stall=100")).value
    assert v == {"held": [2, 2], "timed": "SocketTimeoutError", "quiet": [0, 0, True], "sha": sha256_of(300),
                 "fds": 0}, v

"""When the sockets run out: an ESP32's lwIP has about ten for everything (the OS's websockets, the App Store's index
and icons, the updater, apps' downloads), and socket() then raises OSError (ENFILE from lwIP, EMFILE on the unix port
once its descriptors are gone). tests/mpy/socketbudget.py stands in for lwIP: at most N of the client's sockets open
at once, one more refused with ENFILE; a connect() can be made to fail too, as on a Wi-Fi that went away. One test
takes the unix port's real descriptors away instead (a lower RLIMIT_NOFILE). TLS connections whose mbedTLS finds no
memory (tests/mpy/tlsmemory.py stands in for it) are made room for likewise."""
import hashlib

import pytest

from tools.testservers import sha256_of

ENFILE = 23  # lwIP's "no socket left", socketbudget.ENFILE
EMFILE = 24  # the unix port's "too many open files"

# 20 icons at once under DownloadManager's 3 connections, every other one to a file (FILES); the server answers each a
# little late, so the downloads overlap and contend for the sockets.
ICONS = """
import asyncio
from socketbudget import Budget
from stepcancel import admission_is_free, loop_is_idle
from mpos import DownloadManager

DownloadManager.session_idle_ms = 0  # the last download closes the session: every socket must then be back
DownloadManager.retry_base_ms = DownloadManager.retry_max_ms = 1  # (a retry, were there one, costs no real time)
fds = fd_count()
budget = Budget(SOCKETS).install() if SOCKETS is not None else None

def icon(i):
    url = URL + "/bytes/%d?delay=0.02" % (1000 + i)
    if i % 2 or not FILES:
        return DownloadManager.download_url(url, tries=1)
    return DownloadManager.download_url(url, outfile=DIR + "/%d.png" % i, tries=1)

async def main():
    got = await asyncio.gather(*[icon(i) for i in range(20)])
    await asyncio.sleep_ms(0)
    return got, loop_is_idle(), admission_is_free()

got, loop, held = run(main())
shas = [sha256(g) if isinstance(g, bytes) else g and sha256_file(DIR + "/%d.png" % i) for i, g in enumerate(got)]
parts = [i for i in range(20) if exists(DIR + "/%d.png.part" % i)]
result(shas=shas, parts=parts, loop=loop, held=held, left=fd_count() - fds, most=budget and budget.most,
       refused=budget and budget.refused)
"""


def icon_shas():
    return [sha256_of(1000 + i) for i in range(20)]


@pytest.mark.parametrize("sockets", [1, 2])
def test_twenty_icons_at_once_all_arrive_with_fewer_sockets_than_max_connections(mpy, fault, sockets):
    # A download that finds no socket waits for one of the others to give its own back: no try is spent on it
    r = mpy.run(ICONS, SOCKETS=sockets, FILES=True, URL=fault.base, DIR=str(mpy.tmpdir))
    refused = r.value.pop("refused")
    assert r.value == {"shas": icon_shas(), "parts": [], "loop": [], "held": [], "left": 0, "most": sockets}, (
        r.stderr)
    assert refused < 2 * 20, refused  # a request tries again when a socket came back, not in a loop (it made 6000)


def test_a_segmented_download_takes_turns_on_fewer_sockets_than_segments(mpy, fault):
    r = mpy.run("""
from socketbudget import Budget
from mpos import DownloadManager
DownloadManager.session_idle_ms = 0
DownloadManager.max_connections = 4
fds = fd_count()
budget = Budget(2).install()
ok = DownloadManager.download_url(URL, outfile=OUT, segments=4, tries=1)
result(ok=ok, sha=sha256_file(OUT), most=budget.most, few=budget.refused < 10, left=fd_count() - fds)
""", URL=fault.url("/bytes/400000?rate=2000000"), OUT=str(mpy.tmpdir / "app.mpk"))
    assert r.value == {"ok": True, "sha": sha256_of(400000), "most": 2, "few": True, "left": 0}


def test_twenty_icons_at_once_all_arrive_when_the_descriptors_run_out(mpy, fault):
    # The unix port's own limit: 3 descriptors for stdin, stdout and stderr, 2 for sockets. In memory: on a device
    # files do not take sockets, here they would.
    r = mpy.run(ICONS, SOCKETS=None, FILES=False, URL=fault.base, DIR=str(mpy.tmpdir), fds=5)
    assert r.value == {"shas": icon_shas(), "parts": [], "loop": [], "held": [], "left": 0, "most": None,
                       "refused": None}, r.stderr


# What the client does when socket() fails: RUN(main) runs main(session) on a ClientSession of its own, the budget
# installed, and reports its result with the descriptors left once the session closed.
CLIENT = """
import asyncio, errno
import aiohttp
from socketbudget import Budget
from mpos import DownloadManager

async def get(session, url, **kw):
    async with session.get(url, **kw) as resp:
        return sha256(await resp.read())

async def failure(coro):
    # -> what coro raised: its class's name, the aiohttp classes it is one of, its errno, whether
    # DownloadManager.is_network_error() calls it a network error, and whether its message says why
    try:
        await coro
    except Exception as e:
        kinds = [k for k in ("ClientError", "ClientConnectionError", "ClientOSError", "ClientConnectorError")
                 if isinstance(e, getattr(aiohttp, k))]
        return [type(e).__name__, kinds, getattr(e, "errno", None), DownloadManager.is_network_error(e),
                "no socket free" in str(e)]
    return None

def RUN(main, sockets, **kw):
    fds = fd_count()
    budget = Budget(sockets)
    async def go():
        async with aiohttp.ClientSession(**kw) as session:
            budget.install()
            return await main(session, budget)
    got = run(go())
    result(got=got, left=fd_count() - fds)
"""

CONNECTOR_ERROR = ["ClientConnectorError", ["ClientError", "ClientConnectionError", "ClientOSError",
                                            "ClientConnectorError"], ENFILE, True, True]


@pytest.mark.parametrize("connector", [False, True], ids=["session", "TCPConnector"])
def test_no_socket_free_is_a_client_connector_error_with_its_errno(mpy, fault, connector):
    r = mpy.run(CLIENT + """
async def main(session, budget):
    return await failure(get(session, URL))
RUN(main, 0, **({"connector": aiohttp.TCPConnector(limit=4)} if CONNECTOR else {}))
""", URL=fault.url("/bytes/100"), CONNECTOR=connector)
    assert r.value == {"got": CONNECTOR_ERROR, "left": 0}


def test_requests_of_one_session_take_turns_on_the_sockets_there_are(mpy, fault):
    r = mpy.run(CLIENT + """
async def main(session, budget):
    got = await asyncio.gather(*[get(session, URL + "/bytes/%d?delay=0.02" % n) for n in (100, 200, 300, 400, 500)])
    return [got, budget.most]
RUN(main, 1)
""", URL=fault.base)
    assert r.value == {"got": [[sha256_of(n) for n in (100, 200, 300, 400, 500)], 1], "left": 0}


def test_a_request_waits_for_a_socket_no_longer_than_its_connect_timeout(mpy, fault):
    # The only socket is held by a body that stalls: the second request fails within its connect timeout
    r = mpy.run(CLIENT + """
import time
async def main(session, budget):
    stalled = await session.get(URL + "/bytes/5000?stall=100&stall_s=5")
    t = time.ticks_ms()
    got = await failure(get(session, URL + "/bytes/100", timeout=aiohttp.ClientTimeout(connect=0.2)))
    waited = time.ticks_diff(time.ticks_ms(), t)
    stalled.release()
    return [got, 150 <= waited < 1000]
RUN(main, 1)
""", URL=fault.base)
    assert r.value == {"got": [CONNECTOR_ERROR, True], "left": 0}


STALLS = "/bytes/5000?stall=100&stall_s=5"  # a body that stalls after 100 bytes, for 5 s: its connection is held

# A GET of URL with a 1 s connect timeout waits while the responses of HELD (bodies that stall) are open; at 500 ms
# then(session, budget, held) changes what it waits for. -> the name of what it failed with, and whether that was
# within one connect timeout of its start in all
ONE_CONNECT_TIMEOUT = CLIENT + """
import time
async def main(session, budget):
    held = []
    for url in HELD:
        held.append(await session.get(url))
    t = time.ticks_ms()
    waiting = asyncio.create_task(failure(get(session, URL, timeout=aiohttp.ClientTimeout(connect=1))))
    await asyncio.sleep_ms(500)
    await then(session, budget, held)
    got = await waiting
    waited = time.ticks_diff(time.ticks_ms(), t)
    for resp in held:
        resp.release()
    return [got[0], 900 <= waited < 1300]
"""


def test_a_wait_for_a_connection_then_for_a_socket_lasts_one_connect_timeout_in_all(mpy, fault):
    # TCPConnector(limit=2) is full: the GET waits for room there. At 500 ms a held response goes, and its socket
    # with it (taken elsewhere: one socket left), so the GET waits for a socket next, until 1 s from its start
    r = mpy.run(ONE_CONNECT_TIMEOUT + """
async def then(session, budget, held):
    budget.sockets = 1
    held.pop().release()
RUN(main, 2, connector=aiohttp.TCPConnector(limit=2))
""", HELD=[fault.url(STALLS)] * 2, URL=fault.url("/bytes/100"))
    assert r.value == {"got": ["ClientConnectorError", True], "left": 0}


def test_a_wait_for_a_socket_then_for_a_connection_lasts_one_connect_timeout_in_all(mpy, fault, fault_tls):
    # The other way round: the GET waits for the only socket, held by a response from another host. At 500 ms a
    # second socket comes and a request to the GET's host takes it; then the held response goes, and the GET finds
    # TCPConnector(limit_per_host=1) full, and waits there until 1 s from its start
    r = mpy.run(ONE_CONNECT_TIMEOUT + """
async def then(session, budget, held):
    budget.sockets = 2
    held.append(await session.get(SAME_HOST))
    held.pop(0).release()
RUN(main, 1, connector=aiohttp.TCPConnector(limit_per_host=1))
""", HELD=[fault_tls.url(STALLS)], URL=fault.url("/bytes/100"), SAME_HOST=fault.url(STALLS))
    assert r.value == {"got": ["ConnectionTimeoutError", True], "left": 0}


def test_an_idle_connection_is_given_up_for_a_new_host(mpy, fault, real):
    # The pool keeps a connection to the first host; the second host gets its socket
    r = mpy.run(CLIENT + """
async def main(session, budget):
    first = await get(session, FIRST)
    second = await get(session, SECOND)
    return [first, second, budget.most]
RUN(main, 1)
""", FIRST=fault.url("/bytes/100"), SECOND=real.url("/stream/1500"))
    assert r.value == {"got": [sha256_of(100), sha256_of(1500), 1], "left": 0}


# A TLS handshake that finds no memory (tests/mpy/tlsmemory.py: at most CONNECTIONS TLS sockets open at once, FAILS
# says how one more fails, AT_WRAP where): the session's oldest idle connection goes, and its buffers with it.
# main(session, budget) gets URLS one after another -> their sha256, or how one failed; the handshakes refused
TLS_MEMORY = CLIENT + """
from tlsmemory import TLSMemory, X509_ALLOC_FAILED
tls = TLSMemory(CONNECTIONS, {"ENOMEM": errno.ENOMEM, "X509_ALLOC_FAILED": X509_ALLOC_FAILED}.get(FAILS), AT_WRAP)

async def main(session, budget):
    got = []
    for url in URLS:
        try:
            got.append(await get(session, url))
        except Exception as e:
            got.append([type(e).__name__, getattr(e, "errno", None)])
    return [got, tls.refused]
RUN(main, 4, ssl=tls)
"""


@pytest.mark.parametrize("fails, at_wrap", [("ENOMEM", False), ("X509_ALLOC_FAILED", False), ("MemoryError", False),
                                            ("ENOMEM", True), ("MemoryError", True)],
                         ids=["handshake ENOMEM", "handshake X509_ALLOC_FAILED", "handshake MemoryError",
                              "wrap ENOMEM", "wrap MemoryError"])
def test_a_tls_handshake_short_of_memory_takes_the_memory_of_an_idle_connection(mpy, fault_tls, real_tls, fails,
                                                                                 at_wrap):
    # The pool keeps the first host's connection; the second host's handshake finds memory once it is closed
    r = mpy.run(TLS_MEMORY, CONNECTIONS=1, FAILS=fails, AT_WRAP=at_wrap,
                URLS=[fault_tls.url("/bytes/100"), real_tls.url("/stream/1500")])
    assert r.value == {"got": [[sha256_of(100), sha256_of(1500)], 1], "left": 0}


@pytest.mark.parametrize("fails, at_wrap", [("ENOMEM", False), ("X509_ALLOC_FAILED", False), ("MemoryError", False),
                                            ("MemoryError", True)],
                         ids=["handshake ENOMEM", "handshake X509_ALLOC_FAILED", "handshake MemoryError",
                              "wrap MemoryError"])
def test_a_websocket_short_of_tls_memory_takes_the_memory_of_an_idle_connection(mpy, fault_tls, ws_aiohttp_tls,
                                                                                 fails, at_wrap):
    # A wallet app's wss:// after the App Store's https:// download, on a device with room for one TLS connection
    r = mpy.run(TLS_MEMORY.replace("RUN(main, 4, ssl=tls)", """
async def connect(session, budget):
    got = await get(session, GET)
    async with session.ws_connect(URL) as ws:
        await ws.send_str("hello")
        msg = await ws.receive()
    return [got, msg.data, tls.refused]
RUN(connect, 4, ssl=tls)"""), CONNECTIONS=1, FAILS=fails, AT_WRAP=at_wrap, URLS=[], GET=fault_tls.url("/bytes/100"),
                URL=ws_aiohttp_tls.url("/echo"))
    assert r.value == {"got": [sha256_of(100), "hello", 1], "left": 0}


def test_a_tls_handshake_short_of_memory_with_no_idle_connection_fails_as_today(mpy, fault_tls):
    r = mpy.run(TLS_MEMORY, CONNECTIONS=0, FAILS="ENOMEM", AT_WRAP=False, URLS=[fault_tls.url("/bytes/100")])
    assert r.value == {"got": [[["ClientConnectorError", 12]], 1], "left": 0}


WS = CLIENT + """
async def echo(ws, text):
    await ws.send_str(text)
    msg = await ws.receive()
    return msg.data
"""


def test_a_websocket_finds_no_socket_free_and_fails_cleanly(mpy, ws_aiohttp):
    r = mpy.run(WS + """
async def main(session, budget):
    return await failure(session.ws_connect(URL))
RUN(main, 0)
""", URL=ws_aiohttp.url("/echo"))
    assert r.value == {"got": CONNECTOR_ERROR, "left": 0}


def test_a_websocket_takes_the_socket_of_an_idle_connection(mpy, fault, ws_aiohttp):
    r = mpy.run(WS + """
async def main(session, budget):
    got = await get(session, GET)
    ws = await session.ws_connect(URL)
    said = await echo(ws, "hello")
    await ws.close()
    return [got, said, budget.most]
RUN(main, 1)
""", GET=fault.url("/bytes/100"), URL=ws_aiohttp.url("/echo"))
    assert r.value == {"got": [sha256_of(100), "hello", 1], "left": 0}


def test_an_open_websocket_outlives_requests_that_find_no_socket(mpy, fault, ws_aiohttp):
    # The websocket holds the only socket: a GET fails at once (it is no request to wait for), the websocket talks on
    r = mpy.run(WS + """
async def main(session, budget):
    ws = await session.ws_connect(URL)
    failed = await failure(get(session, GET))
    said = await echo(ws, "still here")
    await ws.close()
    return [failed, said, await get(session, GET)]
RUN(main, 1)
""", GET=fault.url("/bytes/100"), URL=ws_aiohttp.url("/echo"))
    assert r.value == {"got": [CONNECTOR_ERROR, "still here", sha256_of(100)], "left": 0}


@pytest.mark.parametrize("path, ends", [("/echo", "ws.close()"), ("/close/1000", "ws.receive()"),
                                        ("/drop", "ws.receive()")], ids=["by us", "by the server", "connection lost"])
def test_a_websocket_that_closes_gives_its_socket_to_a_request_waiting_for_one(mpy, fault, ws_aiohttp, path, ends):
    # Two sockets, one a websocket's, one a stalled body's: a request waiting for one takes the websocket's as soon
    # as it closes, however it closes, not at its connect timeout
    r = mpy.run(WS + """
import time
async def main(session, budget):
    ws = await session.ws_connect(URL)
    stalled = await session.get(GET + "/bytes/5000?stall=100&stall_s=5")
    waiting = asyncio.create_task(get(session, GET + "/bytes/100", timeout=aiohttp.ClientTimeout(connect=3)))
    await asyncio.sleep_ms(50)
    t = time.ticks_ms()
    await """ + ends + """
    got = await waiting
    waited = time.ticks_diff(time.ticks_ms(), t)
    stalled.release()
    return [got, waited < 1000, ws.closed, budget.most]
RUN(main, 2)
""", GET=fault.base, URL=ws_aiohttp.url(path))
    assert r.value == {"got": [sha256_of(100), True, True, 2], "left": 0}


@pytest.mark.parametrize("timeout", [{"total": 0.3}, {"total": 0.3, "connect": 5}], ids=["total", "total first"])
def test_a_websocket_waits_for_a_socket_no_longer_than_the_sessions_total_timeout(mpy, fault, ws_aiohttp, timeout):
    # The session's total bounds a websocket's handshake, as in aiohttp: the wait for a socket (held by a stalled
    # body) ends with it, neither at once nor at the connect timeout
    r = mpy.run(WS + """
import time
async def main(session, budget):
    stalled = await session.get(GET, timeout=aiohttp.ClientTimeout(sock_read=10))
    t = time.ticks_ms()
    got = await failure(session.ws_connect(URL))
    waited = time.ticks_diff(time.ticks_ms(), t)
    stalled.release()
    return [got, 250 <= waited < 1000]
RUN(main, 1, timeout=aiohttp.ClientTimeout(**TIMEOUT))
""", GET=fault.url("/bytes/5000?stall=100&stall_s=5"), URL=ws_aiohttp.url("/echo"), TIMEOUT=timeout)
    assert r.value == {"got": [CONNECTOR_ERROR, True], "left": 0}


# One download in each mode while the sockets are held elsewhere (the OS's websockets, another app) or while the
# network is away; then the same download once they are back. -> each outcome: its value, or the reason and
# is_network_error() of the DownloadError raised; the sockets tried; the old OUTFILE and .part; the fds left.
HELD_ELSEWHERE = """
import errno
from socketbudget import Budget
from mpos import DownloadManager

ENETUNREACH = 101  # (Linux's number; MicroPython's errno module has no name for it)
DownloadManager.retry_base_ms = DownloadManager.retry_max_ms = 1
with open(OUT, "wb") as f:
    f.write(b"old")
fds = fd_count()
budget = Budget(SOCKETS).install()
if CONNECT_ERROR is not None:
    budget.connect_error = getattr(errno, CONNECT_ERROR, ENETUNREACH)
    budget.connect_fails = CONNECT_FAILS

def outcome(**kw):
    try:
        got = DownloadManager.download_url(URL, tries=3, **kw)
    except DownloadManager.DownloadError as e:
        return [e.reason, DownloadManager.is_network_error(e)]
    return sha256(got) if isinstance(got, bytes) else got

outcomes = [outcome(), outcome(outfile=OUT), outcome(chunk_callback=lambda chunk: None), outcome(raise_errors=True)]
tried = budget.opened + budget.refused
old = [sha256_file(OUT), exists(OUT + ".part")]
budget.sockets, budget.connect_error = 4, None
result(outcomes=outcomes, tried=tried, old=old, then=outcome(outfile=OUT) and sha256_file(OUT), left=fd_count() - fds)
"""


def test_a_download_that_finds_every_socket_held_elsewhere_fails_cleanly_after_its_tries(mpy, fault):
    # Sockets held elsewhere may come free (another app's download ends): a network error, tried again with backoff
    r = mpy.run(HELD_ELSEWHERE, SOCKETS=0, CONNECT_ERROR=None, CONNECT_FAILS=None, URL=fault.url("/bytes/3000"),
                OUT=str(mpy.tmpdir / "icon.png"))
    assert r.value == {"outcomes": [None, False, False, ["network", True]], "tried": 4 * 3,
                       "old": [hashlib.sha256(b"old").hexdigest(), False], "then": sha256_of(3000), "left": 0}
    assert r.stderr.count("no socket free") == 4, r.stderr  # one line per failed download, saying why


@pytest.mark.parametrize("code", ["EHOSTUNREACH", "ENETUNREACH", "ECONNABORTED", "ETIMEDOUT"])
def test_a_network_that_went_away_is_tried_again_and_fails_cleanly(mpy, fault, code):
    r = mpy.run(HELD_ELSEWHERE, SOCKETS=4, CONNECT_ERROR=code, CONNECT_FAILS=None, URL=fault.url("/bytes/3000"),
                OUT=str(mpy.tmpdir / "icon.png"))
    assert r.value == {"outcomes": [None, False, False, ["network", True]], "tried": 4 * 3,
                       "old": [hashlib.sha256(b"old").hexdigest(), False], "then": sha256_of(3000), "left": 0}


def test_a_refused_connection_is_not_tried_again(mpy, fault):
    # Nothing listens there: trying again soon cannot help (docs/decisions.md, Retries)
    r = mpy.run(HELD_ELSEWHERE, SOCKETS=4, CONNECT_ERROR="ECONNREFUSED", CONNECT_FAILS=None,
                URL=fault.url("/bytes/3000"), OUT=str(mpy.tmpdir / "icon.png"))
    assert r.value["outcomes"][:3] == [None, False, False] and r.value["outcomes"][3][0] == "network", r.value
    assert r.value["tried"] == 4 and r.value["then"] == sha256_of(3000) and r.value["left"] == 0, r.value


def test_a_network_that_comes_back_between_tries_gives_the_exact_bytes(mpy, fault):
    r = mpy.run(HELD_ELSEWHERE, SOCKETS=4, CONNECT_ERROR="EHOSTUNREACH", CONNECT_FAILS=2, URL=fault.url("/bytes/3000"),
                OUT=str(mpy.tmpdir / "icon.png"))
    assert r.value["outcomes"][0] == sha256_of(3000) and r.value["tried"] == 2 + 4, r.value


def test_a_name_lookup_with_no_descriptor_free_fails_as_a_network_error(mpy, fault):
    # The app holds every descriptor the unix port has (fds=): the C library can't read /etc/hosts, and the lookup
    # of "localhost" fails as a lookup, tried again, until the descriptors come back
    r = mpy.run("""
import socket
from mpos import DownloadManager
DownloadManager.retry_base_ms = DownloadManager.retry_max_ms = 1
# (the modules a failure loads are loaded first: here, imports from source take a descriptor too)
DownloadManager.download_url(URL.replace("localhost", "127.0.0.1").replace("/bytes/", "/status/503?n="), tries=2)
import aiohttp
aiohttp.ClientError  # (and the client's error classes, made when one is first named)
fds = fd_count()
held = []
try:
    while True:
        held.append(socket.socket())
except OSError as e:
    full = e.errno
try:
    DownloadManager.download_url(URL, raise_errors=True)
    failed = None
except DownloadManager.DownloadError as e:
    failed = [e.reason, DownloadManager.is_network_error(e), "cannot resolve localhost" in str(e)]
for s in held:
    s.close()
result(full=full, failed=failed, then=sha256(DownloadManager.download_url(URL)), left=fd_count() - fds)
""", URL=fault.url("/bytes/3000").replace("127.0.0.1", "localhost"), fds=12)
    assert r.value == {"full": EMFILE, "failed": ["network", True, True], "then": sha256_of(3000), "left": 0}


def test_a_request_waiting_for_a_socket_ends_when_its_session_closes(mpy, fault):
    # close() gives every socket back: a request that waited for one then ends at once, not at its connect timeout
    r = mpy.run(CLIENT + """
import time
async def main(session, budget):
    await session.get(URL + "/bytes/5000?stall=100&stall_s=5")  # holds the only socket
    waiting = asyncio.create_task(failure(get(session, URL + "/bytes/100", timeout=aiohttp.ClientTimeout(connect=3))))
    await asyncio.sleep_ms(50)
    t = time.ticks_ms()
    await session.close()
    got = await waiting
    return [got, time.ticks_diff(time.ticks_ms(), t) < 1000, budget.most]
RUN(main, 1)
""", URL=fault.base)
    assert r.value == {"got": [["ClientConnectionError", ["ClientError", "ClientConnectionError"], None, True, False],
                               True, 1], "left": 0}

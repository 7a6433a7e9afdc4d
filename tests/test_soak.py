"""Soak: 300 downloads (1-50 KB) through randomly injected faults, reproducible (fixed seed).

Every download that reports success has exactly the right bytes; every failure left the previous outfile
untouched; recoverable faults (one drop, truncation, stall or 503 per download) are all recovered; permanent
ones all fail; at the end no file descriptor, session or task is left over.

Heap that grows with use: each kind of use (downloads that succeed, fail, time out, are cancelled or redirected to
many hosts; sessions, websockets and tasks made and ended) runs many times in one process, and what it keeps on the
heap must stay within a small fixed slack in all. SOAK_ROUNDS=1000 for a long run.
"""
import hashlib
import os
import random

import pytest

from tools.testservers import refused_url, sha256_of

N = 300
SEED = 20240611
BATCH = 20

SOAK = """
import asyncio, time
from mpos import DownloadManager, TaskManager

def old(i):
    return b'previous %d\\n' % i * 20

async def one(i, url, mode, kw):
    out = 'o%d.bin' % i
    with open(out, 'wb') as f:
        f.write(old(i))
    h = new_sha()
    if mode == 'file':
        kw['outfile'] = out
    elif mode == 'stream':
        kw['chunk_callback'] = h.update
    try:
        r = await DownloadManager.download_url(url, **kw)
    except BaseException as e:
        return ['raised', repr(e)]
    if mode == 'memory':
        got = sha256(r) if r is not None else None
        r = r is not None
    elif mode == 'stream':
        got = hexdigest(h)
    else:
        got = sha256_file(out)
    return [r, got, slurp(out) == old(i)]

def slurp(p):
    with open(p, 'rb') as f:
        return f.read()

async def main():
    DownloadManager.retry_base_ms = 10  # the waits between tries are another test's subject: short ones here
    DownloadManager.retry_max_ms = 50
    base = fd_count()
    t0 = time.ticks_ms()
    res = []
    for k in range(0, len(PLAN), BATCH):
        res += await asyncio.gather(*[one(k + j, *p) for j, p in enumerate(PLAN[k:k + BATCH])])
    ms = time.ticks_diff(time.ticks_ms(), t0)
    await DownloadManager.close_session()
    result(res=res, ms=ms, base=base, after=fd_count(), session=DownloadManager.is_session_active(),
           tasks=len(TaskManager.task_list), jobs=len(DownloadManager.downloads()))

run(main())
"""

# fault -> (query template, recoverable); K is a byte offset inside the body
FAULTS = [
    ("none", "", True, 30),
    ("drop", "drop={K}&key={key}&times=1", True, 15),
    ("truncate", "truncate={K}&key={key}&times=1", True, 15),
    ("stall", "stall={K}&stall_s=2&key={key}&times=1", True, 10),
    ("503", "fail=503&key={key}&times=1", True, 15),
    ("404", "fail=404", False, 5),
    ("short-forever", "truncate={K}&norange=1", False, 5),
    ("bad-sha", "", False, 5),
]


def plan():
    rnd = random.Random(SEED)
    weights = [f[3] for f in FAULTS]
    jobs = []
    for i in range(N):
        n = rnd.randint(1000, 50000)
        seed = rnd.randrange(4)
        name, query, recoverable, _ = rnd.choices(FAULTS, weights)[0]
        mode = rnd.choices(["file", "memory", "stream"], [70, 20, 10])[0]
        k = rnd.randrange(n - 1) if name != "short-forever" else rnd.randrange(1, n - 1)
        q = "seed=%d" % seed + ("&" + query.format(K=k, key="s%d" % i) if query else "")
        kw = {"timeout": 0.5}
        if name == "bad-sha":
            kw["sha256"] = sha256_of(n, seed + 1)
        elif rnd.random() < 0.3:
            kw["sha256"] = sha256_of(n, seed)
        jobs.append((name, recoverable, n, seed, ("/bytes/%d?%s" % (n, q), mode, kw)))
    return jobs


def test_soak_300_downloads_with_random_faults(mpy, fault):
    jobs = plan()
    wire = [(fault.url(p[0]), p[1], p[2]) for *_, p in jobs]
    # 20 downloads at once, a fifth of them holding up to 50 KB bodies (and their bytes copies): the unix port's
    # default 2 MB heap ran out now and then, which is the low-memory tests' subject, not this one's
    run = mpy.run(SOAK, PLAN=wire, BATCH=BATCH, timeout=90, heapsize="8M")
    v = run.value

    def log(url):  # what the DownloadManager logged about this download: the reason for a failure
        return [line for line in run.stderr.splitlines() if url in line]

    assert v["ms"] < 40000, v["ms"]
    assert len(v["res"]) == N
    counts = {}
    for (name, recoverable, n, seed, (url, mode, kw)), r in zip(jobs, v["res"]):
        assert r[0] != "raised", (name, url, mode, r)
        ret, got, untouched = r
        if ret:
            assert got == sha256_of(n, seed), ("wrong bytes reported as success", name, url, mode)
            if mode == "file":
                assert not untouched
        else:
            if mode == "file":
                assert untouched, ("a failure changed the previous outfile", name, url)
        assert ret is recoverable, ("recoverable" if recoverable else "permanent", name, url, mode, kw, r, log(url))
        counts[name] = counts.get(name, 0) + 1
    assert set(counts) == {f[0] for f in FAULTS}, counts  # every kind of fault was exercised
    assert v["after"] == v["base"], v
    assert not v["session"] and v["tasks"] == 0 and v["jobs"] == 0, v


def test_soak_plan_is_reproducible():
    a, b = plan(), plan()
    assert a == b
    assert hashlib.sha256(repr(a).encode()).hexdigest() == hashlib.sha256(repr(b).encode()).hexdigest()


# --- Heap that grows with use ---------------------------------------------------------------------------------------
# MicroPythonOS runs for days: the App Store fetches hundreds of icons, the OS updater checks every few hours, apps
# reconnect their websockets after every Wi-Fi drop. Each kind of use below runs `rounds` times to warm up (pools,
# queues and buffers at their size), then three times `rounds` times, measured: what `rounds` uses keep must stay
# within SLACK bytes in all, not per use (see uses()). SOAK_ROUNDS=1000 runs each that often (minutes), where a leak
# of one byte per use shows.

SOAK_ROUNDS = int(os.environ.get("SOAK_ROUNDS", "0"))
TIME_LIMIT = 300 + SOAK_ROUNDS  # seconds a snippet may run: a use that waits for a read timeout takes about 0.2 s
# Bytes, all uses together: the collector's own bookkeeping moves by a few blocks (544 seen beside other tests,
# where 300 rounds of the same use kept under 512). A 16-byte block kept by each of 50 uses is 800.
SLACK = 768
# Uses that cancel, or run several downloads at once: what the collector still finds pointed to after one (a frame
# from asyncio's queue or a stack, the last use's buffers) flips between levels up to about 4.5 KB apart, for
# stretches of tens of uses, up and down over thousands (measured to 2000); a leak only goes up. At the default
# rounds this catches a leak of a few hundred bytes a use (a task, a download's frame); SOAK_ROUNDS=1000 one of 8.
NOISY = 8192
# Uses that each go to a new host (the pool and the DNS cache turning over at every one) move the least by up to 928
# bytes over 50 or 100 uses (CI runs; no qstr or heap growth over 400 hosts): 200 uses within 1536 bytes, where a
# leak of 16 bytes a use is 3200
NEW_HOST_EACH = (200, 1536)
DNS_KEPT = 8  # aiohttp/connection.py's _DNS_KEPT: the host and port pairs whose addresses are kept

SOAK_HEAP = """
import asyncio, os, socket
import aiohttp
from aiohttp import connection
from mpos import DownloadManager, TaskManager


def on_loopback(host, port, *args, lookup=connection._getaddrinfo):
    # every name under .test is 127.0.0.1: as many hosts as a test likes, all served by the test's server; no name
    # under .invalid is found (as the unix port says it)
    if host.endswith(".invalid"):
        raise OSError("[addrinfo error -2]")
    return lookup("127.0.0.1" if host.endswith(".test") else host, port, *args)


connection._getaddrinfo = on_loopback
aiohttp.ClientError  # (the error classes: 7 KB made once, when the first is raised; made before any use is measured)
DownloadManager.retry_base_ms = 1  # the waits between tries are not these tests' subject
DownloadManager.retry_max_ms = 2
DownloadManager.session_idle_ms = 60000  # the session stays between uses unless a use closes it


def uses(name, rounds):
    # Yields the number of each use to make: `rounds` to warm up, then three times `rounds`, after each of which the
    # heap is looked at. Reports what `rounds` uses kept: the least in use after any of them against the least after
    # any of the `rounds` before (a use's garbage that the collector still finds pointed to from a stack, or a pool's
    # slot taken by turns, is no growth; a leak raises the least too), the smaller of the last two windows' figures.
    # A leak raises both; a step taken once does not (at one heap layout the posts' least rose by 1.6-1.8 KB between
    # two windows, at 50, 100, 200 and 400 uses alike, and not with 800 bytes more allocated before them).
    for i in range(rounds):
        yield i
    least = []
    for window in (1, 2, 3):
        low = None
        for i in range(window * rounds, (window + 1) * rounds):
            yield i
            now = heap_in_use()
            low = now if low is None or now < low else low
        least.append(low)
    result(use=name, kept=min(least[1] - least[0], least[2] - least[1]))
"""


def rounds(default):
    return SOAK_ROUNDS or default


def growth_of(run):
    # the use -> the bytes it kept, from the snippet's uses() reports
    return {r["use"]: r["kept"] for r in run.results if "use" in r}


def test_an_idle_connection_holds_no_read_ahead(mpy, fault):
    # A chunked answer keeps the connection's read-ahead for its size lines, and a head line of 5 KB doubles it to
    # 8 KB. Once the body is read the connection goes back to the pool, and the next head makes a new read-ahead:
    # kept while idle, it was up to 8 KB per pooled connection (4), for as long as the session was used.
    run = mpy.run(SOAK_HEAP + """
async def get(session, host, query):
    async with session.get("http://%s:%d/bytes/3000?%s" % (host, PORT, query)) as resp:
        assert len(await resp.read()) == 3000

async def main():
    async with aiohttp.ClientSession() as session:
        held = {}  # query -> the least in use after its rounds (a single look moved by up to 672 B in CI)
        for _ in range(3):
            for query in ("seed=1", "chunked=1&pad=3&padlen=5000"):
                for host in ("a.test", "b.test", "c.test", "d.test"):
                    await get(session, host, query)
                held[query] = min(held.get(query, 1 << 30), heap_in_use())
        result(idle=len(session._idle), more=held["chunked=1&pad=3&padlen=5000"] - held["seed=1"])

run(main())
""", PORT=fault.port)
    assert run.value["idle"] == 4
    assert run.value["more"] <= 2048, run.value  # (one connection keeping its 8 KB read-ahead would show)


# Each kind of DownloadManager use: `async def use(i)` (i counts the uses), the rounds it runs by default, and NOISY
# where it applies. The session stays open between downloads unless the use closes it: its pool is part of the test.
DOWNLOADS = {
    "same URL": ("""
async def use(i):
    assert await DownloadManager.download_url(URL + "/bytes/2000") is not None
""", 50),
    "distinct URLs to a file": ("""
async def use(i):
    assert await DownloadManager.download_url(URL + "/bytes/2000?u=%d" % i, outfile="out.bin",
                                              progress_callback=lambda percent: None)
""", 50),
    "distinct outfiles": ("""
async def use(i):
    out = "out%d.bin" % i
    assert await DownloadManager.download_url(URL + "/bytes/2000", outfile=out)
    os.remove(out)
""", 100),
    "gzip-coded, distinct URLs": ("""
async def use(i):
    assert await DownloadManager.download_url(URL + "/bytes/5000?text=1&gzip=1&u=%d" % i) is not None
""", 50),
    "streamed": ("""
async def use(i):
    assert await DownloadManager.download_url(URL + "/bytes/5000?u=%d" % i, chunk_callback=new_sha().update)
""", 50),
    "404": ("""
async def use(i):
    assert await DownloadManager.download_url(URL + "/status/404?u=%d" % i) is None
""", 50),
    "503, retried": ("""
async def use(i):
    assert await DownloadManager.download_url(URL + "/bytes/100?fail=503&key=r%d" % i) is not None
""", 25),
    "names that are not found, distinct": ("""
async def use(i):
    assert await DownloadManager.download_url("http://n%d.invalid/x" % i, tries=1) is None
""", 100),
    "refused": ("""
async def use(i):
    assert await DownloadManager.download_url(REFUSED) is None
""", 50),
    "reset mid-body": ("""
async def use(i):
    assert await DownloadManager.download_url(URL + "/bytes/20000?drop=5000&norange=1&u=%d" % i, tries=1) is None
""", 100, 1024),  # (beside other tests it kept up to 672 bytes in 50 rounds, 0 in 200: a block a use is 1600)
    "read timeout": ("""
async def use(i):
    url = URL + "/bytes/20000?stall=5000&stall_s=1&norange=1&u=%d" % i
    assert await DownloadManager.download_url(url, tries=1, timeout=0.01) is None
""", 6),  # (the session's watchdog looks every 100 ms: each use takes about 200)
    "cancelled mid-body": ("""
async def use(i):
    task = asyncio.create_task(DownloadManager.download_url(URL + "/bytes/200000?rate=200000&u=%d" % i))
    for turn in range(i % 7 + 1):
        await asyncio.sleep_ms(1)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
""", 25, NOISY),
    "redirected to distinct hosts": ("""
async def use(i):
    to = "http://h%d.test:%d/bytes/300" % (i, PORT)
    assert await DownloadManager.download_url(URL + "/redirect?to=" + to) is not None
""", *NEW_HOST_EACH),
    "redirected to distinct refused ports": ("""
async def use(i):
    to = "http://127.0.0.%d:%d/x" % (2 + i % 200, 20000 + i)
    assert await DownloadManager.download_url(URL + "/redirect?to=" + to, tries=1) is None
""", 50),
    "segmented": ("""
async def use(i):
    assert await DownloadManager.download_url(URL + "/bytes/40000?u=%d" % i, outfile="out.bin", segments=3)
""", 25, NOISY),
    "posted": ("""
async def use(i):
    assert await DownloadManager.post_url(URL + "/echo", data=b"installed %d" % i)
""", 50),
    "session closed and made again": ("""
async def use(i):
    assert await DownloadManager.download_url(URL + "/bytes/300") is not None
    await DownloadManager.close_session()
""", 50),
    "session closed by its idle timer": ("""
async def use(i):
    DownloadManager.session_idle_ms = 1
    assert await DownloadManager.download_url(URL + "/bytes/300") is not None
    while DownloadManager.is_session_active():
        await asyncio.sleep_ms(1)
    DownloadManager.session_idle_ms = 60000
""", 25),
    "a batch of icons": ("""
async def use(i):
    icons = [DownloadManager.download_url(URL + "/bytes/%d?u=%d" % (300 + k, i)) for k in range(10)]
    assert None not in await asyncio.gather(*icons)
""", 10, NOISY),
    "queued past its deadline, queued and cancelled": ("""
async def use(i):
    DownloadManager.max_connections = 1
    let_go = asyncio.Event()

    async def hold(chunk):  # the first download holds the one slot until the others are done with
        await let_go.wait()

    first = asyncio.create_task(DownloadManager.download_url(URL + "/bytes/2000?u=%d" % i, chunk_callback=hold))
    queued = [asyncio.create_task(DownloadManager.download_url(URL + "/bytes/10", priority=p)) for p in range(3)]
    while [d["state"] for d in DownloadManager.downloads()].count("queued") < 3:  # the first has the slot
        await asyncio.sleep_ms(0)
    assert await DownloadManager.download_url(URL + "/bytes/10", deadline=0.005) is None
    for task in queued:
        task.cancel()
    let_go.set()
    assert await first
    DownloadManager.max_connections = 3
""", 25, NOISY),
    "stopped by its callback": ("""
async def use(i):
    def refuse(chunk):
        raise KeyError(i)
    try:
        await DownloadManager.download_url(URL + "/bytes/3000", chunk_callback=refuse)
    except KeyError:
        pass
""", 50),
}


# A table's `use` ROUNDS times, then what the uses left: descriptors, tasks, downloads listed, names looked up
USES = """
async def main():
    base = fd_count()
    for i in uses(NAME, ROUNDS):
        await use(i)
    await DownloadManager.close_session()
    DownloadManager.ca = None
    result(fds=fd_count() - base, tasks=len(TaskManager.list_tasks()), listed=len(DownloadManager.downloads()),
           names=len(connection._dns))

run(main())
"""


@pytest.mark.parametrize("name", list(DOWNLOADS))
def test_downloads_keep_no_heap(mpy, fault, name):
    code, default, *noisy = DOWNLOADS[name]
    run = mpy.run(SOAK_HEAP + code + USES, NAME=name, ROUNDS=rounds(default), URL=fault.base, PORT=fault.port,
                  REFUSED=refused_url(), timeout=TIME_LIMIT)
    assert growth_of(run)[name] <= (noisy or [SLACK])[0], run.results
    assert run.value == {"fds": 0, "tasks": 0, "listed": 0, "names": run.value["names"]}, run.value
    assert run.value["names"] <= DNS_KEPT, run.value  # the names looked up: a cache of a bounded size



# The client as apps use it (Nostr, the Lightning wallet: a session, websockets that reconnect after every drop) and
# TaskManager. `session` is one long-lived ClientSession. As DOWNLOADS: its code, default rounds, and NOISY where a
# use cancels a task.
CLIENT = {
    "sessions opened and closed": ("""
async def use(i):
    async with aiohttp.ClientSession() as own:
        async with own.get(URL + "/bytes/100") as resp:
            await resp.read()
""", 50),
    "a long-lived session's requests to many hosts": ("""
async def use(i):
    async with session.get("http://h%d.test:%d/json/5?chunked=1" % (i, PORT)) as resp:
        await resp.json()
    assert len(session._idle) <= 4  # its pool_size: the oldest idle connection goes first
""", *NEW_HOST_EACH),
    "answers looked at and let go unread": ("""
async def use(i):
    async with session.get(URL + "/bytes/3000") as resp:  # (an app that wanted only the status)
        assert resp.status == 200
    resp = await session.get(URL + "/status/404")
    resp.release()
""", 50),
    "requests that fail: refused, 404 raised, read timeout": ("""
async def use(i):
    for url, timeout in ((REFUSED, None), (URL + "/status/404", None), (URL + "/bytes/999?stall=9&stall_s=1", 0.01)):
        try:
            async with session.get(url, raise_for_status=True, timeout=aiohttp.ClientTimeout(sock_read=timeout)) as r:
                await r.read()
        except aiohttp.ClientError:
            pass
""", 10),
    "websockets connected, used and closed": ("""
async def use(i):
    ws = await session.ws_connect(WS + "/echo", heartbeat=30)
    await ws.send_str("note %d" % i)
    assert (await ws.receive()).data == "note %d" % i
    await ws.close()
""", 50),
    "websockets closed by the server": ("""
async def use(i):
    async with session.ws_connect(WS + "/close/1001") as ws:
        async for message in ws:
            pass
""", 50),
    "websockets dropped by the server": ("""
async def use(i):
    ws = await session.ws_connect(WS + "/drop", heartbeat=30)
    async for message in ws:
        pass
""", 50, NOISY),  # (its heartbeat task is cancelled)
    "websockets refused, or answered 404": ("""
async def use(i):
    for url in (WS_REFUSED, WS + "/status/404"):
        try:
            await session.ws_connect(url)
        except aiohttp.ClientError:
            pass
""", 50),
    "websockets left open as their session closes": ("""
async def use(i):
    own = aiohttp.ClientSession()
    ws = await own.ws_connect(WS + "/echo", heartbeat=30)
    reading = asyncio.create_task(ws.receive())
    await asyncio.sleep_ms(0)
    await own.close()
    await reading
""", 50, NOISY),  # (its heartbeat task is cancelled)
    "receive timeouts on one websocket": ("""
async def use(i):
    global open_ws
    if open_ws is None:
        open_ws = await session.ws_connect(WS + "/echo")
    await open_ws.send_bytes(b"x" * (i % 300))
    await open_ws.receive(timeout=5)
    try:
        await open_ws.receive(timeout=0.001)
    except asyncio.TimeoutError:
        pass
""", 50),
    "TaskManager: short tasks, cancelled ones, wait_for, supervised restarts": ("""
async def pause(ms):  # (a coroutine of its own: asyncio.sleep_ms() hands out one shared object)
    await asyncio.sleep_ms(ms)

async def use(i):
    TaskManager.create_task(pause(0))
    TaskManager.create_task(pause(1000)).cancel()
    try:
        await TaskManager.wait_for(pause(1000), 0.001)
    except asyncio.TimeoutError:
        pass
    assert await TaskManager.wait_for(pause(0), 1) is None
    tries = [0]

    async def flaky():
        tries[0] += 1
        if tries[0] < 3:
            raise ValueError(tries[0])

    await TaskManager.create_supervised_task(flaky, restart_delay_ms=0)
    await asyncio.sleep_ms(1)
""", 50),
}


@pytest.mark.parametrize("mpy", ["internals", "public"], indirect=True)  # both ways a wait goes (aiohttp/poll.py)
@pytest.mark.parametrize("name", list(CLIENT))
def test_the_client_and_tasks_keep_no_heap(mpy, fault, ws_aiohttp, name):
    code, default, *noisy = CLIENT[name]
    run = mpy.run(SOAK_HEAP + """

session = aiohttp.ClientSession()
open_ws = None
""" + code + """
async def main():
    base = fd_count()
    for i in uses(NAME, ROUNDS):
        await use(i)
    if open_ws is not None:
        await open_ws.close()
    await session.close()
    await asyncio.sleep_ms(2)
    result(fds=fd_count() - base, tasks=len(TaskManager.list_tasks()), busy=len(session._busy),
           names=len(connection._dns))

run(main())
""", NAME=name, ROUNDS=rounds(default), URL=fault.base, PORT=fault.port, REFUSED=refused_url(),
                  WS=ws_aiohttp.base, WS_REFUSED=refused_url().replace("http", "ws"), timeout=TIME_LIMIT)
    assert growth_of(run)[name] <= (noisy or [SLACK])[0], run.results
    assert run.value == {"fds": 0, "tasks": 0, "busy": 0, "names": run.value["names"]}, run.value
    assert run.value["names"] <= DNS_KEPT, run.value


# Over TLS, as the App Store and the OS updater fetch: the handshakes, the contexts, the certificate checks.
# (mbedTLS's own buffers are not on this port's MicroPython heap; on an ESP32 they are not either: the fds tell
# those apart.) `CA`, `OTHER_CA`: our test CA, and one that signed nothing the server shows.
TLS = {
    "https downloads, the session closed after each": ("""
async def use(i):
    assert await DownloadManager.download_url(TLS_URL + "/bytes/2000?u=%d" % i) is not None
    await DownloadManager.close_session()
""", 25),
    "https verified against a CA, the session kept": ("""
async def use(i):
    DownloadManager.ca = CA
    assert await DownloadManager.download_url(TLS_URL + "/bytes/2000?u=%d" % i) is not None
""", 25),
    "certificates that do not verify": ("""
async def use(i):
    DownloadManager.ca = OTHER_CA
    assert await DownloadManager.download_url(TLS_URL + "/bytes/100?u=%d" % i) is None
""", 25),
    "wss websockets on sessions of their own": ("""
async def use(i):
    async with aiohttp.ClientSession() as own:
        ws = await own.ws_connect(WSS + "/echo")
        await ws.send_str("note %d" % i)
        assert (await ws.receive()).data == "note %d" % i
        await ws.close()
""", 25),
}


@pytest.mark.parametrize("name", list(TLS))
def test_tls_keeps_no_heap(mpy, fault_tls, ws_aiohttp_tls, certs, name):
    code, default, *noisy = TLS[name]
    run = mpy.run(SOAK_HEAP + code + USES, NAME=name, ROUNDS=rounds(default), TLS_URL=fault_tls.base,
                  WSS=ws_aiohttp_tls.base, CA=certs.ca_der_path, OTHER_CA=certs.other_ca_der_path, timeout=TIME_LIMIT)
    assert growth_of(run)[name] <= (noisy or [SLACK])[0], run.results
    assert run.value == {"fds": 0, "tasks": 0, "listed": 0, "names": run.value["names"]}, run.value


def test_synchronous_calls_keep_no_heap(mpy, fault):
    # From a script or the REPL (no event loop): each call runs its own loop and closes the session as it returns
    run = mpy.run(SOAK_HEAP + """
from asyncio import core

def download(i):
    assert DownloadManager.download_url(URL + "/bytes/300?u=%d" % i) is not None
    assert DownloadManager.download_url(URL + "/status/404") is None
    assert DownloadManager.download_url(REFUSED) is None
    assert DownloadManager.post_url(URL + "/echo", data=b"a") is not None

base = fd_count()
for i in uses("downloads", ROUNDS):
    download(i)
result(fds=fd_count() - base, tasks=len(TaskManager.list_tasks()), session=DownloadManager.is_session_active())
""", ROUNDS=rounds(25), URL=fault.base, REFUSED=refused_url(), timeout=TIME_LIMIT)
    assert growth_of(run)["downloads"] <= SLACK, run.results
    assert run.value == {"fds": 0, "tasks": 0, "session": False}


def test_the_heap_comes_back_once_the_session_closes(mpy, fault, ws_aiohttp):
    # A day's mix: icons, updates, failures, cancellations, a websocket, each a few times over. Once the session
    # closes, the heap is where one of each left it: the modules and what they made once, nothing per use.
    run = mpy.run(SOAK_HEAP + """
async def cancelled(url):
    task = asyncio.create_task(DownloadManager.download_url(url))
    await asyncio.sleep_ms(2)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass

async def day(i):
    await asyncio.gather(*[DownloadManager.download_url(URL + "/bytes/%d?u=%d" % (300 + k, i)) for k in range(5)])
    await DownloadManager.download_url(URL + "/bytes/30000?u=%d" % i, outfile="update.bin", segments=2)
    await DownloadManager.download_url(URL + "/status/404")
    await DownloadManager.download_url(URL + "/bytes/9000?drop=3000&norange=1", tries=1)
    await DownloadManager.download_url(URL + "/redirect?to=http://h%d.test:%d/bytes/10" % (i, PORT))
    await cancelled(URL + "/bytes/100000?rate=100000&u=%d" % i)
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(WS + "/echo")
        await ws.send_str("hi")
        await ws.receive()
        await ws.close()
    await DownloadManager.close_session()

async def main():
    await day(0)
    after_one = heap_in_use()
    for i in range(1, ROUNDS + 1):
        await day(i)
    result(more=heap_in_use() - after_one, tasks=len(TaskManager.list_tasks()),
           session=DownloadManager.is_session_active())

run(main())
""", ROUNDS=rounds(20), URL=fault.base, PORT=fault.port, WS=ws_aiohttp.base, timeout=TIME_LIMIT)
    assert run.value["more"] <= NOISY, run.value
    assert not run.value["tasks"] and not run.value["session"], run.value

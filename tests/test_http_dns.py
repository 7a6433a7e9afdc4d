"""Host names on MicroPython: a lookup never freezes the event loop (issue 18).

socket.getaddrinfo blocks its thread for as long as a lookup takes; on an ESP32 the event loop's thread is the UI's.
The client looks names up on a worker thread and polls. These tests install a resolver of their own
(`aiohttp.connection._getaddrinfo`: the built-in socket module can't be patched) that answers every name with
127.0.0.1 after a delay they choose, and check that other tasks keep their pace, that the bytes are exact, and the
timeouts, the cache and its TTL, the bound on threads, failures, and that nothing leaks.
"""
import socket

import pytest

from tools.testservers import sha256_of

# The resolver the tests install, a task that measures the event loop's pace, and counts of what could leak.
DNS = """
import asyncio, os, socket, time, _thread
import aiohttp
import aiohttp.connection as connection
from mpos import DownloadManager

MAIN_THREAD = _thread.get_ident()


class Resolver:
    # Stands in for socket.getaddrinfo: every name is 127.0.0.1 after delay_ms, or fails with `error`.
    # moved[host] = port: that host's first answer points there instead (an address gone out of date).
    def __init__(self, delay_ms=0, error=None, stack_depth=0):
        self.delay_ms = delay_ms
        self.error = error
        self.stack_depth = stack_depth
        self.moved = {}
        self.calls = []  # [host, looked up on a worker thread]
        self.busy = self.most_at_once = 0
        self.lock = _thread.allocate_lock()
        connection._getaddrinfo = self

    def __call__(self, host, port, *args):
        with self.lock:
            self.calls.append([host, _thread.get_ident() != MAIN_THREAD])
            self.busy += 1
            self.most_at_once = max(self.most_at_once, self.busy)
            port = self.moved.pop(host, port)
        try:
            time.sleep_ms(self.delay_ms)
            deep(self.stack_depth)
            if self.error is not None:
                raise self.error
            return socket.getaddrinfo("127.0.0.1", port, *args)
        finally:
            with self.lock:
                self.busy -= 1


def deep(n):
    # a call n levels deep: stack, as glibc's resolver takes for its NSS modules
    return 0 if n == 0 else 1 + deep(n - 1)


class Pace:
    # A task that wants a turn every 5 ms, as a UI does; .longest is the longest it waited between two turns.
    def __init__(self):
        self.longest = 0
        self.task = asyncio.create_task(self.run())

    async def run(self):
        last = time.ticks_ms()
        while True:
            await asyncio.sleep_ms(5)
            now = time.ticks_ms()
            self.longest = max(self.longest, time.ticks_diff(now, last))
            last = now


def threads():
    return len(os.listdir("/proc/self/task"))


async def get(url, **kw):
    # -> sha256 of the body, on a session of its own (a new connection, so the host is looked up again)
    async with aiohttp.ClientSession() as session:
        async with session.get(url, **kw) as resp:
            return sha256(await resp.read())
"""


def url(fault, host, path="/bytes/50000"):
    return "http://%s:%d%s" % (host, fault.port, path)


@pytest.mark.parametrize("client", ["DownloadManager", "aiohttp"])
def test_a_slow_lookup_does_not_stop_other_tasks(mpy, fault, client):
    r = mpy.run(DNS + """
async def main():
    resolver = Resolver(delay_ms=2000)
    pace = Pace()
    t0 = time.ticks_ms()
    if CLIENT == "aiohttp":
        sha = await get(URL)
    else:
        sha = sha256(await DownloadManager.download_url(URL))
    result(sha=sha, ms=time.ticks_diff(time.ticks_ms(), t0), longest=pace.longest, calls=resolver.calls)

run(main())
""", URL=url(fault, "slow.test"), CLIENT=client)
    v = r.value
    assert v["sha"] == sha256_of(50000)
    assert v["ms"] >= 2000 and v["calls"] == [["slow.test", True]], v  # it did wait, on a worker thread
    assert v["longest"] < 1000, v  # a lookup on the event loop would stop it for the whole 2 s (not a speed check)


def test_a_lookup_slower_than_the_connect_timeout_fails_cleanly(mpy, fault):
    # The threads can't be stopped: they finish on their own, what they found serves the next request, and the
    # worker threads are free again for other names.
    r = mpy.run(DNS + """
async def main():
    resolver = Resolver(delay_ms=1000)
    fds, before = fd_count(), threads()
    t0 = time.ticks_ms()
    slow = aiohttp.ClientTimeout(connect=0.1)
    errors = [name for name, _ in await asyncio.gather(error_of(get(URL.replace("HOST", "a.test"), timeout=slow)),
                                                       error_of(get(URL.replace("HOST", "b.test"), timeout=slow)))]
    ms = time.ticks_diff(time.ticks_ms(), t0)
    looking = resolver.busy  # lookups still under way when the requests failed
    while resolver.busy:  # the lookups' threads finish meanwhile
        await asyncio.sleep_ms(20)
    resolver.delay_ms = 100  # (c.test's lookup took the 1 s of the timeout below: a race the 32-bit build lost)
    shas = []
    for name in ("c.test", "a.test"):  # c.test needs a free worker thread; a.test comes from the cache
        shas.append(await get(URL.replace("HOST", name), timeout=aiohttp.ClientTimeout(connect=1)))
    result(errors=errors, ms=ms, looking=looking, fds=fd_count() - fds, threads=threads() - before, shas=shas,
           calls=len(resolver.calls))

run(main())
""", URL=url(fault, "HOST"))
    v = r.value
    assert v["errors"] == ["ConnectionTimeoutError"] * 2, v  # a ClientConnectionError
    assert v["ms"] >= 90 and v["looking"] == 2, v  # at the connect timeout, not at the lookups' end
    assert (v["fds"], v["threads"]) == (0, 0), v
    assert v["shas"] == [sha256_of(50000)] * 2 and v["calls"] == 3, v  # a.test's late answer was kept


def test_a_session_closed_while_it_looks_a_name_up_opens_no_connection(mpy, fault):
    # The request ends when its lookup does: a connection opened after the close would be one the session no longer
    # closes, waited on with no timeout (the session's watchdog went with it)
    r = mpy.run(DNS + """
async def main():
    Resolver(delay_ms=200)
    fds = fd_count()
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_read=1))
    request = asyncio.create_task(error_of(session.get(URL)))
    await asyncio.sleep_ms(50)
    await session.close()
    try:
        error = (await asyncio.wait_for_ms(request, 2000))[0]
    except asyncio.TimeoutError:
        error = "still waiting"
    result(error=error, fds=fd_count() - fds)

run(main())
""", URL=url(fault, "closing.test", "/bytes/10?delay=5"))
    assert r.value == {"error": "ClientConnectionError", "fds": 0}
    assert fault.connections == 0


# A failed lookup, as each port reports it: the unix port (a str), an ESP32 (a negative number), an errno with
# its text, no argument at all.
FAILURES = [('OSError("[addrinfo error -3]")', -3), ("OSError(-202)", -202),
            ('OSError(2, "Name or service not known")', 2), ("OSError()", None)]


@pytest.mark.parametrize("error, code", FAILURES)
def test_a_failed_lookup_is_a_network_error(mpy, fault, error, code):
    r = mpy.run(DNS + """
from mpos import DownloadManager
is_network_error = DownloadManager.is_network_error

async def main():
    resolver = Resolver(error=ERROR)
    fds = fd_count()
    try:
        await get(URL)
        client = None
    except aiohttp.ClientConnectionError as e:
        client = [type(e).__name__, e.errno]
    try:
        await DownloadManager.download_url(URL, raise_errors=True, tries=1)
        raised = None
    except Exception as e:
        raised = [type(e).__name__, is_network_error(e)]
    quiet = await DownloadManager.download_url(URL, tries=1)
    result(client=client, raised=raised, quiet=quiet, fds=fd_count() - fds, calls=len(resolver.calls))

run(main())
""".replace("ERROR", error), URL=url(fault, "gone.test"))
    v = r.value
    assert v["client"] == ["ClientConnectorDNSError", code], v
    assert v["raised"] == ["NetworkError", True] and v["quiet"] is None, v
    assert v["fds"] == 0 and v["calls"] == 3, v  # a failure is not kept: each call looks the name up


def test_one_lookup_per_name_and_two_threads_at_most(mpy, fault):
    r = mpy.run(DNS + """
async def main():
    resolver = Resolver(delay_ms=150)
    before = threads()
    names = ["same.test"] * 3 + ["a.test", "b.test", "c.test"]
    shas = await asyncio.gather(*[get(URL.replace("HOST", name)) for name in names])
    result(shas=shas, most_at_once=resolver.most_at_once, threads=threads() - before,
           calls=sorted(host for host, worker in resolver.calls))

run(main())
""", URL=url(fault, "HOST"))
    v = r.value
    assert v["shas"] == [sha256_of(50000)] * 6
    assert v["calls"] == ["a.test", "b.test", "c.test", "same.test"], v
    assert v["most_at_once"] == 2 and v["threads"] == 0, v


def test_an_address_is_kept_for_a_minute_without_a_thread(mpy, fault):
    # The client's clock is moved forward instead of waiting a minute.
    r = mpy.run(DNS + """
class Threads:
    # _thread as the client sees it, counting the threads it starts
    started = 0

    def start_new_thread(self, function, args):
        Threads.started += 1
        return _thread.start_new_thread(function, args)

    def stack_size(self, size=0):
        return _thread.stack_size(size)

later = [0]
connection.ticks_ms = lambda: time.ticks_add(time.ticks_ms(), later[0])
connection._thread = Threads()

async def main():
    resolver = Resolver()
    seen = []
    for skip_ms in (0, 0, 59000, 60000):
        later[0] = skip_ms
        seen.append([await get(URL), len(resolver.calls), Threads.started])
    await get(ADDRESS)  # an address needs no lookup: no thread
    result(seen=seen, address=resolver.calls[-1], threads=Threads.started)

run(main())
""", URL=url(fault, "kept.test"), ADDRESS=url(fault, "127.0.0.1"))
    v = r.value
    sha = sha256_of(50000)
    assert v["seen"] == [[sha, 1, 1], [sha, 1, 1], [sha, 1, 1], [sha, 2, 2]], v  # lookups, threads
    assert v["address"] == ["127.0.0.1", False] and v["threads"] == 2, v


@pytest.fixture
def unanswered_port():
    # A listener whose queue is full: a connect to it never completes, as to an address no host has any more.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    fillers = []
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(srv.getsockname())
        fillers.append(c)
    yield srv.getsockname()[1]
    for c in fillers + [srv]:
        c.close()


@pytest.mark.parametrize("stale", ["refused", "unanswered"])
def test_an_address_that_fails_is_looked_up_again(mpy, fault, unanswered_port, stale):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused_port = closed.getsockname()[1]
    r = mpy.run(DNS + """
async def main():
    resolver = Resolver()
    resolver.moved["moved.test"] = STALE_PORT
    first = (await error_of(get(URL, timeout=aiohttp.ClientTimeout(connect=0.3))))[0]
    result(first=first, sha=await get(URL), calls=len(resolver.calls))

run(main())
""", URL=url(fault, "moved.test"), STALE_PORT=refused_port if stale == "refused" else unanswered_port)
    v = r.value
    assert v["first"] == ("ClientConnectorError" if stale == "refused" else "ConnectionTimeoutError"), v
    assert v["sha"] == sha256_of(50000) and v["calls"] == 2, v


def test_the_lookup_thread_has_room_for_the_c_library_resolver(mpy, fault):
    # glibc's getaddrinfo with NSS modules (mdns4_minimal, on most Linux desktops) takes about 80 KB of stack and
    # segfaults on a thread with less: a lookup that takes more than that must work.
    r = mpy.run(DNS + """
async def main():
    resolver = Resolver(stack_depth=150)  # more than 80 KB of stack here
    result(sha=await get(URL), calls=resolver.calls)

run(main())
""", URL=url(fault, "deep.test"))
    assert r.value == {"sha": sha256_of(50000), "calls": [["deep.test", True]]}


def test_without_threads_the_event_loop_looks_names_up(mpy, fault):
    r = mpy.run(DNS + """
connection._thread = None

async def main():
    resolver = Resolver(delay_ms=50)
    result(sha=await get(URL), calls=resolver.calls)

run(main())
""", URL=url(fault, "plain.test"))
    assert r.value == {"sha": sha256_of(50000), "calls": [["plain.test", False]]}

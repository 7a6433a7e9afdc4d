"""Nothing leaks, nothing hangs (issue 17): a failed TLS handshake of any kind leaves no fd and is not retried, a CA
set while the session lives applies to the next connection, the session's idle close cannot deadlock, a failed
name lookup is a network error, a head sent a byte at a time is timed out as a whole, a long head fits a small
heap, and a link that flaps ends the download within a bounded number of requests, backing off. On MicroPython,
against FaultServer, with fd counts for leaks and sha256 for the bytes."""
from urllib.parse import quote

import pytest

from test_http_client import HEAD
from test_reliability import OLD, OLD_SHA, PRE, dl
from tools.testservers import LEAVES, Endless, FaultServer, ScriptServer, sha256_of


# --- TLS that does not verify --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def _untrusted(certs):
    servers = {leaf: FaultServer(certs, leaf=leaf).start() for leaf in LEAVES}
    yield servers
    for srv in servers.values():
        srv.stop()


@pytest.fixture
def untrusted(_untrusted):
    """A TLS FaultServer per certificate our CA's client must refuse: wrong host name, expired, self-signed."""
    for srv in _untrusted.values():
        srv.reset()
    return _untrusted


def by_name(srv, path):
    # by host name, so the name in the certificate is checked
    return "https://localhost:%d%s" % (srv.port, path)


def names_the_certificate(message):
    return "certificate" in message.lower() or "verif" in message.lower()


def test_a_certificate_that_does_not_verify_fails_at_once_and_leaks_no_fd(mpy, untrusted, certs):
    v = mpy.run(PRE + """
async def main():
    DownloadManager.ca = CA
    for leaf, url in URLS:
        base = fd_count()
        t0 = time.ticks_ms()
        try:
            r = await DownloadManager.download_url(url, raise_errors=True)
            got = ['returned', sha256(r) if r else r]
        except Exception as e:
            got = describe(e)
        ms = since(t0)
        await DownloadManager.close_session()
        result(leaf=leaf, got=got, ms=ms, leaked=fd_count() - base)
run(main())
""", CA=certs.ca_der_path, URLS=[(leaf, by_name(srv, "/bytes/1000")) for leaf, srv in untrusted.items()])
    wrong = []
    for got in v.results:
        connections = untrusted[got["leaf"]].connections
        if not (got["got"][0] != "returned" and names_the_certificate(got["got"][3]) and got["leaked"] == 0
                and connections == 1 and got["ms"] < 1000):
            wrong.append((got, "connections: %d" % connections))
    assert len(v.results) == len(LEAVES) and not wrong, "\n".join(map(repr, wrong))


def test_the_client_leaks_no_fd_on_a_failed_handshake(mpy, untrusted, certs):
    v = mpy.run("""
import aiohttp
async def main():
    ctx = aiohttp.tls_context(CA)
    for leaf, url in URLS:
        base = fd_count()
        async with aiohttp.ClientSession(ssl=ctx) as session:
            err = await error_of(session.get(url))
        result(leaf=leaf, err=err, leaked=fd_count() - base)
run(main())
""", CA=certs.ca_der_path, URLS=[(leaf, by_name(srv, "/bytes/1000")) for leaf, srv in untrusted.items()])
    assert len(v.results) == len(LEAVES)
    for got in v.results:
        assert got["err"][0] == "ClientConnectorCertificateError" and names_the_certificate(got["err"][1]), got
        assert got["leaked"] == 0 and untrusted[got["leaf"]].connections == 1, got


@pytest.mark.parametrize("target", ["trusted", "self_signed"])
def test_an_http_to_https_redirect_leaks_no_fd(mpy, fault, fault_tls, untrusted, certs, target):
    https = fault_tls if target == "trusted" else untrusted[target]
    v = mpy.run(PRE + """
async def main():
    DownloadManager.ca = CA
    base = fd_count()
    r = await DownloadManager.download_url(URL)
    await DownloadManager.close_session()
    result(sha=sha256(r) if r else None, leaked=fd_count() - base)
run(main())
""", CA=certs.ca_der_path, URL=fault.url("/redirect?to=" + quote(by_name(https, "/bytes/1000"), safe=""))).value
    assert v == {"sha": sha256_of(1000) if target == "trusted" else None, "leaked": 0}, v


def test_a_ca_set_while_the_session_lives_applies_to_the_next_connection(mpy, fault_tls, certs):
    # Each download starts within session_idle_ms of the one before, so the session (and its pooled connection)
    # is still alive when the CA changes: a CA that did not sign the server's certificate must fail the next one.
    cas = [None, certs.other_ca_der_path, certs.ca_der_path, certs.other_ca_der_path, certs.ca_pem_path]
    v = mpy.run(PRE + """
async def main():
    got = []
    for ca in CAS:
        alive = DownloadManager.is_session_active()
        DownloadManager.ca = ca
        try:
            r = await DownloadManager.download_url(URL, raise_errors=True)
            got.append([alive, sha256(r)])
        except DownloadManager.DownloadError as e:
            got.append([alive, describe(e)[1]])
    await DownloadManager.close_session()
    result(got=got)
run(main())
""", URL=fault_tls.url("/bytes/1000"), CAS=cas).value
    ok = sha256_of(1000)
    assert v["got"] == [[False, ok], [True, "tls"], [True, ok], [True, "tls"], [True, ok]], v


def test_a_new_ca_file_at_the_same_path_applies_to_the_next_download(mpy, fault_tls, certs):
    # DownloadManager.ca names a file; the app (or an update) writes another CA there and sets nothing: the next
    # download verifies against the file as it is now, not as it was when the first one read it. (A file is told
    # changed by its size and time: PEM and DER in turn, as these writes come within one second.)
    v = mpy.run(PRE + """
def install(source):
    with open(source, "rb") as f:
        ca = f.read()
    with open(PATH, "wb") as f:
        f.write(ca)

async def main():
    DownloadManager.ca = PATH
    got = []
    for source in SOURCES:
        install(source)
        try:
            got.append(sha256(await DownloadManager.download_url(URL, raise_errors=True)))
        except DownloadManager.DownloadError as e:
            got.append(describe(e)[1])
    await DownloadManager.close_session()
    result(got=got)
run(main())
""", URL=fault_tls.url("/bytes/1000"), PATH=str(mpy.tmpdir / "ca.pem"),
                SOURCES=[certs.other_ca_pem_path, certs.ca_der_path, certs.other_ca_pem_path, certs.ca_der_path]).value
    ok = sha256_of(1000)
    assert v["got"] == ["tls", ok, "tls", ok], v


@pytest.mark.parametrize("ca", ["/no/such/ca.der", b"not a certificate", "-----BEGIN CERTIFICATE-----\nxyz\n"])
def test_a_ca_that_cannot_be_loaded_fails_as_tls_at_once(mpy, fault_tls, ca):
    # A missing file or bytes that are no certificate: no try can mend it, so none is made (no request is sent)
    v = mpy.run(PRE + """
async def main():
    DownloadManager.ca = CA
    try:
        r = await DownloadManager.download_url(URL, raise_errors=True)
        got = ["returned", repr(r)]
    except DownloadManager.DownloadError as e:
        got = describe(e)
    DownloadManager.ca = None
    result(got=got, default=sha256(await DownloadManager.download_url(URL)))
run(main())
""", URL=fault_tls.url("/bytes/1000"), CA=ca).value
    assert v["got"][:2] == ["TLSError", "tls"] and "DownloadManager.ca" in v["got"][3], v
    assert fault_tls.connections == 1 and v["default"] == sha256_of(1000)  # the download after it, with ca=None


# --- the session's idle close, where create_task runs a coroutine's first step at once ----------------------------

# A test harness's TaskManager (MicroPythonOS's MockTaskManager): its sleeps return at once
NO_WAIT = PRE + """
async def no_wait(t):
    pass

TaskManager.sleep = TaskManager.sleep_ms = no_wait
"""

TWO_DOWNLOADS = """
async def main():
    shas = []
    for i in range(2):
        r = await DownloadManager.download_url(URL)
        shas.append(sha256(r) if r else None)
    await DownloadManager.close_session()
    result(shas=shas)
run(main())
"""

# ... and its create_task runs the new coroutine's first step there and then, in the caller; the event loop runs
# the rest
EAGER = NO_WAIT + """
from asyncio import core

real_create_task = TaskManager.create_task

def eager_create_task(coro):
    async def whole():
        r = await coro
        await asyncio.sleep_ms(0)  # so the task ends in the event loop, not in this first step
        return r
    task = real_create_task(whole())
    core._task_queue.remove(task)  # its first step is taken here instead
    caller, core.cur_task = core.cur_task, task
    try:
        task.coro.send(None)
    finally:
        core.cur_task = caller
    return task

TaskManager.create_task = eager_create_task
"""


def test_the_idle_close_does_not_deadlock_when_create_task_runs_the_first_step_at_once(mpy, fault):
    v = mpy.run(EAGER + TWO_DOWNLOADS, URL=fault.url("/bytes/5000"), timeout=10).value  # a deadlock: a timeout
    assert v["shas"] == [sha256_of(5000)] * 2, v


def test_the_idle_close_does_not_spin_when_sleeps_return_at_once(mpy, fault):
    # The session's closer, woken while the next download holds the session, must not wait for it in a loop of
    # sleeps: one that returns at once never lets the download run again
    v = mpy.run(NO_WAIT + TWO_DOWNLOADS, URL=fault.url("/bytes/5000"), timeout=10).value  # a spin: a timeout
    assert v["shas"] == [sha256_of(5000)] * 2, v


# --- a failed name lookup ----------------------------------------------------------------------------------------

def test_a_failed_name_lookup_is_a_network_error(mpy):
    v = mpy.run(PRE + """
import errno, socket
async def main():
    res = {'plain': await DownloadManager.download_url(URL)}
    try:
        await DownloadManager.download_url(URL, raise_errors=True)
    except Exception as e:
        res['raised'] = describe(e)
    try:
        socket.getaddrinfo('nonexistent.invalid', 80)
    except OSError as e:
        res['lookup'] = DownloadManager.is_network_error(e)
    for name, e in (('int', OSError(errno.ECONNRESET)), ('negative', OSError(-errno.ECONNRESET)),
                    ('str', OSError('[addrinfo error -3]')), ('file', OSError(errno.ENOENT)), ('none', OSError())):
        res[name] = DownloadManager.is_network_error(e)
    result(**res)
run(main())
""", URL="http://nonexistent.invalid/file.bin").value
    assert v["plain"] is None and v["raised"][:2] == ["NetworkError", "network"], v
    assert [v[k] for k in ("lookup", "int", "negative", "str", "file")] == [True, True, True, True, False], v
    assert v["none"] in (True, False), v


# The socket module as aiohttp sees it, but every name lookup fails with the next OSError of SHAPES: the shapes a
# network stack gives (an errno, a negative one as lwIP's, the unix port's str, none at all).
SHAPES = """
import errno, sys
import socket as real_socket

class Socket:
    def __getattr__(self, name):
        return getattr(real_socket, name)

    def getaddrinfo(self, *args):
        raise SHAPES.pop(0)

SHAPES = [OSError(errno.EHOSTUNREACH), OSError(-errno.EHOSTUNREACH), OSError('[addrinfo error -3]'), OSError()]
sys.modules['socket'] = Socket()
from mpos import DownloadManager

async def main():
    while SHAPES:
        shape = repr(SHAPES[0])
        try:
            got = await DownloadManager.download_url(URL, tries=1, raise_errors=True)
        except Exception as e:
            got = [type(e).__name__, getattr(e, 'reason', None)]
        result(shape=shape, got=got)
run(main())
"""


def test_every_errno_shape_of_a_failed_lookup_fails_the_download_cleanly(mpy):
    r = mpy.run(SHAPES, URL="http://device.invalid/file.bin")
    assert [x["got"] for x in r.results] == [["NetworkError", "network"]] * 4, r.results


# --- heads that come slowly, heads that are long --------------------------------------------------------------------

def test_a_head_sent_a_byte_at_a_time_is_timed_out_as_a_whole(mpy, fault):
    # each byte comes 25 ms after the one before, well within timeout=1, the whole head takes about 5 s
    v = dl(mpy, fault.url("/bytes/1000?drip=25"), "memory", timeout=1, tries=1, raise_errors=True)
    assert v["ret"] == "raised" and v["err"][:2] == ["DownloadTimeout", "timeout"], v
    assert v["ms"] < 2500 and "1s" in v["err"][3], v


def test_a_timeout_names_the_seconds_it_waited(mpy, fault):
    v = dl(mpy, fault.url("/bytes/1000?stall=0&stall_s=4"), "memory", timeout=2, tries=1, raise_errors=True)
    assert v["err"][:2] == ["DownloadTimeout", "timeout"], v
    assert "2s" in v["err"][3] and "10s" not in v["err"][3], v


# 99 header lines of 300 and of 330 bytes: 30 and 32 KB, under the 32 KB a head may take
LONG_HEADS = ["/json/3?pad=97&padlen=300", "/json/3?pad=97&padlen=330"]
# the whole heap but this many KB in one piece once the library is imported: from what docs/performance.md says a
# 32 KB head needs to what a 200 KB heap has
FREE_KB = range(64, 113, 8)
# (with DownloadManager imported, a 200 KB heap has about 75 KB left in one piece, 72 KB once the checkout's path
# is 31 characters long, and with aiohttp alone under 112 KB once the test's temporary path is long: sys.path and
# the file names are on the heap. FREE is what the download has, so the heap only gives the filling room.)
SMALL_HEAP_SIZE = "256k"


def test_a_head_under_the_cap_is_read_in_a_small_heap(mpy, fault):
    wrong = []
    for free in FREE_KB:
        for path in LONG_HEADS:  # one process each: a head read before would still hold its share
            r = mpy.run(HEAD, URL=fault.url(""), PATHS=[path, "/json/3"], FREE=free * 1024, heapsize=SMALL_HEAP_SIZE,
                        compiled=True)
            for got in r.results:
                if got.get("n") not in (2, 99):
                    wrong.append((free, got))
    assert not wrong, wrong  # the last of each: the client goes on working


SMALL_HEAP = """
from mpos import DownloadManager
import aiohttp
import mpos.net.download  # with aiohttp.ClientSession below: what the first download loads, so that FREE is
aiohttp.ClientSession  # what the download itself has
async def main():
    ballast = leave_free(FREE)
    try:
        r = await DownloadManager.download_url(URL, raise_errors=True)
        got = sha256(r)
    except DownloadManager.DownloadError as e:
        got = [type(e).__name__, e.reason]
    ballast = None
    result(got=got)
run(main())
"""


def test_a_download_with_a_long_head_in_a_small_heap_never_runs_out_of_memory(mpy, fault):
    wrong = []
    for free in FREE_KB[:2]:
        for path in LONG_HEADS:
            url = fault.url(path.replace("json/3", "bytes/2000").replace("pad=97", "pad=94"))  # 99 lines again
            got = mpy.run(SMALL_HEAP, URL=url, FREE=free * 1024, heapsize=SMALL_HEAP_SIZE, compiled=True).value["got"]
            if got != sha256_of(2000):
                wrong.append((free, path, got))
    assert not wrong, wrong


def test_a_body_kept_in_memory_is_allocated_once_its_long_head_is_let_go(mpy, fault):
    # a 28 KB head and a 20 KB body do not fit in 64 KB together: memory mode makes the body's buffer after the
    # head is let go, not while the answer is checked
    url = fault.url("/bytes/20000?pad=94&padlen=300")
    got = mpy.run(SMALL_HEAP, URL=url, FREE=64 * 1024, heapsize=SMALL_HEAP_SIZE, compiled=True).value["got"]
    assert got == sha256_of(20000)


# --- answers that never end, each part within the read timeout -----------------------------------------------------

QUICK_RETRIES = {"retry_base_ms": 5, "retry_max_ms": 20}


def scripted(mpy, script, mode, **kw):
    # one download (test_reliability's dl) of what a ScriptServer sends by `script` -> (its result, requests served)
    srv = ScriptServer({"/endless": script})
    try:
        v = dl(mpy, srv.url("/endless"), mode, tune=QUICK_RETRIES, raise_errors=True, **kw)
    finally:
        srv.close()
    return v, len(srv.requests)


def test_informational_heads_without_end_are_a_head_too_long(mpy):
    # 100 Continue after 100 Continue, as fast as the link goes: they count towards the 32 KB a head may take, so the
    # answer is refused at once, as a head with too many lines is (before, only the read timeout ended each try,
    # after a second of busy CPU per try)
    v, requests = scripted(mpy, Endless(b"", b"HTTP/1.1 100 Continue\r\n\r\n"), "memory", timeout=1)
    assert v["err"][:2] == ["HTTPError", "http"] and "larger than 32768" in v["err"][3], v
    assert requests == 1


@pytest.mark.parametrize("mode", ["memory", "file", "stream"])
def test_trailers_without_end_fail_the_try(mpy, mode):
    # A chunked body of one byte, then trailer lines for ever: no longer than a head may be, they fail the try (before,
    # a try never ended: only deadline= stopped it). Each try after the first starts over and gets the byte again: no
    # progress, so 3 tries end it; stream mode can't take the byte back and ends at the second.
    body = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n"
    v, requests = scripted(mpy, Endless(body, b"X-More: trailers\r\n"), mode, deadline=5)
    assert v["err"][:2] == ["NetworkError", "network"], v
    assert "trailers larger than 32768" in v["err"][3] or mode == "stream", v
    assert requests == (2 if mode == "stream" else 4)


def test_a_line_without_end_is_too_long_in_a_small_heap(mpy):
    # async for line in resp.content over a body that never has a newline: refused at 64 KB (aiohttp's limit), the
    # socket let go. The line's reads are kept as they came until it ends (before, the line was copied whole at
    # each read, and ran out of memory at 42 KB)
    srv = ScriptServer({"/line": Endless(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", b"x" * 1000)})
    try:
        r = mpy.run("""
import aiohttp
async def lines(session):
    async with session.get(URL) as resp:
        async for line in resp.content:
            pass
async def main():
    fds = fd_count()
    ballast = leave_free(FREE)
    async with aiohttp.ClientSession() as session:
        err = await error_of(lines(session))
    ballast = None
    result(err=err, fds=fd_count() - fds)
run(main())
""", URL=srv.url("/line"), FREE=192 * 1024, heapsize="400k", compiled=True)
    finally:
        srv.close()
    assert r.value == {"err": ["ValueError", "Line is too long"], "fds": 0}


# --- a link that flaps ---------------------------------------------------------------------------------------------

# The injected clock: every wait the download asks TaskManager for is noted (in seconds) and taken twenty times
# faster.
FLAPPING = PRE + """
ASKED = []
real_sleep_ms = TaskManager.sleep_ms

def quick_sleep_ms(ms):
    ASKED.append(ms / 1000)
    return real_sleep_ms(ms // 20)

TaskManager.sleep_ms = quick_sleep_ms
TaskManager.sleep = lambda s: quick_sleep_ms(int(s * 1000))

async def main():
    with open('out.bin', 'wb') as f:
        f.write(OLD)
    r = await DownloadManager.download_url(URL, outfile='out.bin')
    await DownloadManager.close_session()
    result(r=r, sha=sha256_file('out.bin'), asked=[s for s in ASKED if s])
run(main())
"""


def test_a_flapping_link_ends_in_a_bounded_number_of_requests_with_growing_delays(mpy, fault):
    # every answer is cut after 1 KB: each attempt gains a little, none ever completes
    v = mpy.run(FLAPPING, URL=fault.url("/bytes/300000?drop=1024"), OLD=OLD).value
    gaps = [round(b.t - a.t, 3) for a, b in zip(fault.log, fault.log[1:])]
    assert v["r"] is False and v["sha"] == OLD_SHA, v
    assert 3 <= fault.requests <= 20, (fault.requests, v, gaps)
    asked = v["asked"]  # exponential with jitter: each wait at least the one two before it
    assert len(asked) >= max(3, fault.requests - 2) and asked[-1] > asked[0], (asked, gaps)
    assert all(later >= earlier for earlier, later in zip(asked, asked[2:])), (asked, gaps)

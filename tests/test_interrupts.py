"""Interrupts that are no Exception, at any point: Ctrl-C's KeyboardInterrupt (the REPL, the desktop simulator), an
app callback's SystemExit, the GeneratorExit of a coroutine closed half-way. tests/mpy/interrupts.py raises one at
the k-th point a download passes (the loop's wait, a task's step, a socket call, a .part write, an app callback), for
k = 1, 2, 3 ... until the download ends first. After each: no fd, task, slot, listing or session user is left,
OUTFILE is its old self or complete, its .part resumes to the exact bytes, and the next call works."""
import hashlib
import os

import pytest

from test_cancel_sweep import WS_ROUND_TRIP
from test_reliability import OLD, OLD_SHA
from tools.testservers import sha256_of
from tools.wsservers import frame

N = 4000  # bytes, trickled in pieces of 1, 2, 3, 5 ... (tools/testservers.py): some 300 points a download
TIMEOUT = 300  # seconds for one sweep (a hang guard: a sweep takes 10 to 140)
# The sweeps under TaskManager's loop (three downloads, a websocket) take every STRIDE-th point: each point costs
# them a whole loop's run and a retry, 0.3 s. INTERRUPT_STRIDE=1 takes every one (minutes).
STRIDE = int(os.environ.get("INTERRUPT_STRIDE", "2"))

# A synchronous download_url (no loop runs: the REPL), interrupted at its k-th point. MODE memory, file or stream
# (post: post_url); KW download_url's keywords; ERROR the exception raised; KINDS the points that count (None: all).
SYNC = """
from mpos import DownloadManager
from mpos.net import segments
from stepcancel import loop_is_idle, admission_is_free, put
from interrupts import install, callback

DownloadManager.session_idle_ms = 0
DownloadManager.retry_base_ms = 1
segments.min_segment = 1000  # (4000 bytes in up to 4 segments)
inj = install()
OUT = 'out.bin'
base = fd_count()

def call(kw, headers=None):
    got = []
    if MODE == 'post':
        return got, DownloadManager.post_url(URL, data=bytes(3000))
    kw = dict(kw, progress_callback=callback())
    if MODE == 'stream':
        kw['chunk_callback'] = callback(got.append)
    elif MODE == 'file':
        kw['outfile'] = OUT
    return got, DownloadManager.download_url(URL, headers=headers, **kw)

def exact(got, r):
    if MODE == 'post':
        import json
        return r is not None and json.loads(r)['body_len'] == 3000
    if MODE == 'file':
        return r is True and sha256_file(OUT) == SHA
    return r is not None and r is not False and sha256(b''.join(got) if MODE == 'stream' else r) == SHA

k = 0
landed = {}
while True:
    k += 1
    put(OUT, OLD if MODE == 'file' else None)
    put(OUT + '.part', None)
    put(OUT + '.part.state', None)
    inj.arm(k, KINDS, ERROR)
    try:
        got, r = call(KW)
        interrupted = False
    except ERROR:
        interrupted = True
    where = inj.landed
    inj.arm(None)
    if not interrupted:
        result(k=k, landed=landed, exact=exact(got, r))
        break
    landed[where] = landed.get(where, 0) + 1
    wrong = []
    wrong += fds_left(base)
    wrong += loop_is_idle() + admission_is_free()
    if DownloadManager.downloads() or DownloadManager.is_session_active():
        wrong.append('still listed, or the session open')
    if MODE == 'file' and sha256_file(OUT) not in (OLD_SHA, SHA):
        wrong.append('OUTFILE broken')
    # the next call: in file mode the documented resume, which must end with the exact file
    n = DownloadManager.get_resume_position(OUT) if MODE == 'file' and exists(OUT + '.part') else 0
    got, r = call({}, {'Range': 'bytes=%d-' % n} if n else None)
    if not exact(got, r):
        wrong.append('the next call got %r' % (r if r is None or r is True or r is False else len(r)))
    wrong += fds_left(base, ' after the next call')
    if wrong:
        result(k=k, landed=where, wrong=wrong)
        break
"""


def sync_sweep(mpy, server, mode, kw=None, error="KeyboardInterrupt", kinds=None, path="/bytes/%d?trickle=1" % N):
    url = server.url("/echo" if mode == "post" else path)
    r = mpy.run("ERROR = %s\n" % error + SYNC, URL=url, SHA=sha256_of(N), MODE=mode, KW=kw or {}, KINDS=kinds,
                OLD=OLD, OLD_SHA=OLD_SHA, timeout=TIMEOUT)
    v = r.value
    assert "wrong" not in v and v["exact"], v
    print(v)
    return v


@pytest.mark.parametrize("mode, kw", [
    ("memory", {}), ("file", {}), ("stream", {}), ("file", {"segments": 2}), ("file", {"segments": 4})],
    ids=["memory", "file", "stream", "segments=2", "segments=4"])
def test_a_synchronous_download_interrupted_at_any_point(mpy, fault, mode, kw):
    # Ctrl-C at the REPL: from the loop's wait or another task (a segment's) the interrupt leaves asyncio's loop
    # with the download suspended; it used to stay so, holding its socket, slot, listing and .part (the next
    # download to the same OUTFILE failed: "another download writes it"), or hang the call for ever (segments)
    v = sync_sweep(mpy, fault, mode, kw)
    assert v["landed"].get("loop", 0) > 10 and v["landed"].get("task", 0) > 10, v
    assert v["landed"].get("sock>", 0) > 10 and v["landed"].get("callback", 0) > 0, v


@pytest.mark.parametrize("mode", ["memory", "file", "stream"])
def test_a_synchronous_tls_download_interrupted_at_any_point(mpy, fault_tls, mode):
    # under TLS a socket call's interrupt comes up through mbedTLS (the TCP socket is read from inside it)
    v = sync_sweep(mpy, fault_tls, mode)
    assert v["landed"].get("sock>", 0) > 10, v


def test_a_synchronous_post_interrupted_at_any_point(mpy, fault):
    v = sync_sweep(mpy, fault, "post")
    assert v["landed"].get("loop", 0) > 0 and v["landed"].get("sock<", 0) > 0, v


@pytest.mark.parametrize("mode, kw", [("file", {}), ("stream", {}), ("file", {"segments": 3})],
                         ids=["file", "stream", "segments=3"])
def test_a_callback_that_raises_system_exit_at_any_chunk(mpy, fault, mode, kw):
    # an app's callback that exits: the download ends as for its other exceptions (docs/decisions.md, Callbacks)
    v = sync_sweep(mpy, fault, mode, kw, error="SystemExit", kinds=("callback",))
    assert v["landed"].get("callback", 0) > 5, v


def test_an_interrupt_while_a_synchronous_download_waits_leaves_nothing_behind(mpy, fault):
    # The plain case, named: Ctrl-C while the REPL's download waits for the network (the loop's poll raises it)
    r = mpy.run("""
from mpos import DownloadManager
from stepcancel import admission_is_free, loop_is_idle
from interrupts import install

DownloadManager.session_idle_ms = 0
inj = install()
base = fd_count()
inj.arm(8, ("loop",))
try:
    DownloadManager.download_url(URL, outfile='out.bin')
except KeyboardInterrupt:
    pass
left = admission_is_free() + loop_is_idle()
listed = DownloadManager.downloads()
fds = fd_count() - base
again = DownloadManager.download_url(URL, outfile='out.bin')
result(landed=inj.landed, left=left, listed=listed, fds=fds, again=again, sha=sha256_file('out.bin') == SHA)
""", URL=fault.url("/bytes/%d?trickle=1" % N), SHA=sha256_of(N))
    assert r.value == {"landed": "loop", "left": [], "listed": [], "fds": 0, "again": True, "sha": True}, r.value


# TaskManager.start() runs three downloads in tasks (plain, segments=3, small chunks) when the k-th point raises;
# start() goes on after it (task_manager.py). A download the interrupt came through ends with it (cleaned up); the
# others, and all of them when it came from the loop's wait, finish byte-exact. IDLE: session_idle_ms.
OS_LOOP = """
import asyncio
from mpos import DownloadManager, TaskManager
from mpos.net import segments
from stepcancel import loop_is_idle, admission_is_free, put
from interrupts import install, callback, left_in_loop, INJECTOR

DownloadManager.session_idle_ms = IDLE
DownloadManager.retry_base_ms = 1
segments.min_segment = 1000
inj = install()

async def pause(ms):
    await asyncio.sleep_ms(ms)

NAMES = ['a.bin', 'b.bin', 'c.bin']
KWS = [{}, {'segments': 3}, {'chunk_size': 256}]
base = fd_count()
k = 1 - STRIDE
landed = {}
while True:
    k += STRIDE
    for name in NAMES:
        put(name, OLD)
        put(name + '.part', None)
        put(name + '.part.state', None)
    ended = {}

    async def one(name, kw):
        try:
            ended[name] = await DownloadManager.download_url(URL, outfile=name, progress_callback=callback(), **kw)
        except BaseException as e:
            ended[name] = repr(e)
            raise

    async def stopper():
        # every download ended, nothing listed, the session closed; then TaskManager's old idle tasks (a loop's
        # interrupt leaves one) and what was cancelled end too
        while len(ended) < len(NAMES) or DownloadManager.downloads() or DownloadManager.is_session_active():
            await asyncio.sleep_ms(1)
        await asyncio.sleep_ms(25)
        TaskManager.stop()

    INJECTOR.exempt = [TaskManager.create_task(stopper())]
    inj.arm(k)
    for name, kw in zip(NAMES, KWS):
        TaskManager.create_task(one(name, kw))
    TaskManager.start()
    where = inj.landed
    inj.arm(None)
    run(pause(15))  # (an interrupt as stop() came may leave TaskManager's idle task asleep 10 ms more)
    if where is None:
        result(k=k, landed=landed, ended=ended, exact=[sha256_file(name) == SHA for name in NAMES])
        break
    landed[where] = landed.get(where, 0) + 1
    wrong = left_in_loop() + admission_is_free()
    wrong += fds_left(base)
    for name in NAMES:
        r = ended.get(name)
        if r is True:
            if sha256_file(name) != SHA:
                wrong.append(name + ' True, not exact')
            continue
        if r is None or r is False or 'KeyboardInterrupt' not in r or where == 'loop':
            wrong.append('%s ended %r' % (name, r))
        if sha256_file(name) not in (OLD_SHA, SHA):
            wrong.append(name + ' broken')
        n = DownloadManager.get_resume_position(name) if exists(name + '.part') else 0
        r = DownloadManager.download_url(URL, outfile=name, headers={'Range': 'bytes=%d-' % n} if n else None)
        if r is not True or sha256_file(name) != SHA:
            wrong.append('%s resumed %r' % (name, r))
    wrong += fds_left(base, ' after the resumes')
    if wrong:
        result(k=k, landed=where, wrong=wrong, ended=ended)
        break
"""


@pytest.mark.parametrize("idle_ms", [0, 5])
def test_downloads_in_the_os_loop_interrupted_at_any_point(mpy, fault, idle_ms):
    # idle_ms 5: the idle session's closer is a task an interrupt may land in too (it used to stay named, asleep for
    # ever: the session and its connections were never closed); a segment's task one too (the download then waited
    # for it for ever, or failed as "out of memory")
    v = mpy.run(OS_LOOP, URL=fault.url("/bytes/%d?trickle=1" % N), SHA=sha256_of(N), OLD=OLD, OLD_SHA=OLD_SHA,
                IDLE=idle_ms, STRIDE=STRIDE, timeout=TIMEOUT).value
    assert "wrong" not in v, v
    print(v)
    assert v["exact"] == [True] * 3 and v["landed"].get("task", 0) > 30 // STRIDE, v
    assert v["landed"].get("loop", 0) > 30 // STRIDE, v


def test_an_interrupt_in_the_idle_sessions_closer_closes_the_session(mpy, fault):
    r = mpy.run("""
import asyncio
from mpos import DownloadManager, TaskManager
from mpos.net import admission

DownloadManager.session_idle_ms = 50
base = fd_count()
out = {}

async def app():
    out['got'] = await DownloadManager.download_url(URL) is not None
    await asyncio.sleep_ms(5)  # (the closer took its first step: it sleeps until the session has idled 50 ms)
    admission._closer.data = KeyboardInterrupt('in the closer')  # Ctrl-C lands in it as it wakes
    await idled()
    out['active'] = DownloadManager.is_session_active()
    out['fds'] = fd_count() - base
    out['again'] = await DownloadManager.download_url(URL) is not None
    await idled()
    out['active_after_the_next'] = DownloadManager.is_session_active()
    out['fds_after_the_next'] = fd_count() - base
    TaskManager.stop()

async def idled():
    for _ in range(300):  # (3 s at most: a hang guard)
        if not DownloadManager.is_session_active():
            return
        await asyncio.sleep_ms(10)

TaskManager.create_task(app())
TaskManager.start()
result(**out)
""", URL=fault.url("/bytes/4000"))
    assert r.value == {"got": True, "active": False, "fds": 0, "again": True, "active_after_the_next": False,
                       "fds_after_the_next": 0}, r.value


def test_an_interrupt_in_the_sessions_watchdog_keeps_the_timeouts(mpy, fault):
    # A stalled server: the read's 1 s timeout holds after Ctrl-C ended the watchdog task (it used to wait the 4 s
    # until the server closed)
    r = mpy.run("""
import asyncio
from mpos import DownloadManager, TaskManager
from mpos.net import admission

DownloadManager.session_idle_ms = 0
out = {}

async def app():
    task = asyncio.create_task(DownloadManager.download_url(URL, timeout=1, tries=1, raise_errors=True))
    await asyncio.sleep_ms(100)  # (its read waits)
    admission._session._watchdog_task.data = KeyboardInterrupt('in the watchdog')
    try:
        out['got'] = repr(await task)
    except Exception as e:
        out['got'] = type(e).__name__  # (without its watchdog: a NetworkError once the server closed, 4 s later)
    TaskManager.stop()

TaskManager.create_task(app())
TaskManager.start()
result(**out)
""", URL=fault.url("/bytes/4000?stall=0&stall_s=4"))
    assert r.value == {"got": "DownloadTimeout"}, r.value


# coro.close() at the k-th resumption of a coroutine, instead of that resumption: the GeneratorExit comes up through
# every frame where the coroutine awaits, as for a coroutine an app's own driver drops.
CLOSE = """
import asyncio
from mpos import DownloadManager
from mpos.net import segments
from stepcancel import loop_is_idle, admission_is_free, put, settle

DownloadManager.session_idle_ms = 0
segments.min_segment = 1000
OUT = 'out.bin'

class ClosedAt:
    # a coroutine as a task runs it; its k-th resumption closes it instead (and ends the task)
    def __init__(self, coro, k):
        self.coro, self.k, self.steps, self.closed = coro, k, 0, False

    def send(self, value):
        self.close_now()
        self.steps += 1
        return self.coro.send(value)

    def throw(self, *exc):  # (a wake by a cancel: asyncio.wait_for's, a session's watchdog's)
        self.close_now()
        self.steps += 1
        return self.coro.throw(*exc)

    def close_now(self):
        if self.steps == self.k:
            self.closed = True
            self.coro.close()
            raise StopIteration('closed')

def make(url):
    if MODE == 'post':
        return DownloadManager.post_url(url, data=bytes(3000))
    if MODE == 'ws':
        import aiohttp.websocket
        return aiohttp.websocket._connect(SESSION, url)
    kw = dict(KW)
    if MODE == 'file':
        kw['outfile'] = OUT
    elif MODE == 'stream':
        kw['chunk_callback'] = lambda chunk: None
    return DownloadManager.download_url(url, **kw)

async def main():
    global SESSION
    SESSION = ws_session(CA) if MODE == 'ws' else None
    base = fd_count()
    k = 0
    while True:
        put(OUT, OLD)
        put(OUT + '.part', None)
        put(OUT + '.part.state', None)
        c = ClosedAt(make(URL.replace('KEY', 'k%d' % k)), k)
        try:
            got = await asyncio.create_task(c)
        except BaseException as e:
            got = repr(e)
        await settle()
        if not c.closed:
            if MODE == 'ws':
                await got.close()
            result(k=k)
            return
        wrong = [] if got == 'closed' else ['closing it raised %r' % (got,)]
        wrong += fds_left(base)
        wrong += loop_is_idle(SESSION and SESSION._watchdog_task) + admission_is_free()
        if MODE == 'file' and sha256_file(OUT) != OLD_SHA:
            wrong.append('OUTFILE changed')
        if MODE == 'file':
            n = DownloadManager.get_resume_position(OUT) if exists(OUT + '.part') else 0
            r = await DownloadManager.download_url(NEXT, outfile=OUT, headers={'Range': 'bytes=%d-' % n} if n else None)
            ok = r is True and sha256_file(OUT) == SHA
        elif MODE == 'ws':
            ws = await SESSION.ws_connect(NEXT)
            ok = await ws.close()
        else:
            r = await make(NEXT)
            ok = r is not None and r is not False
        if not ok:
            wrong.append('the next call failed')
        wrong += fds_left(base, ' after the next call')
        if wrong:
            result(k=k, wrong=wrong)
            return
        k += 1
run(main())
"""


@pytest.mark.parametrize("case", ["memory", "file", "stream", "post", "segments", "a segment failed"])
def test_a_coroutine_closed_at_any_step(mpy, fault, case):
    mode = {"segments": "file", "a segment failed": "file"}.get(case, case)
    kw = {"segments": 3} if "segment" in case else {}
    # a failed segment (the key's second request, after the probe: a 404) wakes the download while the other
    # segments run: its cleanup awaited them, which a closed coroutine can't (RuntimeError, then a crash)
    path = "/bytes/%d?trickle=1%s" % (N, "&fail=404&key=KEY&skip=1" if case == "a segment failed" else "")
    url = fault.url("/echo?trickle=1" if mode == "post" else path)  # (trickled: an answer at once ended it in a step)
    nxt = fault.url("/echo" if mode == "post" else "/bytes/%d" % N)
    v = mpy.run(CLOSE, URL=url, NEXT=nxt, SHA=sha256_of(N), MODE=mode, KW=kw, OLD=OLD, OLD_SHA=OLD_SHA, CA=None,
                timeout=TIMEOUT).value
    assert "wrong" not in v and v["k"] > 1, v


def test_a_websocket_handshake_closed_at_any_step(mpy, ws_script, certs):
    srv = ws_script({"/talk": ["read"]}, certs=certs)  # (over TLS: a handshake of several steps)
    v = mpy.run(CLOSE, URL=srv.url("/talk"), NEXT=srv.url("/talk"), SHA=None, MODE="ws", KW={}, OLD=OLD,
                OLD_SHA=OLD_SHA, CA=certs.ca_der_path, timeout=TIMEOUT).value
    assert "wrong" not in v and v["k"] > 1, v


def test_an_exception_in_an_async_with_websocket_block_reaches_the_caller(mpy, ws_script):
    # __aexit__ gave close()'s True, which told `async with` to swallow what the block raised: any error, and
    # Ctrl-C, went unseen and the code after the block ran on. An error closes the websocket with the closing
    # handshake (the server's code, 1000); an interrupt, as a cancel, at once (1006: no waiting for the server)
    srv = ws_script({"/talk": ["read", 0.2]})
    r = mpy.run("""
async def main():
    session = ws_session()
    got = []
    for kind in (ValueError, KeyboardInterrupt, SystemExit):
        try:
            async with session.ws_connect(URL) as ws:
                await ws.send_bytes(b'x')
                raise kind('inside')
            got.append('swallowed')
        except BaseException as e:
            got.append([type(e).__name__, ws.closed, ws.close_code])
    result(got=got)
    await session.close()
run(main())
""", URL=srv.url("/talk"))
    assert r.value == {"got": [["ValueError", True, 1000], ["KeyboardInterrupt", True, 1006],
                               ["SystemExit", True, 1006]]}, r.value


def test_an_async_with_websocket_block_closed_while_it_awaits(mpy, ws_script):
    # The coroutine closed at the block's own await (GeneratorExit): the websocket goes, nothing is left open
    srv = ws_script({"/talk": [5]})
    r = mpy.run("""
import asyncio
from stepcancel import settle

async def app(session):
    async with session.ws_connect(URL) as ws:
        await asyncio.sleep_ms(1000)

async def main():
    session = ws_session()
    base = fd_count()
    coro = app(session)
    task = asyncio.create_task(coro)
    for _ in range(50):  # (until it sleeps in the block: the websocket is open)
        await asyncio.sleep(0)
        if session._websockets:
            break
    await asyncio.sleep(0)
    try:
        coro.close()
        got = 'closed'
    except BaseException as e:
        got = repr(e)
    task.cancel()
    await settle()
    result(got=got, open=len(session._websockets), fds=fd_count() - base)
    await session.close()
run(main())
""", URL=srv.url("/talk"))
    assert r.value == {"got": "closed", "open": 0, "fds": 0}, r.value


# One websocket in a task under TaskManager.start(), interrupted at its k-th point: a handshake, a message each way
# (the server reads ours through a small window, answers in pieces), a close. The task the interrupt came through
# ends with it, its websocket closed; the session serves the next attempt.
WS = """
import asyncio
from mpos import TaskManager
from stepcancel import session_is_clean
from interrupts import install, left_in_loop, INJECTOR

inj = install()

async def pause(ms):
    await asyncio.sleep_ms(ms)

MESSAGE = pattern(20000)
""" + WS_ROUND_TRIP + """
base = fd_count()
session = ws_session(CA)
k = 1 - STRIDE
landed = {}
while True:
    k += STRIDE
    out = {}

    async def app():
        try:
            out['got'] = await attempt(session)
        except BaseException as e:
            out['got'] = repr(e)
            raise

    async def stopper():
        while 'got' not in out:
            await asyncio.sleep_ms(1)
        await asyncio.sleep_ms(25)
        TaskManager.stop()

    INJECTOR.exempt = [TaskManager.create_task(stopper())]
    inj.arm(k)
    TaskManager.create_task(app())
    TaskManager.start()
    where = inj.landed
    inj.arm(None)
    run(pause(15))  # (an interrupt as stop() came may leave TaskManager's idle task asleep 10 ms more)
    if where is None:
        result(k=k, landed=landed, exact=out['got'] == SHA)
        break
    landed[where] = landed.get(where, 0) + 1
    wrong = [] if out['got'] == SHA or 'KeyboardInterrupt' in out['got'] else ['got %r' % out['got']]
    wrong += left_in_loop(session._watchdog_task) + session_is_clean(session, base)
    got = run(attempt(session))
    if got != SHA:
        wrong.append('the next attempt got %r' % got)
    if wrong:
        result(k=k, landed=where, wrong=wrong)
        break
"""


@pytest.mark.parametrize("tls", [False, True], ids=["ws", "wss"])
def test_a_websocket_in_the_os_loop_interrupted_at_any_point(mpy, ws_script, certs, tls):
    # An interrupt inside a frame's write left the frame cut and the connection kept: the Close written after it
    # was read as the cut frame's payload, and close() waited its whole ws_close timeout (10 s); in the task that
    # asyncio.wait_for made for the Close's write, it ended that task for good and close() waited for ever
    answer = frame(2, bytes(3000))
    pieces = [answer[i:i + 300] for i in range(0, len(answer), 300)]
    srv = ws_script({"/talk": ["read"] + [step for piece in pieces for step in (piece, 0.01)]}, rcvbuf=4096,
                    certs=certs if tls else None)
    v = mpy.run(WS, URL=srv.url("/talk"), SHA=hashlib.sha256(bytes(3000)).hexdigest(),
                CA=certs.ca_der_path if tls else None, STRIDE=STRIDE, timeout=TIMEOUT).value
    assert "wrong" not in v and v["exact"], v
    print(v)
    assert v["landed"].get("sock<", 0) > 10 // STRIDE and v["landed"].get("task", 0) > 10 // STRIDE, v


def test_an_interrupt_in_a_websockets_heartbeat_keeps_the_heartbeat(mpy, ws_script):
    # Ctrl-C ends the heartbeat's task: a new one takes over, and finds the server that answers no ping (no receive
    # runs to hear a pong: after 100 + 50 ms the connection goes as dead)
    srv = ws_script({"/talk": [5]})
    r = mpy.run("""
import asyncio
from mpos import TaskManager

out = {}

async def app():
    session = ws_session()
    ws = await session.ws_connect(URL, heartbeat=0.1)
    await asyncio.sleep_ms(30)  # (the heartbeat sleeps until 100 ms passed without a word from the server)
    first = ws._beat
    first.data = KeyboardInterrupt('in the heartbeat')
    for _ in range(300):  # (3 s at most: a hang guard)
        if ws.closed:
            break
        await asyncio.sleep_ms(10)
    out['closed'] = ws.closed
    out['why'] = type(ws.exception()).__name__
    await session.close()
    TaskManager.stop()

TaskManager.create_task(app())
TaskManager.start()
result(**out)
""", URL=srv.url("/talk"))
    assert r.value == {"closed": True, "why": "ServerTimeoutError"}, r.value


def test_the_idle_task_an_interrupt_left_ends_as_the_loop_goes_on(mpy):
    # start() enters asyncio's loop again after a KeyboardInterrupt, with a new idle task: the one before, asleep in
    # the queue, ends at once (it stayed up to 10 ms, and past a stop() that came meanwhile until the next start())
    r = mpy.run("""
import asyncio
from mpos import TaskManager
from stepcancel import loop_is_idle

seen = {}

async def interrupted():
    await asyncio.sleep_ms(5)
    seen['idler'] = TaskManager._idler
    raise KeyboardInterrupt

async def after():
    while 'idler' not in seen:
        await asyncio.sleep_ms(1)
    await asyncio.sleep(0)  # (start() is back in the loop: this task runs again only then)
    await asyncio.sleep(0)
    seen['done'] = seen['idler'].done()
    TaskManager.stop()

TaskManager.create_task(interrupted())
TaskManager.create_task(after())
TaskManager.start()
result(done=seen['done'], idle=loop_is_idle())
""")
    assert r.value == {"done": True, "idle": []}, r.value


def test_an_interrupt_inside_a_websockets_frame_or_its_close(mpy, ws_script):
    # Ctrl-C after a socket call of send_bytes (the frame is cut) or of receive (read bytes are not yet taken in):
    # the connection can't go on, and goes at once; inside close()'s write of its Close frame (a task of its own,
    # under asyncio.wait_for) it reaches close()'s caller, as anywhere else in the app's task
    srv = ws_script({"/talk": ["read", frame(2, bytes(3000)), 5]}, rcvbuf=4096)
    r = mpy.run("""
import asyncio
from interrupts import install

inj = install()
out = {}

async def main():
    session = ws_session()
    ws = await session.ws_connect(URL)
    inj.arm(2, ('sock>',))  # (the frame's second write: its first went)
    try:
        await ws.send_bytes(pattern(20000))
    except KeyboardInterrupt:
        out['send'] = [ws.closed, ws.close_code]
    ws = await session.ws_connect(URL)
    await ws.send_bytes(b'x')
    inj.arm(1, ('sock>',))
    try:
        await ws.receive()
    except KeyboardInterrupt:
        out['receive'] = [ws.closed, (await ws.receive()).type]
    ws = await session.ws_connect(URL)
    inj.arm(1, ('sock<',))
    try:
        await ws.close()
        out['close'] = 'returned'
    except KeyboardInterrupt:
        out['close'] = ws.closed
    await session.close()

try:
    run(main())
except KeyboardInterrupt:
    out['escaped'] = True
result(**out)
""", URL=srv.url("/talk"))
    assert r.value == {"send": [True, 1006], "receive": [True, 257], "close": True}, r.value


# Ctrl-C that lands in a timer as it wakes, the moment its time ran out: the timeout holds all the same. TIMERS
# records the tasks made, by their coroutine's name; interrupt_as_it_wakes(name) lands one in that task.
TIMERS = """
import asyncio
from mpos import TaskManager

made = []
_create_task = asyncio.create_task

def create_task(coro):
    task = _create_task(coro)
    made.append((repr(coro), task))
    return task

asyncio.create_task = create_task

def interrupt_as_it_wakes(name):
    for what, task in made:
        if ("'%s'" % name) in what and not task.done():
            task.data = KeyboardInterrupt('in ' + name)  # (it sleeps: the interrupt is raised in it as it wakes)
            return True
    return False

out = {}

def app_ends(coro):
    async def app():
        try:
            out['got'] = await coro
        except BaseException as e:
            out['got'] = type(e).__name__
        TaskManager.stop()
    TaskManager.create_task(app())
    TaskManager.start()
"""


def test_an_interrupt_in_task_managers_wait_for_alarm_keeps_the_timeout(mpy):
    # It used to end the alarm unheard: wait_for waited the whole 2 s and returned as if in time
    r = mpy.run(TIMERS + """
async def slow():
    await asyncio.sleep_ms(2000)

async def waited():
    wait = TaskManager.wait_for(slow(), 0.1)
    async def interrupt():
        await asyncio.sleep_ms(20)
        out['found'] = interrupt_as_it_wakes('alarm')
    asyncio.create_task(interrupt())
    return await wait

app_ends(waited())
result(**out)
""")
    assert r.value == {"found": True, "got": "TimeoutError"}, r.value


def test_an_interrupt_in_a_websocket_receives_alarm_keeps_the_timeout(mpy, ws_script):
    # The server says nothing: receive(timeout=0.1) ends with its timeout (it used to wait for ever)
    srv = ws_script({"/talk": [5]})
    r = mpy.run(TIMERS + """
async def received():
    session = ws_session()
    ws = await session.ws_connect(URL)
    async def interrupt():
        await asyncio.sleep_ms(20)
        out['found'] = interrupt_as_it_wakes('_alarm')
    asyncio.create_task(interrupt())
    try:
        return await ws.receive(timeout=0.1)
    finally:
        await session.close()

app_ends(received())
result(**out)
""", URL=srv.url("/talk"))
    assert r.value == {"found": True, "got": "TimeoutError"}, r.value


def test_an_interrupt_in_the_deadline_of_a_wait_for_a_slot_keeps_the_deadline(mpy, fault):
    # max_connections=1: the second download waits for the first one's slot past its deadline (it used to wait
    # until the slot came, and then ran)
    r = mpy.run(TIMERS + """
from mpos import DownloadManager
DownloadManager.max_connections = 1

async def second():
    first = asyncio.create_task(DownloadManager.download_url(SLOW))
    await asyncio.sleep_ms(10)
    async def interrupt():
        await asyncio.sleep_ms(20)
        out['found'] = interrupt_as_it_wakes('expire')
    asyncio.create_task(interrupt())
    try:
        return await DownloadManager.download_url(URL, deadline=0.1, raise_errors=True)
    finally:
        out['first_ended_before'] = first.done()
        out['first'] = len(await first)

app_ends(second())
result(**out)
""", SLOW=fault.url("/bytes/1000?delay=0.6"), URL=fault.url("/bytes/1000"))
    assert r.value == {"found": True, "got": "DownloadTimeout", "first_ended_before": False, "first": 1000}, r.value


def test_an_interrupt_in_a_wait_for_a_free_connection_reaches_the_request(mpy, fault):
    # TCPConnector(limit=1): the second request waits for the first one's connection, in a task of
    # asyncio.wait_for's. Ctrl-C lands in that task as the connection comes back: the second request ends with it,
    # and nothing is left (it used to end that task for good, and the request waited for ever)
    r = mpy.run(TIMERS + """
import aiohttp
from interrupts import install, INJECTOR

inj = install()

async def second():
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
    base = fd_count()
    async def first():
        async with session.get(URL) as resp:
            await asyncio.sleep_ms(50)
            return len(await resp.read())
    one = asyncio.create_task(first())
    await asyncio.sleep_ms(10)
    INJECTOR.exempt = [one, asyncio.current_task(), session._watchdog_task, TaskManager._idler]
    inj.arm(1, ('task',))
    try:
        async with session.get(URL, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return len(await resp.read())
    finally:
        out['landed'] = INJECTOR.landed
        inj.arm(None)
        out['first'] = await one
        await session.close()
        out['fds'] = fd_count() - base

app_ends(second())
result(**out)
""", URL=fault.url("/bytes/1000"), timeout=20)
    assert r.value == {"landed": "task", "got": "KeyboardInterrupt", "first": 1000, "fds": 0}, r.value


def test_an_interrupt_in_a_bounded_wait_is_raised_over_the_cancel_that_woke_it(mpy):
    # The heartbeat's ping: Ctrl-C in its write drops the connection, and the drop wakes the heartbeat with a
    # cancel; the interrupt is what the heartbeat gets (it was lost, taken for the drop's cancel)
    r = mpy.run("""
import asyncio
from aiohttp import poll

async def main():
    me = asyncio.current_task()
    async def write():
        await asyncio.sleep_ms(10)
        me.cancel()  # (as a drop wakes the task waiting)
        raise KeyboardInterrupt('in the write')
    try:
        await poll.bounded(write(), 1000)
        return 'returned'
    except BaseException as e:
        return type(e).__name__

result(got=asyncio.run(main()))
""")
    assert r.value == {"got": "KeyboardInterrupt"}, r.value


def test_a_synchronous_call_with_no_heap_left_to_pause_the_loop_returns_its_result(mpy, fault):
    # The pause that lets what a synchronous call cancelled end is best effort: with no heap for its task, the
    # download's result stands (a MemoryError replaced it)
    r = mpy.run("""
import asyncio
from mpos import DownloadManager

_create_task = asyncio.create_task

def create_task(coro):
    if "'_pause'" in repr(coro):
        coro.close()
        raise MemoryError('no heap for the pause')
    return _create_task(coro)

asyncio.create_task = create_task
base = fd_count()
got = DownloadManager.download_url(URL)
result(got=sha256(got), missing=DownloadManager.download_url(MISSING), fds=fd_count() - base)
""", URL=fault.url("/bytes/3000"), MISSING=fault.url("/status/404"))
    assert r.value == {"got": sha256_of(3000), "missing": None, "fds": 0}, r.value

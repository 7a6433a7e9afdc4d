"""Cancellation at every step: a download (or a request, or a websocket) is cancelled after exactly k turns of its
task, for k = 0, 1, 2 ... until it finishes first (tests/mpy/stepcancel.py). After each cancel: the CancelledError
reached the canceller, no fd is left, nothing waits in the event loop, DownloadManager holds no slot, OUTFILE is
untouched, a .part stays only with data in it (docs/decisions.md), nothing was logged, and the next download of the
same URL to the same OUTFILE gets the exact bytes."""
import os

import pytest

from test_reliability import OLD, OLD_SHA
from tools.testservers import payload, sha256_of
from tools.wsservers import frame

# One download, cancelled at every step in turn. KW: download_url's keywords; MODE memory, file or stream; OLD the
# outfile's previous content; START the .part's content before each attempt (a resume), None: none.
SWEEP = """
import asyncio, os
from mpos import DownloadManager, TaskManager
from mpos.net import partfile
from stepcancel import cancel_at, loop_is_idle, settle, admission_is_free, put

WAIT_FOR = {'asyncio': asyncio.wait_for, 'TaskManager': TaskManager.wait_for}.get(WAIT_FOR)

DownloadManager.session_idle_ms = 0
DownloadManager.retry_base_ms = 1
DownloadManager.retry_max_ms = 20  # (a Retry-After too: the waits are cancelled in, not sat through)
if KW.get('segments'):
    from mpos.net import segments
    segments.min_segment = 1000  # (4000 bytes in 3 segments)
OUT = 'out.bin'

def sink():
    got = []
    if MODE == 'stream':
        return got, {'chunk_callback': got.append}
    if MODE == 'file':
        return got, {'outfile': OUT}
    return got, {}

async def progress(percent):
    await asyncio.sleep(0)  # a step of its own: a cancel lands in it, the one at 100 % too

async def keep(chunk):
    await asyncio.sleep(0)

def call(url, kw, headers):
    got, sinkkw = sink()
    kw = dict(kw, **sinkkw)
    nested = kw.pop('nested', None)
    if nested:  # each chunk awaits a download of its own, in the same task (a slot past the cap: admission.admit)
        async def fetch(chunk):
            got.append(chunk)
            assert await DownloadManager.download_url(nested) is not None
        kw['chunk_callback'] = fetch
    if kw.pop('async_callbacks', False):  # (a callback can't be passed in by value)
        kw['progress_callback'] = progress
        if MODE == 'stream':
            kw['chunk_callback'] = lambda chunk: got.append(chunk) or keep(chunk)
    return got, DownloadManager.download_url(url, headers=headers, **kw)

def resume_headers():
    # (the recipe continues a .part; OUTFILE's old content is no part of this resource)
    n = DownloadManager.get_resume_position(OUT) if MODE == 'file' and exists(OUT + '.part') else 0
    return {'Range': 'bytes=%d-' % n} if n else None

async def main():
    base = fd_count()
    k = cancelled = again = 0
    while k < LIMIT:
        put(OUT, OLD if MODE == 'file' else None)
        put(OUT + '.part', START)
        put(OUT + '.part.state', None)
        url = URL.replace('K', str(k))  # a fault with key=K hits each attempt's first request only
        if START:  # the .part of an earlier download of this URL, as it leaves it
            partfile.write_record(OUT + '.part', {'url': partfile.url_key(url), 'v': None, 'size': len(START) + SIZE})
        got, coro = call(url, KW, {'Range': 'bytes=%d-' % len(START)} if START else None)
        if WAIT_FOR:  # timed out after k ms instead, by asyncio's wait_for or TaskManager's
            try:
                how, what = 'finished', await WAIT_FOR(coro, k / 1000)
            except asyncio.TimeoutError:
                how, what = 'cancelled', k
        else:
            how, what = await cancel_at(coro, k, AGAIN)
        if how == 'finished':
            result(k=k, how=how, ok=what is not None and what is not False, cancelled=cancelled, again=again)
            return
        await settle()
        part = size(OUT + '.part')
        wrong = []
        if how == 'cancelled again':
            again += 1
        elif how != 'cancelled':
            wrong.append('%s %r' % (how, what))
        wrong += fds_left(base)
        wrong += loop_is_idle() + admission_is_free()
        # (asyncio.wait_for may time out a download that finished in the same turn: docs/decisions.md, Timeouts)
        if MODE == 'file' and sha256_file(OUT) not in ((OLD_SHA, SHA) if WAIT_FOR is asyncio.wait_for else (OLD_SHA,)):
            wrong.append('outfile changed')
        if part == 0:
            wrong.append('an empty .part')
        if START and part < len(START):
            wrong.append('the .part lost bytes: %d' % part)
        # the next download of the same URL gets the exact bytes (from the .part the cancel left, in file mode)
        got, coro = call(url, {}, resume_headers())
        r = await coro
        data = b''.join(got) if MODE == 'stream' else r
        if MODE == 'file':
            data = r is True and sha256_file(OUT) == SHA and b'x'
        if not data or (MODE != 'file' and sha256(data) != SHA):
            wrong.append('the next download failed: %r' % (r if r is not True else data))
        wrong += fds_left(base, ' after the next download')
        if wrong:
            result(k=k, how=how, wrong=wrong, part=part)
            return
        cancelled += 1
        k += 1
    result(k=k, how='limit', cancelled=cancelled)

run(main())
"""


def sweep(mpy, url, sha, mode="file", kw=None, start=None, limit=400, again=None, wait_for=None):
    r = mpy.run(SWEEP, AGAIN=again, WAIT_FOR=wait_for, URL=url, SHA=sha, MODE=mode, KW=kw or {}, START=start, OLD=OLD,
                OLD_SHA=OLD_SHA, LIMIT=limit, SIZE=N - len(start or b""), timeout=TIMEOUT)
    v = r.value
    assert "wrong" not in v, v
    print(v)  # (the counts, for a long sweep run with -s)
    assert v["how"] == "finished" and v["ok"], v
    assert r.stderr == "", r.stderr  # a cancel is no failure: nothing is logged
    return v


# bytes of each resource, sent in pieces of 1, 2, 3, 5 ... bytes (trickle), a step each: 4000 is 20 to 70 steps;
# CANCEL_SWEEP_BYTES=30000 sweeps 150 to 300 (several minutes)
N = int(os.environ.get("CANCEL_SWEEP_BYTES", 4000))
TIMEOUT = 60 * max(1, N // 4000)  # seconds for one sweep
# A sweep that cancelled more than SWEPT steps swept something: a loaded machine lumps the trickle's pieces together
# (a plain body of 4000 bytes once finished in 4 steps beside other test runs, and at load 11 nine sweeps cancelled
# exactly 2, each with the exact bytes; a gzip body of text is a few steps on the wire; segments= does most of its
# work in tasks of its own, which the steps do not count)
SWEPT = 1


@pytest.mark.parametrize("mode", ["file", "stream", "memory"])
def test_a_download_cancelled_at_any_step(mpy, fault, mode):
    v = sweep(mpy, fault.url("/bytes/%d?trickle=1" % N), sha256_of(N), mode)
    assert v["cancelled"] > SWEPT, v


# What a download may be doing when it is cancelled, besides reading a plain body (file mode; URL's K: the attempt)
CASES = {
    "a resume": ("/bytes/%d?trickle=1" % N, {}),
    "segments": ("/bytes/%d?trickle=1" % N, {"segments": 3}),
    "a redirect chain": ("/chain/2/bytes/%d?trickle=1" % N, {}),
    "a retry after a drop": ("/bytes/%d?trickle=1&drop=1500&key=K" % N, {}),
    "a 503 with Retry-After": ("/bytes/%d?trickle=1&fail=503&retry_after=1&key=K" % N, {}),
    "a chunked body": ("/bytes/%d?trickle=1&chunked=1" % N, {}),
    "a gzip body": ("/bytes/%d?trickle=1&gzip=1&text=1" % N, {}),
}


@pytest.mark.parametrize("mode", ["file", "stream"])
def test_a_download_cancelled_at_any_step_of_its_async_callbacks(mpy, fault, mode):
    v = sweep(mpy, fault.url("/bytes/%d?trickle=1" % N), sha256_of(N), mode, {"async_callbacks": True})
    assert v["cancelled"] > SWEPT, v


def test_a_download_cancelled_at_any_step_of_the_downloads_its_callback_awaits(mpy, fault):
    v = sweep(mpy, fault.url("/bytes/%d?trickle=1" % N), sha256_of(N), "stream",
              {"nested": fault.url("/bytes/100?trickle=1"), "chunk_size": 1000})
    assert v["cancelled"] > SWEPT, v


@pytest.mark.parametrize("case", CASES)
def test_a_download_cancelled_at_any_step_of(mpy, fault, case):
    path, kw = CASES[case]
    text = "text=1" in path
    start = payload(N)[:1500] if case == "a resume" else None
    v = sweep(mpy, fault.url(path), sha256_of(N, text=text), "file", kw, start)
    assert v["cancelled"] > SWEPT, v


def test_a_second_cancel_during_the_cleanup_of_a_segmented_download(mpy, fault):
    # A segmented download's cleanup awaits its segments' tasks: a cancel may come again meanwhile. Whether one lands
    # there depends on the build's speed (the frozen one ends its cleanup within the turn of the first cancel);
    # test_segments.py's test_a_second_cancel_during_the_cleanup_gives_every_slot_back lands one by time
    v = sweep(mpy, fault.url("/bytes/%d?trickle=1" % N), sha256_of(N), "file", {"segments": 3}, again=0)
    assert v["cancelled"] + v["again"] > SWEPT, v


@pytest.mark.parametrize("wait_for", ["asyncio", "TaskManager"])
@pytest.mark.parametrize("case", ["a plain body", "segments"])
def test_a_download_timed_out_by_wait_for_after_any_number_of_ms(mpy, fault, case, wait_for):
    # by time, not by steps: segments= does most of its work in tasks of its own, which the steps do not count
    v = sweep(mpy, fault.url("/bytes/%d?trickle=1" % N), sha256_of(N), "file", {"segments": 3} if case == "segments"
              else {}, wait_for=wait_for)
    assert v["cancelled"] > SWEPT, v


# close_session() after k steps of the first of three downloads: each fails (False) or, if it had not begun, gets its
# file; nothing is left behind; then eight downloads at once all hold a slot at once and get their exact files.
CLOSE = """
import asyncio
from mpos import DownloadManager
from stepcancel import Stepped, loop_is_idle, settle, admission_is_free

DownloadManager.session_idle_ms = 0
DownloadManager.retry_base_ms = 1

def put_old(names):
    for name in names:
        with open(name, 'wb') as f:
            f.write(OLD)

def left_right(names):
    wrong = []
    for name in names:
        if sha256_file(name) not in (OLD_SHA, SHA):
            wrong.append(name + ' is neither old nor new')
        if size(name + '.part') == 0:
            wrong.append(name + '.part is empty')
    return wrong

async def gather(tasks):
    got = []
    for task in tasks:
        got.append(await task)
    return got

async def main():
    base = fd_count()
    k = 0
    while True:
        names = ['a%d.bin' % k, 'b%d.bin' % k, 'c%d.bin' % k]
        put_old(names)
        first = Stepped(DownloadManager.download_url(URL, outfile=names[0]))
        tasks = [asyncio.create_task(first)] + [asyncio.create_task(DownloadManager.download_url(URL, outfile=name))
                                               for name in names[1:]]
        while first.steps < k and not tasks[0].done():
            await asyncio.sleep(0)
        if tasks[0].done():
            break
        await DownloadManager.close_session()
        got = await gather(tasks)
        await settle()
        wrong = [] if all(r is True or r is False for r in got) else ['returned %r' % got]
        wrong += loop_is_idle() + admission_is_free() + left_right(names)
        wrong += fds_left(base)
        if wrong:
            result(k=k, wrong=wrong)
            return
        k += 1
    for task in tasks:
        await task
    # eight at once, each with a slot of its own at once
    DownloadManager.max_connections = 8
    names = ['n%d.bin' % i for i in range(8)]
    tasks = [asyncio.create_task(DownloadManager.download_url(URL, outfile=name)) for name in names]
    await asyncio.sleep(0)
    slots = slots_taken()
    got = await gather(tasks)
    wrong = [name for name in names if sha256_file(name) != SHA]
    result(k=k, slots=slots, got=got, wrong=wrong, fds=fd_count() - base)

run(main())
"""


def test_close_session_at_any_step_of_three_downloads(mpy, fault):
    v = mpy.run(CLOSE, URL=fault.url("/bytes/%d?trickle=1" % N), SHA=sha256_of(N), OLD=OLD, OLD_SHA=OLD_SHA,
                timeout=TIMEOUT).value
    assert "wrong" not in v or v["wrong"] == [], v
    assert v["k"] > SWEPT and v["slots"] == 8 and v["got"] == [True] * 8 and v["fds"] == 0, v


# The client itself: ATTEMPT (code) defines `async def attempt(session)` -> what it got, as a sha256 hex; it is
# cancelled at every step in turn on one session, which must then serve the next attempt exactly.
CLIENT = """
import asyncio, aiohttp
from stepcancel import cancel_at, loop_is_idle, settle, session_is_clean

async def main():
    base = fd_count()
    session = ws_session(CA)
    k = cancelled = 0
    while k < LIMIT:
        how, what = await cancel_at(attempt(session), k)
        if how == 'finished':
            break
        await settle()
        wrong = [] if how == 'cancelled' else ['%s %r' % (how, what)]
        wrong += loop_is_idle(session._watchdog_task) + session_is_clean(session, base)
        got = await attempt(session)
        if got != SHA:
            wrong.append('the next attempt got %r' % got)
        if wrong:
            result(k=k, how=how, wrong=wrong)
            return
        k += 1
        cancelled += 1
    await session.close()
    await settle()
    result(how=how, ok=what == SHA, cancelled=cancelled, fds=fd_count() - base, idle=loop_is_idle())

"""

ATTEMPTS = {
    "read": """
async def attempt(session):
    async with session.get(URL) as resp:
        return sha256(await resp.read())
""",
    "iter_chunked": """
async def attempt(session):
    h = new_sha()
    async with session.get(URL) as resp:
        async for chunk in resp.content.iter_chunked(500):
            h.update(chunk)
    return hexdigest(h)
""",
    "text": """
async def attempt(session):
    async with session.get(URL) as resp:
        return sha256((await resp.text()).encode())
""",
}


def client_sweep(mpy, attempt, url, sha, ca=None, limit=400):
    r = mpy.run(CLIENT + attempt + "\nrun(main())\n", URL=url, SHA=sha, CA=ca, LIMIT=limit, timeout=TIMEOUT)
    v = r.value
    assert "wrong" not in v, v
    print(v)  # (the counts, for a long sweep run with -s)
    assert v["ok"] and v["fds"] == 0 and v["idle"] == [], v
    assert r.stderr == "", r.stderr
    return v


@pytest.mark.parametrize("how", ATTEMPTS)
def test_a_request_cancelled_at_any_step(mpy, fault, how):
    text = how == "text"
    v = client_sweep(mpy, ATTEMPTS[how], fault.url("/bytes/%d?trickle=1%s" % (N, "&text=1" * text)),
                     sha256_of(N, text=text))
    assert v["cancelled"] > SWEPT, v


def test_a_tls_request_cancelled_at_any_step(mpy, fault_tls, certs):
    v = client_sweep(mpy, ATTEMPTS["read"], fault_tls.url("/bytes/%d?trickle=1" % N), sha256_of(N), certs.ca_der_path)
    assert v["cancelled"] > SWEPT, v


WS_ROUND_TRIP = """
async def attempt(session):
    # a handshake, MESSAGE each way, a close
    async with session.ws_connect(URL) as ws:
        await ws.send_bytes(MESSAGE)
        got = await ws.receive_bytes()
        await ws.close()
    return sha256(got)
"""
WS_ATTEMPT = """
MESSAGE = pattern(600000)  # made once: 600 KB made afresh per attempt (1.2 MB at its peak) cut a 2 MB heap into holes
""" + WS_ROUND_TRIP


def test_a_websocket_cancelled_at_any_step(mpy, ws_script):
    # The server reads the client's message through a small window (its send waits), then answers in pieces
    import hashlib

    answer = frame(2, bytes(3000))
    pieces = [answer[i:i + 300] for i in range(0, len(answer), 300)]
    srv = ws_script({"/talk": ["read"] + [step for piece in pieces for step in (piece, 0.01)]}, rcvbuf=4096)
    v = client_sweep(mpy, WS_ATTEMPT, srv.url("/talk"), hashlib.sha256(bytes(3000)).hexdigest())
    assert v["cancelled"] > 10, v


# A cancel in the very turn a read times out: the session's watchdog ends the wait as a timeout, the app cancels the
# task as well (a screen closed, its own wait_for ran out) before the task runs again. The app's cancel must win: the
# CancelledError reaches it, not a timeout that the download retries (and then finishes, the cancel lost).
IN_THE_TURN = """
import asyncio, aiohttp
from mpos import DownloadManager
from mpos.net import admission

DownloadManager.session_idle_ms = 0
DownloadManager.retry_base_ms = 1

async def read(session):
    async with session.get(URL, timeout=aiohttp.ClientTimeout(sock_read=0.2)) as resp:
        return await resp.read()

async def cancel_as_it_times_out(task, session):
    # Each turn: is a read waiting? then cancel the task in the turn the session's watchdog times that wait out,
    # just before the watchdog runs (it is due, and the wait's time is up) or just after (it let the waiter go).
    from time import ticks_diff, ticks_ms

    waiting = None
    while not task.done():
        await asyncio.sleep(0)
        busy = session()._busy if session() else []
        watchdog = session()._watchdog_task if session() else None
        if ORDER == 'after' and waiting is not None and waiting.waiter is None and waiting in busy:
            break
        waiting = busy[0] if busy and busy[0].waiter is not None else None
        if (ORDER == 'before' and waiting is not None and watchdog is not None and waiting.wait_until is not None
                and ticks_diff(ticks_ms(), watchdog.ph_key) >= 0
                and ticks_diff(watchdog.ph_key, waiting.wait_until) >= 0):
            break
    else:  # the wait timed out in a turn this task did not run in before the watchdog: no race, try again
        await error_of(task)
        return 'missed'
    task.cancel()
    try:
        return 'returned %d bytes' % len(await task)
    except asyncio.CancelledError:
        return 'cancelled'
    except Exception as e:
        return repr(e)

async def main():
    base = fd_count()
    own = aiohttp.ClientSession()
    got = []
    missed = 0
    while len(got) < 6 and missed < 10:
        if len(got) % 2:
            task, session = asyncio.create_task(read(own)), lambda: own
        else:
            task = asyncio.create_task(DownloadManager.download_url(URL, timeout=0.2))
            session = lambda: admission._session
        how = await cancel_as_it_times_out(task, session)
        if how == 'missed':
            missed += 1
        else:
            got.append(how)
    await own.close()
    result(got=got, fds=fd_count() - base)

run(main())
"""


@pytest.mark.parametrize("order", ["before", "after"])
def test_a_cancel_in_the_turn_a_read_times_out_reaches_the_canceller(mpy, fault, order):
    v = mpy.run(IN_THE_TURN, URL=fault.url("/bytes/4000?stall=1000&stall_s=0.4"), ORDER=order).value
    assert v == {"got": ["cancelled"] * 6, "fds": 0}, v


def test_a_queued_download_cancelled_in_the_turn_its_slot_is_granted_passes_the_slot_on(mpy, fault):
    # one slot: A holds it, B and C wait; B is cancelled in the turn A's end hands it the slot, before B runs
    v = mpy.run("""
import asyncio
from mpos import DownloadManager
from stepcancel import loop_is_idle, settle, admission_is_free

DownloadManager.session_idle_ms = 0
DownloadManager.max_connections = 1

async def main():
    base = fd_count()
    a, b, c = [asyncio.create_task(DownloadManager.download_url(URL, outfile=name)) for name in ('a', 'b', 'c')]
    while not a.done():
        await asyncio.sleep(0)
    b.cancel()
    try:
        got_b = await b
    except asyncio.CancelledError:
        got_b = 'cancelled'
    got = [await a, got_b, await c]
    await settle()
    result(got=got, c=sha256_file('c') == SHA, b=exists('b.part'), fds=fd_count() - base,
           left=loop_is_idle() + admission_is_free())
run(main())
""", URL=fault.url("/bytes/%d?trickle=1" % N), SHA=sha256_of(N), timeout=20).value  # (a slot lost: a hang)
    assert v == {"got": [True, "cancelled", True], "c": True, "b": False, "fds": 0, "left": []}, v


def test_a_download_queued_with_a_deadline_cancelled_at_every_step_leaves_nothing(mpy, fault):
    # one slot, held by a download that stalls; behind it one with deadline=0.2 (its wait for the slot has a timer
    # of its own), cancelled at its k-th step for every k until its deadline ends it first
    v = mpy.run("""
import asyncio
from mpos import DownloadManager
from stepcancel import cancel_at, loop_is_idle, settle, admission_is_free

DownloadManager.session_idle_ms = 0
DownloadManager.max_connections = 1

async def queued():
    try:
        return await DownloadManager.download_url(URL, deadline=0.2, raise_errors=True)
    except DownloadManager.DownloadTimeout:
        return 'timed out'

async def main():
    base = fd_count()
    outcomes = []
    left = []
    while not outcomes or outcomes[-1][0] != 'finished':
        holder = asyncio.create_task(DownloadManager.download_url(STALL))
        await asyncio.sleep_ms(20)
        outcomes.append(await cancel_at(queued(), len(outcomes)))
        holder.cancel()
        try:
            await holder
        except asyncio.CancelledError:
            pass
        await settle()
        left += loop_is_idle() + admission_is_free()
    result(outcomes=outcomes, left=left, fds=fd_count() - base)
run(main())
""", STALL=fault.url("/bytes/4000?stall=1000&stall_s=5"), URL=fault.url("/bytes/1000"), timeout=60).value
    assert v["left"] == [] and v["fds"] == 0, v
    assert v["outcomes"][-1] == ["finished", "timed out"] and len(v["outcomes"]) > 2, v
    assert all(how == "cancelled" for how, steps in v["outcomes"][:-1]), v


# A websocket's reader and writer are woken when the websocket goes (the session closes): a cancel of theirs in that
# same turn, before or after, is theirs to get, not a CLOSED message (an `async for` that ends and goes on after its
# loop) or a ClientConnectionResetError.
WS_TEARDOWN = """
import asyncio
from stepcancel import settle

async def reader(ws):
    async for msg in ws:
        pass
    return 'went on after its loop'

async def writer(ws):
    block = bytes(1 << 16)
    for _ in range(1000):  # to a server that does not read: soon it waits
        await ws.send_bytes(block)
    return 'sent'

async def outcome(task):
    try:
        return await task
    except asyncio.CancelledError:
        return 'cancelled'
    except Exception as e:
        return repr(e)

async def main():
    got = []
    for work in (reader, writer):
        for order in ('cancel, then close', 'close, then cancel'):
            session = ws_session()
            ws = await session.ws_connect(URL)
            task = asyncio.create_task(work(ws))
            await asyncio.sleep_ms(50)
            if order == 'cancel, then close':
                task.cancel()
            session.shutdown()  # (what DownloadManager and `async with` do: ClientSession.close() without its await)
            if order == 'close, then cancel':
                task.cancel()
            got.append(await outcome(task))
            await settle()
            result(fds=fd_count())
    result(got=got)
run(main())
"""


def test_a_websocket_task_cancelled_in_the_turn_its_session_closes_is_cancelled(mpy, ws_script):
    srv = ws_script({"/quiet": [3]}, rcvbuf=4096)
    r = mpy.run(WS_TEARDOWN, URL=srv.url("/quiet"))
    assert r.value["got"] == ["cancelled"] * 4, r.value
    assert len({x["fds"] for x in r.results[:-1]}) == 1, r.results  # no fd left by any


def test_a_websocket_close_under_way_when_its_session_closes_ends_without_a_cancel(mpy, ws_script):
    # close() waits for the server's Close (it is 2 s late); the session closes meanwhile: close() returns, raising no
    # CancelledError that nobody asked for. Cancelled itself in that same turn, it is cancelled.
    srv = ws_script({"/late": ["read", 2]})
    r = mpy.run("""
import asyncio
from stepcancel import settle

async def main():
    base = fd_count()
    for cancel in (False, True):
        session = ws_session()
        ws = await session.ws_connect(URL)
        closer = asyncio.create_task(ws.close())
        await asyncio.sleep_ms(100)
        session.shutdown()
        if cancel:
            closer.cancel()
        try:
            got = await closer
        except asyncio.CancelledError:
            got = 'cancelled'
        await settle()
        result(cancel=cancel, got=got, fds=fd_count() - base)
run(main())
""", URL=srv.url("/late"))
    assert r.results == [{"cancel": False, "got": True, "fds": 0}, {"cancel": True, "got": "cancelled", "fds": 0}]


def test_close_session_ends_a_download_waiting_to_retry_at_once(mpy, fault):
    # A 503 with Retry-After: 5 makes the download wait 5 s before its next try; close_session() meanwhile ends it
    # now (False), not 5 s later, so its OUTFILE is free for the next download at once.
    v = mpy.run("""
import asyncio, time
from mpos import DownloadManager
from stepcancel import admission_is_free

DownloadManager.session_idle_ms = 0

async def main():
    task = asyncio.create_task(DownloadManager.download_url(URL + '&key=a', outfile='x.bin'))
    await asyncio.sleep_ms(200)  # (the 503 came: it waits)
    t0 = time.ticks_ms()
    await DownloadManager.close_session()
    got = await task
    ms = time.ticks_diff(time.ticks_ms(), t0)
    left = admission_is_free()
    again = await DownloadManager.download_url(URL + '&key=b&times=0', outfile='x.bin')
    result(got=got, ms=ms, left=left, again=again, sha=sha256_file('x.bin') == SHA)
run(main())
""", URL=fault.url("/bytes/%d?fail=503&retry_after=5" % N), SHA=sha256_of(N)).value
    assert v["got"] is False and v["ms"] < 1000 and v["left"] == [] and v["again"] is True and v["sha"], v

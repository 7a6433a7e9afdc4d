"""Cancellation at every step: a download (or a request, or a websocket) is cancelled after exactly k turns of its
task, for k = 0, 1, 2 ... until it finishes first (tests/mpy/stepcancel.py). After each cancel: the CancelledError
reached the canceller, no fd is left, nothing waits in the event loop, DownloadManager holds no slot, OUTFILE is
untouched, a .part stays only with data in it (docs/decisions.md), nothing was logged, and the next download of the
same URL to the same OUTFILE gets the exact bytes."""
import pytest

from test_reliability import OLD, OLD_SHA
from tools.testservers import payload, sha256_of
from tools.wsservers import frame

# One download, cancelled at every step in turn. KW: download_url's keywords; MODE memory, file or stream; OLD the
# outfile's previous content; START the .part's content before each attempt (a resume), None: none.
SWEEP = """
import asyncio, os
from mpos import DownloadManager
from stepcancel import cancel_at, loop_is_idle, settle, admission_is_free

from mpos.net import partfile

DownloadManager.session_idle_ms = 0
DownloadManager.retry_base_ms = 1
DownloadManager.retry_max_ms = 20  # (a Retry-After too: the waits are cancelled in, not sat through)
OUT = 'out.bin'

def put(path, data):
    if data is None:
        if exists(path):
            os.remove(path)
    else:
        with open(path, 'wb') as f:
            f.write(data)

def sink():
    got = []
    if MODE == 'stream':
        return got, {'chunk_callback': got.append}
    if MODE == 'file':
        return got, {'outfile': OUT}
    return got, {}

def call(url, kw, headers):
    got, sinkkw = sink()
    kw = dict(kw, **sinkkw)
    return got, DownloadManager.download_url(url, headers=headers, **kw)

def resume_headers():
    # (the recipe continues a .part; OUTFILE's old content is no part of this resource)
    n = DownloadManager.get_resume_position(OUT) if MODE == 'file' and exists(OUT + '.part') else 0
    return {'Range': 'bytes=%d-' % n} if n else None

async def main():
    base = fd_count()
    k = 0
    cancelled = 0
    while k < LIMIT:
        put(OUT, OLD if MODE == 'file' else None)
        put(OUT + '.part', START)
        put(OUT + '.part.state', None)
        url = URL.replace('K', str(k))  # a fault with key=K hits each attempt's first request only
        if START:  # the .part of an earlier download of this URL, as it leaves it
            partfile.write_record(OUT + '.part', {'url': partfile.url_key(url), 'v': None, 'size': len(START) + SIZE})
        got, coro = call(url, KW, {'Range': 'bytes=%d-' % len(START)} if START else None)
        how, what = await cancel_at(coro, k)
        if how == 'finished':
            result(k=k, how=how, ok=what is not None and what is not False, cancelled=cancelled)
            return
        await settle()
        part = size(OUT + '.part')
        wrong = []
        if how != 'cancelled':
            wrong.append('%s %r' % (how, what))
        if fd_count() != base:
            wrong.append('%d fds left' % (fd_count() - base))
        wrong += loop_is_idle() + admission_is_free()
        if MODE == 'file' and sha256_file(OUT) != OLD_SHA:
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
        if fd_count() != base:
            wrong.append('%d fds left after the next download' % (fd_count() - base))
        if wrong:
            result(k=k, how=how, wrong=wrong, part=part)
            return
        cancelled += 1
        k += 1
    result(k=k, how='limit', cancelled=cancelled)

run(main())
"""


def sweep(mpy, url, sha, mode="file", kw=None, start=None, limit=400):
    r = mpy.run(SWEEP, URL=url, SHA=sha, MODE=mode, KW=kw or {}, START=start, OLD=OLD, OLD_SHA=OLD_SHA, LIMIT=limit,
                SIZE=N - len(start or b""))
    v = r.value
    assert "wrong" not in v, v
    assert v["how"] == "finished" and v["ok"], v
    assert r.stderr == "", r.stderr  # a cancel is no failure: nothing is logged
    print(v)
    return v


N = 4000  # bytes of each resource: sent in pieces of 1, 2, 3, 5 ... bytes (trickle), a step each


@pytest.mark.parametrize("mode", ["file", "stream", "memory"])
def test_a_download_cancelled_at_any_step(mpy, fault, mode):
    v = sweep(mpy, fault.url("/bytes/%d?trickle=1" % N), sha256_of(N), mode)
    assert v["cancelled"] > 5, v


# What a download may be doing when it is cancelled, besides reading a plain body (file mode; URL's K: the attempt)
CASES = {
    "a resume": ("/bytes/%d?trickle=1" % N, {}),
    "segments": ("/bytes/%d?trickle=1" % N, {"segments": 3}),
    "a redirect chain": ("/chain/3/bytes/%d?trickle=1" % N, {}),
    "a retry after a drop": ("/bytes/%d?trickle=1&drop=1500&key=K" % N, {}),
    "a 503 with Retry-After": ("/bytes/%d?trickle=1&fail=503&retry_after=1&key=K" % N, {}),
    "a chunked body": ("/bytes/%d?trickle=1&chunked=1&chunks=300" % N, {}),
    "a gzip body": ("/bytes/%d?trickle=1&gzip=1&text=1" % N, {}),
}


@pytest.mark.parametrize("case", CASES)
def test_a_download_cancelled_at_any_step_of(mpy, fault, case):
    path, kw = CASES[case]
    text = "text=1" in path
    start = payload(N)[:1500] if case == "a resume" else None
    v = sweep(mpy, fault.url(path), sha256_of(N, text=text), "file", kw, start)
    assert v["cancelled"] > 5, v


# The client itself: ATTEMPT (code) defines `async def attempt(session)` -> what it got, as a sha256 hex; it is
# cancelled at every step in turn on one session, which must then serve the next attempt exactly.
CLIENT = """
import asyncio, aiohttp
from stepcancel import cancel_at, loop_is_idle, settle

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
        wrong += loop_is_idle(session._watchdog_task)
        if session._busy or any(conn.sock is None for conn, _ in session._idle):
            wrong.append('the pool holds %d busy, %d dead' % (len(session._busy), len(session._idle)))
        if fd_count() - base > len(session._idle):
            wrong.append('%d fds left' % (fd_count() - base - len(session._idle)))
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
    r = mpy.run(CLIENT + attempt + "\nrun(main())\n", URL=url, SHA=sha, CA=ca, LIMIT=limit)
    v = r.value
    assert "wrong" not in v, v
    assert v["ok"] and v["fds"] == 0 and v["idle"] == [], v
    assert r.stderr == "", r.stderr
    print(v)
    return v


@pytest.mark.parametrize("how", ATTEMPTS)
def test_a_request_cancelled_at_any_step(mpy, fault, how):
    text = how == "text"
    v = client_sweep(mpy, ATTEMPTS[how], fault.url("/bytes/%d?trickle=1%s" % (N, "&text=1" * text)),
                     sha256_of(N, text=text))
    assert v["cancelled"] > 5, v


def test_a_tls_request_cancelled_at_any_step(mpy, fault_tls, certs):
    v = client_sweep(mpy, ATTEMPTS["read"], fault_tls.url("/bytes/%d?trickle=1" % N), sha256_of(N), certs.ca_der_path)
    assert v["cancelled"] > 5, v


WS_ATTEMPT = """
async def attempt(session):
    # a handshake, a message each way, a close
    async with session.ws_connect(URL) as ws:
        await ws.send_bytes(pattern(600000))
        got = await ws.receive_bytes()
        await ws.close()
    return sha256(got)
"""


def test_a_websocket_cancelled_at_any_step(mpy, ws_script):
    # The server reads the client's message through a small window (its send waits), then answers in pieces
    import hashlib

    answer = frame(2, bytes(3000))
    pieces = [answer[i:i + 300] for i in range(0, len(answer), 300)]
    srv = ws_script({"/talk": ["read"] + [step for piece in pieces for step in (piece, 0.01)]}, rcvbuf=4096)
    v = client_sweep(mpy, WS_ATTEMPT, srv.url("/talk"), hashlib.sha256(bytes(3000)).hexdigest())
    assert v["cancelled"] > 10, v

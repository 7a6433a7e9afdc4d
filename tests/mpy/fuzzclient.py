# The MicroPython side of the fuzzer (tools/fuzz.py): one case per JSON line on stdin, one result() line per case.
# Each case runs on a fresh session: the download, then a good request on the same session, then the session is
# closed and the process's file descriptors counted. What came back goes to the file job["got"] (file mode: to
# OUTFILE itself), for the oracle on the CPython side.
import asyncio
import json
import sys
from time import ticks_diff, ticks_ms

import aiohttp
from mpos import DownloadManager
DownloadError = DownloadManager.DownloadError
from testlib import described, fd_count, result, sha256, traceback_of


class Case:
    ms = None  # how long the download took

    def __init__(self, job):
        self.job = job
        self.notes = []  # broken promises seen along the way: [{"what", "detail"}]

    def note(self, what, detail):
        self.notes.append({"what": what, "detail": detail})


def _keep(job, body):
    with open(job["got"], "wb") as f:
        f.write(body)


# --- DownloadManager ------------------------------------------------------------------------------------------

async def dm_case(case):
    job = case.job
    mode = job["mode"]
    kw = {"timeout": job["read_timeout"], "deadline": job["case_deadline"], "raise_errors": job["raise"]}
    if job["sha256"]:
        kw["sha256"] = job["sha256"]
    if job["chunk"]:
        kw["chunk_size"] = job["chunk"]
    if job["range"]:
        kw["headers"] = {"Range": job["range"]}
    streamed = bytearray()
    progress = []
    if mode == "file":
        kw["outfile"] = job["outfile"]
    elif mode == "stream":
        size = job["chunk"] or 1024

        def take(chunk):
            if not isinstance(chunk, bytes) or not 0 < len(chunk) <= size:
                case.note("chunk_callback", "got %s of %d bytes (chunk_size %d)" % (type(chunk).__name__,
                                                                                   len(chunk), size))
            streamed.extend(chunk)

        kw["chunk_callback"] = take
    if job["progress"]:
        kw["progress_callback"] = progress.append
    try:
        r = await DownloadManager.download_url(job["url"], **kw)
    except DownloadError as e:
        r = e
    if job["progress"]:
        _check_progress(case, progress, r)
    if isinstance(r, DownloadError):
        if not job["raise"]:
            return "foreign", "%s raised without raise_errors" % described(r)
        return "fail", described(r)
    if r is None or r is False:
        if job["raise"]:
            case.note("raise_errors", "returned %r instead of raising" % (r,))
        return "fail", "returned %r" % (r,)
    if mode == "memory":
        if not isinstance(r, bytes):
            case.note("memory mode", "returned %r" % (r,))
            return "fail", "returned %r" % (r,)
        _keep(job, r)
    elif r is not True:
        case.note("%s mode" % mode, "returned %r" % (r,))
    if mode == "stream":
        _keep(job, streamed)
    return "ok", None


def _check_progress(case, seen, r):
    # integers, strictly increasing, 100 once at the very end of a success and never otherwise
    ok = r is not None and r is not False and not isinstance(r, DownloadError)
    for k, p in enumerate(seen):
        if not isinstance(p, int) or not 0 <= p <= 100 or k and p <= seen[k - 1] or p == 100 and (
                not ok or k != len(seen) - 1):
            case.note("progress_callback", "reported %r after %r (%d reports) for %s" % (
                p, seen[max(0, k - 3):k], len(seen), "a success" if ok else "a failure"))
            return
    if ok and (not seen or seen[-1] != 100):
        case.note("progress_callback", "never reported 100 for a success: %r" % seen[-3:])


async def dm_next(job):
    try:
        body = await DownloadManager.download_url(job["good_url"], timeout=job["read_timeout"],
                                                  deadline=job["deadline"], raise_errors=True)
    except Exception as e:
        return described(e)
    return "ok" if sha256(body) == job["good_sha"] else "wrong bytes (%d)" % len(body)


# --- aiohttp --------------------------------------------------------------------------------------------------

def _timeout(job, total):
    return aiohttp.ClientTimeout(total=total, sock_read=job["read_timeout"])


async def aio_case(case, session):
    job = case.job
    headers = {"Range": job["range"]} if job["range"] else None
    try:
        async with session.get(job["url"], headers=headers, timeout=_timeout(job, job["case_deadline"])) as resp:
            with open(job["got"], "wb") as got:
                await _body(case, resp, got)
    except aiohttp.ClientError as e:
        return "fail", described(e)
    return "ok", None


async def _body(case, resp, got):
    # the body's pieces go to the file as they come: a long one and its copy would not both fit in the heap
    mode, size = case.job["mode"], case.job["chunk"]
    if mode == "read":
        got.write(await resp.read())
        return
    if mode == "readinto":
        buf = bytearray(size)
        while True:
            n = await resp.content.readinto(buf)
            if not isinstance(n, int) or not 0 <= n <= size:
                case.note("readinto", "returned %r for a buffer of %d" % (n, size))
                break
            if not n:
                break
            got.write(memoryview(buf)[:n])
    else:
        while True:
            piece = await resp.content.read(size)
            if not isinstance(piece, bytes) or len(piece) > size:
                case.note("read(n)", "returned %s of %d bytes for n=%d" % (type(piece).__name__, len(piece), size))
            if not piece:
                break
            got.write(piece)


async def aio_next(job, session):
    try:
        async with session.get(job["good_url"], timeout=_timeout(job, job["deadline"])) as resp:
            body = await resp.read()
    except Exception as e:
        return described(e)
    return "ok" if sha256(body) == job["good_sha"] else "wrong bytes (%d)" % len(body)


# --- one case -------------------------------------------------------------------------------------------------

async def run_case(case):
    # -> (outcome, error, what the next request on the same session gave); case.ms: the download's own time
    job = case.job
    t0 = ticks_ms()
    if job["api"] == "dm":
        outcome, error = await dm_case(case)
        case.ms = ticks_diff(ticks_ms(), t0)
        nxt = await dm_next(job)
        await DownloadManager.close_session()
        return outcome, error, nxt
    session = aiohttp.ClientSession()
    try:
        outcome, error = await aio_case(case, session)
        case.ms = ticks_diff(ticks_ms(), t0)
        nxt = await aio_next(job, session)
    finally:
        await session.close()
    return outcome, error, nxt


async def main():
    while True:
        line = sys.stdin.readline()
        if not line:
            return
        case = Case(json.loads(line))
        base = fd_count()
        t0 = ticks_ms()
        trace = None
        try:
            outcome, error, nxt = await asyncio.wait_for(run_case(case), 2 * case.job["deadline"] + 2)
        except asyncio.TimeoutError:
            outcome, error, nxt = "hang", "not done after %d s" % (2 * case.job["deadline"] + 2), None
            await DownloadManager.close_session()
        except BaseException as e:  # the foreign exceptions the fuzzer looks for (CancelledError too)
            outcome, error, nxt, trace = "foreign", described(e), None, traceback_of(e)
            await DownloadManager.close_session()
        if case.ms is None:  # it never ended
            case.ms = ticks_diff(ticks_ms(), t0)
        await asyncio.sleep_ms(1)
        result(i=case.job["i"], outcome=outcome, error=error, trace=trace, next=nxt, ms=case.ms,
               fds=fd_count() - base, notes=case.notes)


asyncio.run(main())

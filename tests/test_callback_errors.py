"""An exception raised by chunk_callback, progress_callback or speed_callback is the caller's (issue 17): the
download stops at once, is never retried, cleans up as any failure does (file mode: OUTFILE untouched, the .part
kept) and the very exception object reaches the caller, with or without raise_errors, also an OSError whose errno
looks like a dropped connection (MicroPythonOS's OS updater writes flash in its chunk callback). A chunk counts as
delivered only once its callback returned."""
import pytest

from test_reliability import OLD, OLD_SHA, PRE
from tools.testservers import sha256_of

CALLBACKS = PRE + """
import errno

class Cancelled(Exception):  # what an app raises to stop a download
    pass

async def one(number, url, where, style, error, raise_errors):
    exc = Cancelled('stopped by the app') if error == 'Cancelled' else OSError(errno.ECONNRESET)
    chunks = [0]
    def due(arg):
        if where == 'chunk':
            chunks[0] += 1
            return chunks[0] == 30  # 30 KB delivered: a retry would have somewhere to resume from
        return where == 'speed' or arg >= 30  # speed: its first report; progress: at 30 %
    def plain(arg):
        if due(arg):
            raise exc
    async def coroutine(arg):
        await asyncio.sleep_ms(0)
        if due(arg):
            raise exc
    kw = {where + '_callback': plain if style == 'sync' else coroutine, 'raise_errors': raise_errors}
    out = 'out%d.bin' % number
    if where != 'chunk':
        with open(out, 'wb') as f:
            f.write(OLD)
        kw['outfile'] = out
    t0 = time.ticks_ms()
    try:
        r = await DownloadManager.download_url(url, **kw)
        got = ['returned', 'bytes' if isinstance(r, bytes) else r]
    except BaseException as e:
        got = ['raised', type(e).__name__, e is exc]
    return {'got': got, 'ms': since(t0), 'old': sha256_file(out) == OLD_SHA if where != 'chunk' else None,
            'part': size(out + '.part'), 'expected': type(exc).__name__}

async def main():
    DownloadManager.max_connections = len(CASES)
    outcomes = await asyncio.gather(*[one(i, *case) for i, case in enumerate(CASES)])
    await DownloadManager.close_session()
    result(outcomes=outcomes)
run(main())
"""

def cases(fault, where):
    """The callback, sync and async, raising an app's own exception or a network-looking OSError, with and without
    raise_errors: (url, where, style, error, raise_errors), each with a URL of its own (case=N) to count its
    requests by."""
    out = []
    for style in ("sync", "async"):
        for error in ("Cancelled", "OSError"):
            for raise_errors in (False, True):
                # speed is reported once a second: a body that takes two
                query = "rate=150000" if where == "speed" else "x=1"
                url = fault.url("/bytes/300000?case=%d&%s" % (len(out), query))
                out.append((url, where, style, error, raise_errors))
    return out


@pytest.mark.parametrize("where", ["chunk", "progress", "speed"])
def test_a_callbacks_exception_stops_the_download_at_once_and_reaches_the_caller(mpy, fault, where):
    todo = cases(fault, where)
    v = mpy.run(CALLBACKS, CASES=todo, OLD=OLD, OLD_SHA=OLD_SHA, heapsize="4m").value
    wrong = []
    for number, (case, got) in enumerate(zip(todo, v["outcomes"])):
        requests = sum(1 for r in fault.log if r.query.get("case") == str(number))
        checks = {
            "the same exception object reached the caller": got["got"] == ["raised", got["expected"], True],
            "no retry: one request": requests == 1,
            "at once": got["ms"] < (1800 if where == "speed" else 1000),
            "outfile untouched": got["old"] is not False,
            "the .part kept": where == "chunk" or got["part"] > 0,
        }
        failing = [name for name, held in checks.items() if not held]
        if failing:
            wrong.append((case[2:], failing, got, requests))
    assert not wrong, "\n".join(map(repr, wrong))


def test_a_chunk_counts_as_delivered_only_after_its_callback_returned(mpy, fault):
    v = mpy.run(PRE + """
seen = []
got = [0]
h = new_sha()
def take(chunk):
    # what downloads() says was delivered, while this chunk is still in the callback's hands
    seen.append(DownloadManager.downloads()[0]['done'] - got[0])
    got[0] += len(chunk)
    h.update(chunk)
async def main():
    r = await DownloadManager.download_url(URL, chunk_callback=take)
    result(r=r, sha=hexdigest(h), ahead=sorted(set(seen)))
run(main())
""", URL=fault.url("/bytes/30000")).value
    assert v["r"] is True and v["sha"] == sha256_of(30000), v
    assert v["ahead"] == [0], v  # never counted the chunk the callback had not yet returned from

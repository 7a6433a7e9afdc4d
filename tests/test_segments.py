"""Segmented downloads (download_url(..., outfile=..., segments=N)), run on MicroPython against the fault server:
exact files for any N and size, every fallback to one plain stream, resume after cancellation and after the
process is killed (proven with the server's byte accounting), failing and recovering segments, callbacks, the
connection cap, programmer errors, no leaks, and segments=1 being the plain download.
"""
import hashlib
import json
import os
import signal
import subprocess
import time

import pytest

from tools.mpy import LIB, micropypath, micropython
from tools.testservers import ScriptServer, payload, sha256_of

BASE = """
import asyncio, os, sys, time, json
import aiohttp
from mpos import DownloadManager, TaskManager

SENT = record_ranges()  # [Range, If-Range] of every request the DownloadManager sends

def state(out):
    try:
        with open(out + '.part.state') as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None
"""

# BASE, with every segmented download kept, to check that none has a segment worker still running once the call
# returned, and what a download may leave behind (BASE alone for the tests that check segments.py is never loaded)
PRE = BASE + """
from mpos.net import segments

MASTERS = []
_init = segments.Segmented.__init__
def _keep(self, *args):
    _init(self, *args)
    MASTERS.append(self)
segments.Segmented.__init__ = _keep
def running_segments():
    return sum(getattr(m, 'workers_left', 0) for m in MASTERS)

def leaks(base):
    # what a download may leave behind: fds, tasks, slots, queue entries, listed downloads, the session
    return {'fds': fd_count() - base, 'tasks': len(TaskManager.task_list), 'active': slots_taken(),
            'queue': len(slot_queue()), 'listed': len(DownloadManager.downloads()),
            'session': DownloadManager.is_session_active(), 'segments': running_segments()}
"""

NO_LEAKS = {"fds": 0, "tasks": 0, "active": 0, "queue": 0, "listed": 0, "session": False, "segments": 0}

# One segmented download of URL into OUT with KW; reports the outcome, the files and the requests.
ONE = PRE + """
async def main():
    DownloadManager.max_connections = MAXC
    for name, value in TUNE.items():
        setattr(DownloadManager, name, value)
    if MIN is not None:
        from mpos.net import segments
        segments.min_segment = MIN
    base = fd_count()
    err = None
    try:
        r = await DownloadManager.download_url(URL, outfile=OUT, **KW)
    except Exception as e:
        r, err = 'raised', [type(e).__name__, getattr(e, 'status', None), str(e)]
    await DownloadManager.close_session()
    result(r=r, err=err, sha=sha256_file(OUT), part=exists(OUT + '.part'), state=state(OUT),
           sent=SENT, leaks=leaks(base))
run(main())
"""


def one(mpy, url, out="out.bin", maxc=8, min_segment=None, tune=None, **kw):
    return mpy.run(ONE, URL=url, OUT=out, MAXC=maxc, MIN=min_segment, TUNE=tune or {}, KW=kw).value


def done_cleanly(v, n, seed=0, text=False):
    assert v["err"] is None and v["r"] is True, v
    assert v["sha"] == sha256_of(n, seed, text), v
    assert not v["part"] and v["state"] is None, v  # .part renamed, state file gone
    assert v["leaks"] == NO_LEAKS, v


def ranges(sent):
    """The byte ranges the segments asked for (after the bytes=0-0 probe), sorted."""
    assert sent[0][0] == "bytes=0-0", sent
    out = []
    for rng, _ in sent[1:]:
        a, _, b = rng[6:].partition("-")
        out.append((int(a), int(b)))
    return sorted(out)


def missing(st):
    return sum(b - a + 1 for a, b in st["todo"])


# --- exact files ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 4, 8])
@pytest.mark.parametrize("size", [1 << 20, 1000003])
def test_n_segments_give_the_exact_file(mpy, fault, n, size):
    v = one(mpy, fault.url("/bytes/%d" % size), segments=n)
    done_cleanly(v, size)
    # the probe, then n ranges that tile the file exactly once, evenly, each with If-Range from the first request
    rs = ranges(v["sent"])
    assert len(rs) == n, rs
    assert rs[0][0] == 0 and rs[-1][1] == size - 1 and all(b + 1 == c for (_, b), (c, _) in zip(rs, rs[1:])), rs
    assert max(b - a for a, b in rs) - min(b - a for a, b in rs) <= 1, rs
    assert all(ir == '"%d-0"' % size for _, ir in v["sent"][1:]), v["sent"]
    assert fault.requests == n + 1 and fault.served == size + 1  # every byte once, plus the probe's
    assert fault.connections <= n  # the probe's connection serves a segment


@pytest.mark.parametrize("size,n", [(3, 8), (8, 8), (9, 8), (1, 2)])
def test_files_smaller_than_n_bytes(mpy, fault, size, n):
    # min_segment=1 lets even 1-byte pieces be segments: at most one segment per byte
    v = one(mpy, fault.url("/bytes/%d" % size), min_segment=1, segments=n)
    done_cleanly(v, size)
    if size > 1:
        assert len(ranges(v["sent"])) == min(size, n) and fault.served == size + 1, v
    else:  # a single piece is not split: one plain stream after the probe
        assert v["sent"] == [["bytes=0-0", None], [None, None]], v


def test_small_file_is_one_plain_stream_by_default(mpy, fault):
    # below 2 x min_segment (16 KB) a second connection is not worth its request (or TLS handshake)
    v = one(mpy, fault.url("/bytes/20000"), segments=4)
    done_cleanly(v, 20000)
    assert v["sent"] == [["bytes=0-0", None], [None, None]], v


# --- fallbacks --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("query,size,text", [
    ("norange=1", 300000, False),  # 200 to the ranged probe
    ("chunked=1&norange=1", 300000, False),  # no size at all
    ("gzip=1&text=1", 300000, True),  # ranges of gzip bytes are no part of the file
])
def test_odd_servers_fall_back_to_one_plain_stream(mpy, fault, query, size, text):
    v = one(mpy, fault.url("/bytes/%d?%s" % (size, query)), segments=4)
    done_cleanly(v, size, text=text)
    assert v["sent"] == [["bytes=0-0", None], [None, None]], v  # the probe, then one plain GET
    assert fault.requests == 2


def test_a_probe_answered_with_more_than_its_byte_falls_back_to_one_plain_stream(mpy):
    # a server that answers bytes=0-0 with the whole resource as a 206: the probe does not read it into the heap,
    # and no segment goes to a server that ignores where ranges end
    head = (b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-99999/100000\r\nContent-Length: 100000\r\n"
            b"ETag: \"e\"\r\n\r\n")
    with ScriptServer({"/r": [head + payload(100000)]}) as srv:
        v = one(mpy, srv.url("/r"), segments=4, min_segment=1000)
    done_cleanly(v, 100000)
    assert v["sent"] == [["bytes=0-0", None], [None, None]], v


def test_empty_resource_falls_back(mpy, fault):
    # bytes=0-0 of 0 bytes is a 416: no size to split; the plain stream makes the empty file
    v = one(mpy, fault.url("/bytes/0"), segments=4)
    done_cleanly(v, 0)
    assert v["sent"] == [["bytes=0-0", None], [None, None]], v


def test_chunked_206_parts_still_segment(mpy, fault):
    # chunked framing but Range honoured: the probe's Content-Range gives the size, so segments work
    v = one(mpy, fault.url("/bytes/300000?chunked=1&chunks=777,4096"), segments=3)
    done_cleanly(v, 300000)
    assert len(ranges(v["sent"])) == 3 and fault.served == 300001


def test_callers_range_is_the_plain_engines_job(mpy, fault):
    v = one(mpy, fault.url("/bytes/300000"), segments=4, headers={"Range": "bytes=1000-"})
    assert v["r"] is True and v["sent"] == [["bytes=1000-", None]], v
    assert v["sha"] == hashlib.sha256(payload(300000)[1000:]).hexdigest()


# The resume recipe with segments=: a .part that a plain download left (here one cut short by a stall and a cancel)
# is continued only as far as its record vouches for it, as without segments= (docs/decisions.md)
RECIPE = BASE + """
async def main():
    try:
        await TaskManager.wait_for(DownloadManager.download_url(STALL, outfile=OUT), 0.5)
    except asyncio.TimeoutError:
        pass
    pos = DownloadManager.get_resume_position(OUT)
    r = await DownloadManager.download_url(GOOD, outfile=OUT, segments=2, headers={'Range': 'bytes=%d-' % pos})
    await DownloadManager.close_session()
    result(pos=pos, r=r, sha=sha256_file(OUT), sent=SENT)
run(main())
"""
RECIPES = {  # -> (the URL cut short (its first answer stalls), the URL resumed, the seed of what it serves then)
    "unchanged": ("/bytes/100000?stall=30000&stall_s=3&key=u", None, 0),
    "changed": ("/bytes/100000?stall=30000&stall_s=3&key=c&newer=2", None, 1),
    "another URL": ("/bytes/100000?stall=30000&stall_s=3", "/bytes/100000?seed=2", 2),
}


@pytest.mark.parametrize("case", sorted(RECIPES))
def test_the_resume_recipe_with_segments_checks_what_the_part_is_a_part_of(mpy, fault, case):
    stall, good, seed = RECIPES[case]
    v = mpy.run(RECIPE, STALL=fault.url(stall), GOOD=fault.url(good or stall), OUT="o.bin").value
    assert v["pos"] == 30000 and v["r"] is True and v["sha"] == sha256_of(100000, seed), v
    if case != "another URL":
        assert v["sent"][1] == ["bytes=30000-", '"100000-0"'], v  # If-Range: the version the .part holds


@pytest.mark.parametrize("if_range", ["honoured", "ignored"])
def test_resource_changing_under_the_segments_restarts_plain(mpy, fault, if_range):
    # The probe and the first segment see seed 0; the other segments (and the plain GET after) get another
    # resource (seed 5, another ETag) at the same size. If-Range makes the server answer them 200; a server
    # ignoring If-Range (here: the header stripped) answers 206 with the new bytes, caught by their ETag. Either
    # way the segments give up for one plain stream; a mix of both versions would match neither hash.
    v = mpy.run(PRE + """
_get2 = aiohttp.ClientSession.get
def switch(self, url, **kw):
    h = dict(kw.get('headers') or {})
    if not (h.get('Range') or '').startswith('bytes=0-'):
        url = URL2
        if STRIP:
            h.pop('If-Range', None)
            kw['headers'] = h
    return _get2(self, url, **kw)
aiohttp.ClientSession.get = switch
async def main():
    DownloadManager.max_connections = 4
    r = await DownloadManager.download_url(URL, outfile=OUT, segments=4)
    result(r=r, sha=sha256_file(OUT), sent=SENT, state=state(OUT), part=exists(OUT + '.part'))
run(main())
""", URL=fault.url("/bytes/400000"), URL2=fault.url("/bytes/400000?seed=5"), OUT="out.bin",
        STRIP=if_range == "ignored").value
    assert v["r"] is True and v["sha"] == sha256_of(400000, seed=5), v
    assert v["sent"][-1] == [None, None] and len(v["sent"]) >= 3, v  # segments tried, then one plain GET
    assert v["state"] is None and not v["part"]


def test_the_plain_stream_after_a_probe_records_the_version_it_got_not_the_probes(mpy, fault):
    # The probe sees version A ("20000-0"); 20000 bytes are too small to split, so one plain GET follows, which gets
    # version B (seed 5), cut after 5000 bytes. The record beside the .part must name B. It named the probe's A: a
    # resume recipe against a server still serving A (two backends behind one name) then sent If-Range A, got a 206
    # of A's bytes and appended them to B's 5000, a file of neither versions, returned as success.
    v = mpy.run(PRE + """
_get2 = aiohttp.ClientSession.get
def switch(self, url, **kw):
    if (kw.get('headers') or {}).get('Range') != 'bytes=0-0':
        url = URL2
    return _get2(self, url, **kw)
async def main():
    DownloadManager.max_connections = 4
    DownloadManager.max_reconnects = 0
    aiohttp.ClientSession.get = switch
    r1 = await DownloadManager.download_url(URL, outfile=OUT, segments=4)
    st = state(OUT)
    aiohttp.ClientSession.get = _get2
    pos = DownloadManager.get_resume_position(OUT)
    r2 = await DownloadManager.download_url(URL, outfile=OUT, headers={'Range': 'bytes=%d-' % pos})
    result(r1=r1, st=st, pos=pos, r2=r2, sha=sha256_file(OUT), sent=SENT)
run(main())
""", URL=fault.url("/bytes/20000"), URL2=fault.url("/bytes/20000?seed=5&truncate=5000"), OUT="out.bin").value
    assert v["r1"] is False and v["pos"] == 5000, v
    assert v["st"]["v"] == '"20000-5"' and v["st"]["size"] == 20000, v  # B's, as its bytes in the .part
    assert v["sent"][-1] == ["bytes=5000-", '"20000-5"'], v
    assert v["r2"] is True and v["sha"] == sha256_of(20000), v  # A whole: its server said B is not what it has


def test_a_failed_segment_with_another_versions_bytes_leaves_them_out_of_the_record(mpy, fault):
    # The probe and the first segment see version A; the second segment's server ignores If-Range (stripped here)
    # and sends 20000 bytes of B (seed 5, same size) in its 206, then closes. max_reconnects=0: the download fails
    # there. The record written as it stopped vouched for those bytes under A's validator: the resume against A
    # kept them, and returned a file of both versions as success.
    v = mpy.run(PRE + """
_get2 = aiohttp.ClientSession.get
def switch(self, url, **kw):
    h = dict(kw.get('headers') or {})
    if not h.get('Range', 'bytes=0-').startswith('bytes=0-'):
        url = URL2
        h.pop('If-Range', None)
        kw['headers'] = h
    return _get2(self, url, **kw)
async def main():
    DownloadManager.max_connections = 4
    DownloadManager.max_reconnects = 0
    aiohttp.ClientSession.get = switch
    r1 = await DownloadManager.download_url(URL, outfile=OUT, segments=2)
    st = state(OUT)
    with open(OUT + '.part', 'rb') as f:
        part = f.read()
    aiohttp.ClientSession.get = _get2
    r2 = await DownloadManager.download_url(URL, outfile=OUT, segments=2)
    result(r1=r1, st=st, part=sha256(part), r2=r2, sha=sha256_file(OUT))
run(main())
""", URL=fault.url("/bytes/400000"), URL2=fault.url("/bytes/400000?seed=5&truncate=20000"), OUT="out.bin").value
    assert v["r1"] is False and v["st"]["v"] == '"400000-0"', v
    assert [200000, 399999] in v["st"]["todo"], v  # none of B's bytes at 200000.. is vouched for
    assert v["r2"] is True and v["sha"] == sha256_of(400000), v


# --- state files ------------------------------------------------------------------------------------------------


def url_key(url):
    return hashlib.sha256(url.encode()).hexdigest()[:16]


STATEFUL = PRE + """
async def main():
    DownloadManager.max_connections = 4
    with open(OUT + '.part', 'wb') as f:
        f.write(PART)
    with open(OUT + '.part.state', 'w') as f:
        f.write(STATE)
    r = await DownloadManager.download_url(URL, outfile=OUT, segments=4)
    result(r=r, sha=sha256_file(OUT), sent=SENT, state=state(OUT), part=exists(OUT + '.part'))
run(main())
"""


def test_valid_state_fetches_only_what_is_missing(mpy, fault):
    n = 300000
    url = fault.url("/bytes/%d" % n)
    good = payload(n)
    todo = [[1000, 99999], [200000, 299999]]
    part = bytearray(good)
    for a, b in todo:
        part[a:b + 1] = b"\0" * (b - a + 1)
    st = json.dumps({"url": url_key(url), "size": n, "v": '"%d-0"' % n, "todo": todo})
    v = mpy.run(STATEFUL, URL=url, OUT="out.bin", PART=bytes(part[:250000]), STATE=st).value
    assert v["r"] is True and v["sha"] == sha256_of(n), v
    assert fault.served == missing({"todo": todo}) + 1, v  # the missing bytes and the probe's
    assert v["state"] is None and not v["part"]


BAD_STATES = {
    "corrupt": lambda url, n: '{"url": "%s", "size": %d, "todo": [[1' % (url_key(url), n),
    "other-url": lambda url, n: json.dumps({"url": url_key(url + "x"), "size": n, "v": '"%d-0"' % n,
                                            "todo": [[0, 99]]}),
    "other-size": lambda url, n: json.dumps({"url": url_key(url), "size": n + 1, "v": '"%d-0"' % n,
                                             "todo": [[0, 99]]}),
    "other-etag": lambda url, n: json.dumps({"url": url_key(url), "size": n, "v": '"old"', "todo": [[0, 99]]}),
    "overlapping": lambda url, n: json.dumps({"url": url_key(url), "size": n, "v": '"%d-0"' % n,
                                              "todo": [[0, 99], [50, 150]]}),
    "beyond-part": lambda url, n: json.dumps({"url": url_key(url), "size": n, "v": '"%d-0"' % n,
                                              "todo": [[0, 99]]}),  # claims bytes past the short .part
}


@pytest.mark.parametrize("kind", sorted(BAD_STATES))
def test_state_that_does_not_match_is_never_trusted(mpy, fault, kind):
    # The .part holds junk where the record claims the bytes are done: trusting it would give a wrong file.
    n = 300000
    url = fault.url("/bytes/%d" % n)
    junk = b"\xAA" * (n if kind != "beyond-part" else n // 2)
    v = mpy.run(STATEFUL, URL=url, OUT="out.bin", PART=junk, STATE=BAD_STATES[kind](url, n)).value
    assert v["r"] is True and v["sha"] == sha256_of(n), v
    assert fault.served == n + 1, v  # everything fetched afresh
    assert v["state"] is None and not v["part"]


def test_changed_etag_between_runs_restarts_cleanly(mpy, fault):
    # Run 1 is cancelled half-way (its .part and state stay); then the resource behind the same URL changes
    # (seed 7: other bytes, another ETag). Run 2 must not reuse a byte of the old partial.
    n = 800000
    code = PRE + """
async def main():
    DownloadManager.max_connections = 4
    from mpos.net import segments
    segments.save_ms = 50
    try:
        r = await TaskManager.wait_for(DownloadManager.download_url(URL, outfile=OUT, segments=4), CANCEL)
    except asyncio.TimeoutError:
        r = 'cancelled'
    await DownloadManager.close_session()
    result(r=r, sha=sha256_file(OUT), state=state(OUT), part=size(OUT + '.part'))
run(main())
"""
    v1 = mpy.run(code, URL=fault.url("/bytes/%d?rate=200000" % n), OUT="out.bin", CANCEL=0.5).value
    assert v1["r"] == "cancelled" and v1["state"] and 0 < missing(v1["state"]) < n, v1
    fault.reset()
    fault.force = {"seed": "7"}
    v2 = mpy.run(code, URL=fault.url("/bytes/%d?rate=200000" % n), OUT="out.bin", CANCEL=30).value
    assert v2["r"] is True and v2["sha"] == sha256_of(n, seed=7), v2
    assert fault.served == n + 1, fault.served  # nothing of the old partial was kept
    assert v2["state"] is None and v2["part"] == -1


# --- resume -----------------------------------------------------------------------------------------------------


def test_resume_after_cancellation_in_two_calls(mpy, fault):
    # Cancelled after 0.6 s at 200 kB/s per connection (4 connections): outfile keeps its old content, the .part
    # and its state stay, nothing leaks. The second call asks the server for exactly the missing bytes.
    n = 600000
    v1 = mpy.run(PRE + """
OLD = b'the previous outfile'
async def main():
    DownloadManager.max_connections = 4
    with open(OUT, 'wb') as f:
        f.write(OLD)
    base = fd_count()
    t0 = time.ticks_ms()
    try:
        await TaskManager.wait_for(DownloadManager.download_url(URL, outfile=OUT, segments=4), 0.6)
        r = 'finished'
    except asyncio.TimeoutError:
        r = 'cancelled'
    ms = time.ticks_diff(time.ticks_ms(), t0)
    inflight = {'listed': DownloadManager.downloads(), 'active': slots_taken(),
                'queue': len(slot_queue()), 'segments': running_segments(), 'masters': len(MASTERS)}
    with open(OUT, 'rb') as f:
        old_kept = f.read() == OLD
    pos = DownloadManager.get_resume_position(OUT)
    await DownloadManager.close_session()
    result(r=r, ms=ms, st=state(OUT), old_kept=old_kept, pos=pos, inflight=inflight, leaks=leaks(base),
           part=size(OUT + '.part'))
run(main())
""", URL=fault.url("/bytes/%d?rate=200000" % n), OUT="out.bin").value
    assert v1["r"] == "cancelled" and v1["ms"] < 900, v1
    assert v1["old_kept"] and v1["part"] > 0, v1
    # right when the call returned (the TaskManager's idle-session timer is checked after close_session below)
    assert v1["inflight"] == {"listed": [], "active": 0, "queue": 0, "segments": 0, "masters": 1}, v1
    assert v1["leaks"] == NO_LEAKS, v1
    assert v1["pos"] == 0, v1  # the spec's resume recipe must not append to a partial with holes
    st = v1["st"]
    assert st and st["size"] == n and st["v"] == '"%d-0"' % n, st
    left = missing(st)
    assert 0 < left < n - 4 * 50000, st  # each connection got well over 50 KB in 0.6 s
    fault.reset()
    v2 = one(mpy, fault.url("/bytes/%d?rate=200000" % n), maxc=4, segments=4)
    done_cleanly(v2, n)
    assert fault.served == left + 1, (fault.served, left)  # exactly what was missing, plus the probe's byte
    for rng, if_range in v2["sent"][1:]:  # every range request is one the record listed (or a piece of one)
        a, _, b = rng[6:].partition("-")
        assert any(x <= int(a) <= int(b) <= y for x, y in st["todo"]), (rng, st)
        assert if_range == '"%d-0"' % n


def test_a_cancel_once_every_range_is_in_leaves_a_part_the_resume_finishes(mpy, fault):
    # Cancelled after the last segment ended, before the download woke to finish: the record saved as it stopped
    # lists no range missing. The resume then had no segment to run and took -1 extra slots, and its slot count
    # never got back to 0: the interpreter spun for ever. It finishes, fetching only the probe's byte.
    n = 300000
    v = mpy.run(PRE + """
async def main():
    DownloadManager.max_connections = 4
    base = fd_count()
    t = asyncio.create_task(DownloadManager.download_url(URL, outfile=OUT, segments=2))
    while not (MASTERS and getattr(MASTERS[0], 'workers_left', 1) == 0):
        await asyncio.sleep_ms(0)
    t.cancel()
    try:
        r1 = await t
    except asyncio.CancelledError:
        r1 = 'cancelled'
    st = state(OUT)
    r2 = await DownloadManager.download_url(URL, outfile=OUT, segments=2)
    await DownloadManager.close_session()
    result(r1=r1, st=st, r2=r2, sha=sha256_file(OUT), leaks=leaks(base), part=exists(OUT + '.part'))
run(main())
""", timeout=20, URL=fault.url("/bytes/%d" % n), OUT="out.bin").value
    assert v["r1"] == "cancelled" and v["st"]["todo"] == [], v
    assert v["r2"] is True and v["sha"] == sha256_of(n) and not v["part"], v
    assert v["leaks"] == NO_LEAKS, v
    assert fault.served == n + 2, fault.served  # the file once, and each call's probe byte


KILLME = """
from mpos import DownloadManager
from mpos.net import segments
segments.save_ms = SAVE_MS
DownloadManager.max_connections = 4
DownloadManager.download_url(URL, outfile=OUT, segments=4)
"""


def kill_when(tmp_path, url, out, save_ms, ready):
    # A MicroPython process downloads url to out in 4 segments, recording its progress every save_ms, and is killed
    # (SIGKILL: no cleanup at all, as in a reboot) once ready() says so
    script = tmp_path / "killme.py"
    script.write_text("URL = %r\nOUT = %r\nSAVE_MS = %d\n" % (url, out, save_ms) + KILLME)
    env = dict(os.environ, MICROPYPATH=micropypath(LIB))
    proc = subprocess.Popen([micropython(), str(script)], cwd=str(tmp_path), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        t0 = time.time()
        while time.time() - t0 < 20 and not ready():
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_resume_after_the_process_is_killed(mpy, fault, tmp_path):
    # Killed once its state file shows progress; a second process finishes the file and asks the server for exactly
    # what the record says is missing.
    n = 1000000
    url = fault.url("/bytes/%d?rate=200000" % n)
    out = str(tmp_path / "killed.bin")

    def progressed():
        try:
            with open(out + ".part.state") as f:
                return missing(json.load(f)) < n * 0.7
        except (OSError, ValueError):
            return False

    kill_when(tmp_path, url, out, 50, progressed)
    with open(out + ".part.state") as f:
        st = json.load(f)  # the record as the killed process left it
    left = missing(st)
    assert 0 < left < n * 0.7, st
    assert not os.path.exists(out)
    fault.reset()
    v = one(mpy, url, out=out, maxc=4, segments=4)
    done_cleanly(v, n)
    assert fault.served == left + 1, (fault.served, left)
    assert fault.served < n


def test_a_kill_before_the_first_record_save_leaves_no_partial_for_the_resume_recipe(mpy, fault, tmp_path):
    # Killed with bytes in the .part (each segment writes at its own offset: it has holes) before any save of its
    # progress: the record says all of it is missing, so get_resume_position() says 0 and the spec's resume recipe
    # gets the exact file, not one continued after the holes (which it got while the first record came with the
    # first save: a MemoryError, a kill or a power cut before it left the .part unrecorded)
    n = 1000000
    url = fault.url("/bytes/%d?rate=200000" % n)
    out = str(tmp_path / "killed.bin")
    kill_when(tmp_path, url, out, 10 ** 9, lambda: os.path.exists(out + ".part") and os.path.getsize(out + ".part"))
    assert os.path.getsize(out + ".part") > 0 and not os.path.exists(out)
    v = mpy.run("""
from mpos import DownloadManager
n = DownloadManager.get_resume_position(OUT)
ok = DownloadManager.download_url(URL, outfile=OUT, headers={'Range': 'bytes=%d-' % n} if n else None)
result(n=n, ok=ok, sha=sha256_file(OUT))
""", URL=url, OUT=out).value
    assert v == {"n": 0, "ok": True, "sha": sha256_of(n)}, v


# --- failing and recovering segments ----------------------------------------------------------------------------


def test_dropped_segment_connections_resume_inside_their_range(mpy, fault):
    # skip=1: the probe is served normally; the two segments' first requests are reset after 30000 bytes each
    n = 400000
    v = one(mpy, fault.url("/bytes/%d?key=d&skip=1&times=2&drop=30000" % n), segments=2)
    done_cleanly(v, n)
    assert fault.requests == 5, v["sent"]  # probe, 2 segments, 2 resumes
    firsts = [(0, n // 2 - 1), (n // 2, n - 1)]
    resumed = ranges(v["sent"])
    assert [r for r in resumed if r in firsts] == firsts, resumed
    # the two faulty requests may hit either segment (or one twice): each resume continues inside its segment,
    # 30000 bytes (less what the reset swallowed) after where that segment's previous request started, to its end
    starts = {y: x for x, y in firsts}
    for a, b in sorted(r for r in resumed if r not in firsts):
        assert b in starts and starts[b] < a <= starts[b] + 30000, resumed
        starts[b] = a
    assert all(ir == '"%d-0"' % n for _, ir in v["sent"][1:]), v["sent"]


def test_the_segments_share_one_downloads_max_reconnects(mpy, fault):
    # Every request after the probe is reset after 50000 bytes: each segment gains on each try, so only
    # max_reconnects ends it. It is the download's, not each segment's: 4 retries in all (the fifth failure ends it,
    # maybe before the fourth retry went), then the download fails and keeps what came for a resume (before, each
    # segment had 4 retries, and each needed 3).
    n = 400000
    v = one(mpy, fault.url("/bytes/%d?key=d&skip=1&times=99&drop=50000" % n), segments=2,
            tune={"max_reconnects": 4, "retry_base_ms": 5, "retry_max_ms": 20})
    assert v["r"] is False and v["part"] and v["leaks"] == NO_LEAKS, v
    assert fault.requests <= 1 + 2 + 4, v["sent"]  # the probe, the two segments, 4 retries at most


FAIL_THEN_RESUME = PRE + """
OLD = b'the previous outfile'
async def main():
    DownloadManager.max_connections = 4
    if FIRST:
        with open(OUT, 'wb') as f:
            f.write(OLD)
    base = fd_count()
    t0 = time.ticks_ms()
    err = None
    try:
        r = await DownloadManager.download_url(URL, outfile=OUT, segments=2, **KW)
    except Exception as e:
        r, err = 'raised', [type(e).__name__, getattr(e, 'reason', None), getattr(e, 'status', None)]
    ms = time.ticks_diff(time.ticks_ms(), t0)
    with open(OUT, 'rb') as f:
        content = f.read()
    await DownloadManager.close_session()
    result(r=r, err=err, ms=ms, old_kept=content == OLD, sha=sha256_file(OUT), st=state(OUT),
           part=size(OUT + '.part'), leaks=leaks(base))
run(main())
"""


@pytest.mark.parametrize("status", [503, 429])
def test_a_segment_refused_by_a_connection_limit_leaves_its_range_to_the_others(mpy, fault, status):
    # nginx's limit_conn answers a client's third connection with 503 (or 429): segments=4 against it failed where
    # one stream worked. skip=2: the probe and one segment are served; the other segment gets the status three times
    # (the engine's budget, with backoff) while the first still streams. Its range goes to the segment still running,
    # and the download completes.
    n = 400000
    v = one(mpy, fault.url("/bytes/%d?rate=400000&key=c%d&skip=2&times=3&fail=%d" % (n, status, status)), segments=2,
            tune={"retry_base_ms": 5, "retry_max_ms": 20})
    done_cleanly(v, n)
    assert fault.requests == 6, v["sent"]  # the probe, 2 segments, 2 retries of the refused one, its range again
    assert ranges(v["sent"])[-1] == (200000, 399999), v["sent"]  # taken whole by the other connection


@pytest.mark.parametrize("raise_errors", [False, True])
def test_segment_failing_for_good_fails_the_download_then_resumes(mpy, fault, raise_errors):
    # skip=2: the probe and one segment are served; the other segment gets 404 three times (the engine's budget,
    # with backoff) while the healthy one is still streaming at 50 kB/s. The download fails, outfile keeps its old
    # content, .part + state keep what arrived; the next call (the key's faults are used up) fetches the rest.
    n = 400000
    url = fault.url("/bytes/%d?rate=50000&key=f&skip=2&times=3&fail=404" % n)
    kw = {"raise_errors": True} if raise_errors else {}
    v = mpy.run(FAIL_THEN_RESUME, URL=url, OUT="out.bin", FIRST=True, KW=kw).value
    if raise_errors:
        assert v["r"] == "raised" and v["err"] == ["HTTPError", "http", 404], v
    else:
        assert v["r"] is False and v["err"] is None, v
    assert v["old_kept"] and v["part"] > 0 and v["ms"] < 3000, v
    assert v["leaks"] == NO_LEAKS, v
    assert fault.requests <= 5, fault.requests  # probe, 2 segments, at most 2 retries of the failing one
    left = missing(v["st"])
    assert left < n, v["st"]  # the healthy segment's progress was recorded when the download stopped
    fault.reset()
    fault._keys["f"] = 5  # as if the same server went on: the faults are used up
    v2 = mpy.run(FAIL_THEN_RESUME, URL=url, OUT="out.bin", FIRST=False, KW={}).value
    assert v2["r"] is True and v2["sha"] == sha256_of(n) and v2["st"] is None and v2["part"] == -1, v2
    assert fault.served == left + 1, (fault.served, left)


def test_segments_all_refused_fail_the_download_then_resume(mpy, fault):
    # skip=1: every segment's request is refused (503, a server that takes no more connections for now); the one
    # still running when the others gave up fails the download, as a plain one would fail. No byte came: no .part
    # stays; the next call (the key's faults are used up) fetches it all.
    n = 400000
    url = fault.url("/bytes/%d?key=a&skip=1&times=99&fail=503" % n)
    v = mpy.run(FAIL_THEN_RESUME, URL=url, OUT="out.bin", FIRST=True, KW={"raise_errors": True}).value
    assert v["r"] == "raised" and v["err"] == ["HTTPError", "http", 503], v
    assert v["old_kept"] and v["st"] is None and v["part"] == -1 and v["leaks"] == NO_LEAKS, v  # (no byte came)
    fault.reset()
    fault._keys["a"] = 200  # the faults are used up
    v2 = mpy.run(FAIL_THEN_RESUME, URL=url, OUT="out.bin", FIRST=False, KW={}).value
    assert v2["r"] is True and v2["sha"] == sha256_of(n) and v2["st"] is None and v2["part"] == -1, v2


@pytest.mark.parametrize("total", ["named", "unknown"])
def test_short_206_parts_are_continued(mpy, fault, total):
    # rangemax: every 206 carries at most 30000 bytes, less than a segment asked for; the rest is asked for next
    # (by the segment for a known size; with `bytes A-B/*` the segment ends, and its worker lists the rest)
    n = 100000
    v = one(mpy, fault.url("/bytes/%d?rangemax=30000%s" % (n, "&nototal=1" * (total == "unknown"))), segments=2)
    done_cleanly(v, n)
    assert ranges(v["sent"]) == [(0, 49999), (30000, 49999), (50000, 99999), (80000, 99999)], v["sent"]
    assert fault.served == n + 1


def test_permanent_error_on_a_segment(mpy, fault):
    # a 404 to a segment (the probe was fine) is not retried: the download fails at once, nothing leaks
    v = one(mpy, fault.url("/bytes/400000?rate=100000&key=g&skip=1&times=1&fail=404"), segments=4)
    assert v["r"] is False and v["leaks"] == NO_LEAKS, v
    assert v["sha"] is None  # no outfile


def test_sha256_verified_over_the_assembled_file(mpy, fault):
    n = 300000
    good = one(mpy, fault.url("/bytes/%d" % n), segments=3, sha256=sha256_of(n))
    done_cleanly(good, n)
    bad = one(mpy, fault.url("/bytes/%d?seed=1" % n), segments=3, sha256="0" * 64)
    assert bad["r"] is False and bad["sha"] == sha256_of(n), bad  # the previous outfile, untouched
    assert not bad["part"] and bad["state"] is None, bad  # wrong bytes are no base for a resume


# --- callbacks, options, the cap --------------------------------------------------------------------------------


def test_progress_and_speed_aggregate_all_segments(mpy, fault):
    n = 2 * 1024 * 1024
    v = mpy.run(PRE + """
P = []
S = []
SEEN = []
async def progress(p):  # async, as documented: awaited by the segment that reported
    P.append(p)
    if p == 50:
        SEEN.append(DownloadManager.downloads())
def speed(bps):
    S.append(bps)
async def main():
    DownloadManager.max_connections = 4
    t0 = time.ticks_ms()
    r = await DownloadManager.download_url(URL, outfile=OUT, segments=4, progress_callback=progress,
                                           speed_callback=speed)
    result(r=r, ms=time.ticks_diff(time.ticks_ms(), t0), sha=sha256_file(OUT), p=P, s=S, seen=SEEN)
run(main())
""", URL=fault.url("/bytes/%d?rate=400000" % n), OUT="out.bin").value
    assert v["r"] is True and v["sha"] == sha256_of(n), v
    p = v["p"]
    assert p == sorted(set(p)) and p.count(100) == 1 and p[-1] == 100, p  # strictly increasing, one 100
    assert len(p) >= 90 and p[0] <= 2, p  # every percent or nearly, from the start
    assert 1 <= len(v["s"]) <= v["ms"] // 950, v
    assert all(1_000_000 <= s <= 2_400_000 for s in v["s"]), v  # 4 x 400 kB/s, not one connection's rate
    assert v["ms"] < 2500, v  # 5.2 s on one connection
    (d,), = v["seen"]
    assert d["state"] == "downloading" and d["total"] == n and n // 2 <= d["done"] < n, d


def test_connection_cap_limits_the_segments(mpy, fault):
    # max_connections=3 (the default) with segments=8: 3 connections, the file split in 3
    v = one(mpy, fault.url("/bytes/600000"), maxc=3, segments=8)
    done_cleanly(v, 600000)
    assert len(ranges(v["sent"])) == 3 and fault.connections <= 3, v
    # all slots busy but ours: one plain stream
    v = one(mpy, fault.url("/bytes/600000"), maxc=1, segments=8)
    done_cleanly(v, 600000)
    assert v["sent"] == [["bytes=0-0", None], [None, None]], v


def test_cap_and_priority_with_other_downloads(mpy, fault):
    # max 4: a plain download B holds one slot; the segmented one S takes the 3 free ones. While S runs, L (p0)
    # and H (p5) queue; the slots S's segments give back go to H first. The cap holds throughout.
    v = mpy.run(PRE + """
QUEUES = []
MAX = [0]
STOP = [False]
async def sampler():
    while not STOP[0]:
        MAX[0] = max(MAX[0], slots_taken())
        q = slot_queue()
        if not QUEUES or QUEUES[-1] != q:
            QUEUES.append(q)
        await asyncio.sleep_ms(1)
async def main():
    DownloadManager.max_connections = 4
    s = asyncio.create_task(sampler())
    b = asyncio.create_task(DownloadManager.download_url(URLB, outfile='b.bin'))
    await asyncio.sleep_ms(50)
    seg = asyncio.create_task(DownloadManager.download_url(URLS, outfile='s.bin', segments=8))
    await asyncio.sleep_ms(100)
    low = asyncio.create_task(DownloadManager.download_url(URLL, outfile='l.bin'))
    high = asyncio.create_task(DownloadManager.download_url(URLH, outfile='h.bin', priority=5))
    await asyncio.sleep_ms(20)
    queued = len(slot_queue())
    rs = []
    for t in (b, seg, low, high):
        rs.append(await t)
    STOP[0] = True
    await s
    result(rs=rs, queued=queued, max=MAX[0], queues=QUEUES, active=slots_taken(),
           shas=[sha256_file(f) for f in ('b.bin', 's.bin', 'l.bin', 'h.bin')], sent=SENT)
run(main())
""", URLB=fault.url("/bytes/400000?rate=200000&seed=1"), URLS=fault.url("/bytes/300000?rate=200000&seed=2"),
        URLL=fault.url("/bytes/50000?seed=3"), URLH=fault.url("/bytes/50000?seed=4")).value
    assert v["rs"] == [True] * 4, v
    assert v["shas"] == [sha256_of(400000, 1), sha256_of(300000, 2), sha256_of(50000, 3), sha256_of(50000, 4)]
    assert v["queued"] == 2 and v["max"] == 4 and v["active"] == 0, v
    assert [5, 0] in v["queues"] and [5] not in v["queues"], v  # H never waited alone: it went first
    segs = [r for r, _ in v["sent"] if r and r != "bytes=0-0"]
    assert len(segs) == 3, v  # S split over the 3 free connections


def test_deadline_and_redact_url(mpy, fault):
    v = mpy.run(PRE + """
async def main():
    DownloadManager.max_connections = 4
    t0 = time.ticks_ms()
    try:
        await DownloadManager.download_url(URL, outfile=OUT, segments=4, deadline=0.5, raise_errors=True,
                                           redact_url=True)
        r = None
    except Exception as e:
        r = [type(e).__name__, getattr(e, 'reason', None)]
    result(r=r, ms=time.ticks_diff(time.ticks_ms(), t0), st=state(OUT), part=size(OUT + '.part'))
run(main())
""", URL=fault.url("/bytes/1000000?rate=100000&secret=k3y"), OUT="out.bin")
    val = v.value
    assert val["r"] == ["DownloadTimeout", "timeout"] and 450 <= val["ms"] < 1200, val
    assert val["st"] and val["part"] > 0, val  # kept for a resume
    assert v.stderr.count("failed") == 1 and "k3y" not in v.stderr and "/bytes" not in v.stderr, v.stderr


def test_synchronous_call(mpy, fault):
    v = mpy.run("""
from mpos import DownloadManager
DownloadManager.max_connections = 4
ok = DownloadManager.download_url(URL, outfile=OUT, segments=4)
result(ok=ok, sha=sha256_file(OUT), session=DownloadManager.is_session_active())
""", URL=fault.url("/bytes/500000"), OUT="out.bin").value
    assert v == {"ok": True, "sha": sha256_of(500000), "session": False}
    assert fault.requests == 5


# --- programmer errors, segments=1, the hot path ----------------------------------------------------------------


def test_bad_segments_raise_before_any_traffic(mpy, fault):
    v = mpy.run(BASE + """
CASES = [dict(segments=0), dict(segments=-2), dict(segments=1.5), dict(segments='2'), dict(segments=True),
         dict(segments=[2]), dict(segments=2, outfile=None), dict(segments=1, outfile=None),
         dict(segments=2, outfile=None, chunk_callback=print)]
async def main():
    res = []
    for kw in CASES:
        kw.setdefault('outfile', 'x.bin')
        try:
            r = await DownloadManager.download_url(URL, **kw)
            res.append(['returned', repr(r)])
        except ValueError as e:
            res.append(['ValueError', str(e)])
    result(res=res, imported='mpos.net.segments' in sys.modules, x=exists('x.bin') or exists('x.bin.part'))
run(main())
""", URL=fault.url("/bytes/100")).value
    assert all(r[0] == "ValueError" and "segments" in r[1] for r in v["res"]), v
    assert not v["imported"] and not v["x"], v
    assert fault.connections == 0


def test_segments_1_is_the_plain_download(mpy, fault):
    # the same requests, the same progress, the same file, and the segments module never loaded
    v = mpy.run(BASE + """
async def main():
    out = {}
    for name, kw in (('default', {}), ('one', {'segments': 1}), ('none', {'segments': None})):
        SENT.clear()
        P = []
        r = await DownloadManager.download_url(URL, outfile=name + '.bin', progress_callback=P.append, **kw)
        out[name] = [r, sha256_file(name + '.bin'), list(SENT), P, exists(name + '.bin.part.state')]
    result(out=out, imported='mpos.net.segments' in sys.modules)
run(main())
""", URL=fault.url("/bytes/300000")).value
    d = v["out"]["default"]
    assert d[0] is True and d[1] == sha256_of(300000) and d[2] == [[None, None]] and d[3][-1] == 100, d
    assert v["out"]["one"] == d and v["out"]["none"] == d, v
    assert not v["imported"]
    assert fault.requests == 3


def test_segmented_chunk_path_allocates_nothing_per_chunk(mpy, fault):
    # The marginal heap use of 2048 more chunks (4 MB vs 2 MB, 4 segments): a generator per chunk would be
    # > 200 KB, a memoryview slice 64 KB; what remains is per tick (one per file percent), per wait and per request.
    v = mpy.run(PRE + """
import gc
DownloadManager.session_idle_ms = 0
async def main():
    DownloadManager.max_connections = 4
    await DownloadManager.download_url(URL2, outfile=OUT, segments=4)  # imports, first-use allocations
    used = {}
    for name, url in (('2', URL2), ('4', URL4)):
        gc.collect()
        gc.disable()
        a0 = gc.mem_alloc()
        ok = await DownloadManager.download_url(url, outfile=OUT, segments=4)
        used[name] = gc.mem_alloc() - a0
        gc.enable()
        used[name + 'sha'] = sha256_file(OUT)
    result(**used)
run(main())
""", heapsize="16M", URL2=fault.url("/bytes/%d" % (2 << 20)), URL4=fault.url("/bytes/%d" % (4 << 20)),
        OUT="out.bin").value
    assert v["2sha"] == sha256_of(2 << 20) and v["4sha"] == sha256_of(4 << 20)
    # 24 bytes per chunk: the waits for the network (~150 bytes each, asyncio's own) are more on a busy machine
    assert v["4"] - v["2"] < 24 * 2048, v


# --- what a review found --------------------------------------------------------------------------------------

CANCEL = PRE + """
async def main():
    DownloadManager.max_connections = 4
    from mpos.net import segments
    segments.save_ms = 50
    try:
        await TaskManager.wait_for(DownloadManager.download_url(URL, outfile=OUT, segments=SEG), AFTER)
    except asyncio.TimeoutError:
        pass
    await DownloadManager.close_session()
    result(st=state(OUT), part=size(OUT + '.part'))
run(main())
"""


def cancelled(mpy, url, seg, after):
    """A segmented download of url cancelled after `after` s -> its state record."""
    v = mpy.run(CANCEL, URL=url, OUT="out.bin", SEG=seg, AFTER=after).value
    assert v["st"] and v["part"] > 0, v
    return v["st"]


def resumed(mpy, fault, url, seg, n, st):
    """The next call completes the file, fetching exactly what the record said was missing (+ the probe's byte)."""
    time.sleep(0.3)  # requests the cancelled run had just sent are still being answered: let them be counted first
    fault.reset()
    v = one(mpy, url, maxc=seg, segments=seg)
    done_cleanly(v, n)
    assert fault.served == missing(st) + 1, (fault.served, st)


def test_a_failing_probe_keeps_the_segmented_partial(mpy, fault):
    # Right after a reboot the network may not be up, or the server answers 503 for a while: the download fails,
    # but the .part and its record stay, and the next call still fetches only what is missing.
    n = 600000
    url = fault.url("/bytes/%d?rate=200000" % n)
    st = cancelled(mpy, url, 4, 0.6)
    fault.force = {"fail": "503"}
    v2 = one(mpy, url, maxc=4, segments=4, tries=2)
    assert v2["r"] is False and v2["state"] == st and v2["part"], v2
    resumed(mpy, fault, url, 4, n, st)


def test_a_failing_probe_waits_as_any_retry_does(mpy, fault):
    # The probe's retries are the download's: a Retry-After that outlasts deadline= is not even waited for (before,
    # the probe waited 0.5 s, then 1 s, whatever the deadline), and the partial stays for the next call
    n = 600000
    url = fault.url("/bytes/%d?rate=200000" % n)
    st = cancelled(mpy, url, 4, 0.6)
    time.sleep(0.3)  # (requests the cancelled run had just sent are still being answered)
    fault.reset()
    fault.force = {"fail": "503", "retry_after": "5"}
    v2 = one(mpy, url, maxc=4, segments=4, deadline=2)
    assert v2["r"] is False and v2["state"] == st and v2["part"], v2
    assert fault.requests == 1, v2["sent"]


def test_the_record_lists_ranges_in_file_order_and_is_trusted(mpy, fault):
    # Short 206 parts put remainders back in the queue out of order; the record must still be usable.
    n = 600000
    url = fault.url("/bytes/%d?rate=200000&rangemax=30000" % n)
    st = cancelled(mpy, url, 3, 0.9)
    assert st["todo"] == sorted(st["todo"]), st
    resumed(mpy, fault, url, 3, n, st)


def test_a_plain_download_removes_a_stale_record(mpy, fault):
    # A record describes a segmented .part; once a plain download rewrote or finished that .part, it must go, or
    # get_resume_position() would keep answering 0 and the spec's resume recipe would stop working.
    n = 300000
    url = fault.url("/bytes/%d?rate=100000" % n)
    cancelled(mpy, url, 4, 0.4)
    fault.reset()
    v2 = one(mpy, fault.url("/bytes/%d" % n))  # plain: no segments=
    done_cleanly(v2, n)


def test_a_weak_etag_means_one_plain_stream(mpy, fault):
    # If-Range needs a strong validator: with a weak one every segment would be answered 200 and start over.
    n = 200000
    v = one(mpy, fault.url("/bytes/%d?etag=W/%%22x%%22" % n), segments=4)
    done_cleanly(v, n)
    assert v["sent"][0][0] == "bytes=0-0" and all(rng is None for rng, _ in v["sent"][1:]), v["sent"]


def test_a_second_cancel_during_the_cleanup_gives_every_slot_back(mpy, fault):
    # The cleanup of a cancelled segmented download awaits its segments' tasks; a second cancel may land there.
    # Whenever it lands, the extra connections' slots, the job and the session reference all come back.
    v = mpy.run(PRE + """
async def main():
    DownloadManager.max_connections = 4
    left = []
    for gap in (0, 1, 2, 5, 10, 20):
        t = asyncio.create_task(DownloadManager.download_url(URL, outfile=OUT, segments=4))
        await asyncio.sleep(0.3)
        t.cancel()
        await asyncio.sleep_ms(gap)
        t.cancel()
        try:
            await t
        except asyncio.CancelledError:
            pass
        await asyncio.sleep(0.2)
        left.append([slots_taken(), len(slot_queue()), len(DownloadManager.downloads()),
                     session_users()])
    ok = await DownloadManager.download_url(URL2, outfile=OUT)  # and the next download still gets going
    result(left=left, ok=ok, sha=sha256_file(OUT))
run(main())
""", URL=fault.url("/bytes/2000000?rate=200000"), URL2=fault.url("/bytes/100000"), OUT="out.bin").value
    assert v["left"] == [[0, 0, 0, 0]] * 6, v
    assert v["ok"] is True and v["sha"] == sha256_of(100000), v


def test_a_segment_fails_as_the_run_loop_asks_it_to(mpy):
    # Download.run hands _failed whether the exception was a MemoryError, read before anything could retype it: a
    # segment's own _failed takes that too (it raised a TypeError of its own instead), and says out of memory
    v = mpy.run("""
from mpos.net import errors, segments
got = []
for memory in (True, False):
    try:
        segments._Segment._failed(None, ValueError('under way'), memory)
    except Exception as e:
        got.append(type(e).__name__)
result(got=got)
""").value
    assert v == {"got": ["OutOfMemory", "ValueError"]}, v


# The probe's answer runs out of heap, and letting it go makes an exception in the full heap (made and caught inside;
# the hook makes one): MicroPython's one emergency MemoryError is retyped by it. The probe read it after
# `async with` had let the answer go and took it for the network's failure: a NetworkError after three probes.
PROBE_OUT_OF_HEAP = PRE + """
from aiohttp.response import ClientResponse

def parse_out_of_heap(header):
    raise out_of_heap()

real_release = ClientResponse.release
def release_meeting_an_error(self):
    made_in_a_full_heap(OSError)
    return real_release(self)

segments.parse_content_range = parse_out_of_heap
ClientResponse.release = release_meeting_an_error

async def main():
    DownloadManager.max_connections = 4
    try:
        await DownloadManager.download_url(URL, outfile=OUT, segments=4, raise_errors=True)
        r = None
    except Exception as e:
        r = [type(e).__name__, getattr(e, 'reason', None)]
    result(r=r, st=state(OUT), part=size(OUT + '.part'), sent=SENT)
run(main())
"""


def test_a_probe_out_of_heap_fails_as_out_of_memory_and_keeps_the_partial(mpy, fault):
    n = 600000
    url = fault.url("/bytes/%d?rate=200000" % n)
    st = cancelled(mpy, url, 4, 0.6)
    part = os.path.getsize(str(mpy.tmpdir / "out.bin.part"))
    run = mpy.run(PROBE_OUT_OF_HEAP, URL=url, OUT="out.bin")
    v = run.value
    assert v["r"] == ["OutOfMemory", "memory"], v
    assert v["st"] == st and v["part"] == part, v
    assert v["sent"] == [["bytes=0-0", None]], v  # not tried again: another try would meet the same full heap
    assert run.stderr.count("failed") == 1, run.stderr


# One segmented download of URL on 2 connections over an OUT that holds b'old', raising its failure -> its result
# (or its failure's name and reason), the file's sha256, the hooks' count `made` and what it left behind
OVER_OLD = """
with open(OUT, 'wb') as f:
    f.write(b'old')

async def main():
    DownloadManager.max_connections = 2
    base = fd_count()
    try:
        r = await DownloadManager.download_url(URL, outfile=OUT, segments=2, raise_errors=True)
    except BaseException as e:
        r = [type(e).__name__, getattr(e, 'reason', None)]
    await DownloadManager.close_session()
    result(r=r, sha=sha256_file(OUT), made=made[0], leaks=leaks(base))
run(main())
"""
OLD_SHA = hashlib.sha256(b"old").hexdigest()


# A segment that runs out of heap (or the download, making its second worker) fails the download as OutOfMemory,
# whatever the cleanup before the failure is read makes: the other segments are cancelled, and the CancelledError thrown
# into one, made in the still-full heap with room for its instance but not its native part, retypes MicroPython's one
# emergency MemoryError into a BaseException (which passed every `except Exception` up to the app).
SEGMENT_OUT_OF_HEAP = PRE + """
made = [0]
real_init = segments._Segment.__init__
real_exit = segments._Segment._exit
real_worker = segments.Segmented._worker
real_stop = segments.Segmented._stop

def second_segment_out_of_heap(self, *args):
    made[0] += 1
    if made[0] == 2:  # (the first runs: its request is on its way)
        raise out_of_heap()
    real_init(self, *args)

def exit_meeting_a_cancel(self, admitted):
    made_in_a_full_heap(BaseException)  # (the native part of the CancelledError thrown into the segment)
    real_exit(self, admitted)

def second_worker_out_of_heap(self, sess, own_slot):
    made[0] += 1
    if made[0] == 2:  # (no heap for its coroutine; the first has not run yet)
        raise out_of_heap()
    return real_worker(self, sess, own_slot)

def stop_meeting_a_cancel(self, tasks, succeeded):
    made_in_a_full_heap(BaseException)  # (the native part of the CancelledError thrown into the worker it awaits)
    return real_stop(self, tasks, succeeded)

if CASE == 'segment':
    segments._Segment.__init__ = second_segment_out_of_heap
    segments._Segment._exit = exit_meeting_a_cancel
else:
    segments.Segmented._worker = second_worker_out_of_heap
    segments.Segmented._stop = stop_meeting_a_cancel
""" + OVER_OLD


@pytest.mark.parametrize("case", ["segment", "worker"])
def test_a_segment_out_of_heap_fails_as_out_of_memory_whatever_the_cancels_make(mpy, fault, case):
    v = mpy.run(SEGMENT_OUT_OF_HEAP, URL=fault.url("/bytes/600000?rate=200000"), OUT="out.bin", CASE=case).value
    leaks = dict(NO_LEAKS, segments=2 if case == "worker" else 0)  # (workers_left: the two meant, neither ran)
    assert v == {"r": ["OutOfMemory", "memory"], "sha": OLD_SHA, "made": 2, "leaks": leaks}, v


# One segmented download of URL into OUT over SEG connections, raising its failure -> its name and reason, and the
# record and .part it leaves
RAISING = """
async def main():
    DownloadManager.max_connections = SEG
    try:
        r = await DownloadManager.download_url(URL, outfile=OUT, segments=SEG, raise_errors=True)
    except Exception as e:
        r = [type(e).__name__, getattr(e, 'reason', None)]
    result(r=r, st=state(OUT), part=size(OUT + '.part'))
run(main())
"""


# A worker whose failure cannot even be stored (the store runs out of heap inside its except) ends with that
# MemoryError. Its range stays listed: another worker takes it, and with none left the download fails. Before, the
# range was taken off the list first and lost: the download called the file whole and renamed a .part with a hole
# in it over OUTFILE.
FAILURE_NOT_STORED = PRE + """
made = [0]
real_init = segments._Segment.__init__

def segments_after_the_first_fail(self, *args):
    made[0] += 1
    if made[0] >= 2:
        raise RuntimeError("made to fail")
    real_init(self, *args)

class StoreOutOfHeap:
    # the class default `failure` of the one download, whose store raises as a store in a full heap does (ONCE: the
    # first store only)
    stores = 0
    value = None
    def __get__(self, download, kind):
        return self.value
    def __set__(self, download, value):
        self.stores += 1
        if self.stores == 1 or not ONCE:
            raise MemoryError
        self.value = value

segments._Segment.__init__ = segments_after_the_first_fail
segments.Segmented.failure = StoreOutOfHeap()
""" + OVER_OLD


@pytest.mark.parametrize("once", [True, False])
def test_a_worker_that_cannot_store_its_failure_leaves_its_range_listed(mpy, fault, once):
    v = mpy.run(FAILURE_NOT_STORED, URL=fault.url("/bytes/600000?rate=400000"), OUT="out.bin", ONCE=once).value
    assert v["leaks"] == NO_LEAKS, v
    # Once: the failure the first worker then meets taking that range is stored, and fails the download; always:
    # every worker ends that way, the range still listed
    assert v["r"] == (["RuntimeError", None] if once else ["OutOfMemory", "memory"]), v
    assert v["sha"] == OLD_SHA, v


# A segment made but not yet listed in flight when the heap runs out (the list grows): the record saved for the
# resume must still list its range, or the next call trusts it and calls a file with a hole in it whole. (A resume
# of four recorded ranges over two connections: a worker makes its second segment once its first is done.)
NOT_LISTED = PRE + """
made = [0]

class InFlight:
    # the download's list of segments in flight, whose second append runs out of heap as a list that grows does
    def __init__(self):
        self.segments = []
    def append(self, segment):
        made[0] += 1
        if made[0] == 3:  # (the first two ran)
            raise MemoryError
        self.segments.append(segment)
    def remove(self, segment):
        self.segments.remove(segment)
    def __iter__(self):
        return iter(self.segments)
    def __len__(self):
        return len(self.segments)

real_init = segments.Segmented.__init__
def with_in_flight(self, *args):
    real_init(self, *args)
    self.in_flight = InFlight()
segments.Segmented.__init__ = with_in_flight
""" + RAISING


def test_a_range_whose_segment_is_not_listed_yet_stays_in_the_record(mpy, fault):
    n = 600000
    url = fault.url("/bytes/%d?rate=200000" % n)
    st = cancelled(mpy, url, 4, 0.6)
    v = mpy.run(NOT_LISTED, URL=url, OUT="out.bin", SEG=2).value
    assert v["r"] == ["OutOfMemory", "memory"] and len(v["st"]["todo"]) >= 2, v
    resumed(mpy, fault, url, 2, n, v["st"])


# A 206 shorter than asked leaves the rest of its range to list again; the heap may run out listing it (the list
# grows). The segment leaves the in-flight list only after, so the record saved for the resume still names the
# rest: taken off first, the rest was in neither list, and the resume called a file with a hole in it whole.
REST_NOT_LISTED = PRE + """
class RestOutOfHeap(list):
    def insert(self, index, item):  # as a list that grows in a full heap
        raise MemoryError

class Unassigned:
    # the download's ranges no segment has taken, as a list whose insert runs out of heap
    value = None
    def __get__(self, download, kind):
        return self.value
    def __set__(self, download, value):
        self.value = RestOutOfHeap(value)

segments.Segmented.unassigned = Unassigned()
""" + RAISING


def test_the_rest_of_a_short_206_stays_in_the_record_when_listing_it_runs_out_of_heap(mpy, fault):
    n = 100000
    url = fault.url("/bytes/%d?rangemax=30000&nototal=1" % n)
    v = mpy.run(REST_NOT_LISTED, URL=url, OUT="out.bin", SEG=2).value
    assert v["r"] == ["OutOfMemory", "memory"], v
    assert [30000, 49999] in v["st"]["todo"], v
    resumed(mpy, fault, url, 2, n, v["st"])


# The record of a segmented .part read out of heap is no reason to think it lost: truncating the .part then threw
# away what it held (the next try, in a heap as full, would fail as well, and start from nothing).
RECORD_OUT_OF_HEAP = PRE + """
from mpos.net import partfile

def read_record_out_of_heap(part):
    raise MemoryError

partfile.read_record = read_record_out_of_heap
""" + RAISING


def test_a_record_read_out_of_heap_keeps_the_segmented_partial(mpy, fault):
    n = 600000
    url = fault.url("/bytes/%d?rate=200000" % n)
    st = cancelled(mpy, url, 4, 0.6)
    part = os.path.getsize(str(mpy.tmpdir / "out.bin.part"))
    v = mpy.run(RECORD_OUT_OF_HEAP, URL=url, OUT="out.bin", SEG=4).value
    assert v == {"r": ["OutOfMemory", "memory"], "st": st, "part": part}, v
    resumed(mpy, fault, url, 4, n, st)


def test_a_record_too_long_to_be_ours_is_no_record(mpy, fault):
    # A runaway or corrupt .part.state longer than any record this library writes is not read at all: in a heap that
    # cannot hold it, reading it ran out of memory, and every later call failed the same way with the record left
    (mpy.tmpdir / "out.bin.part").write_bytes(bytes(100000))
    (mpy.tmpdir / "out.bin.part.state").write_text('{"url": "%s"}' % ("a" * 400000))
    v = mpy.run(ONE, URL=fault.url("/bytes/100000"), OUT="out.bin", MAXC=2, MIN=None, TUNE={},
                KW={"segments": 2, "tries": 1}, heapsize="256k").value
    done_cleanly(v, 100000)


CLOSED_WHILE_THE_PROBE_RESTS = PRE + """
from mpos.net import admission, partfile

async def main():
    DownloadManager.retry_base_ms = DownloadManager.retry_max_ms = 5000  # (close_session ends the wait)
    with open(OUT + '.part', 'wb') as f:
        f.write(b'x' * 1000)
    partfile.write_record(OUT + '.part', {'url': partfile.url_key(URL), 'v': None, 'size': 100000,
                                          'todo': [[1000, 99999]]})
    base = fd_count()
    task = asyncio.create_task(DownloadManager.download_url(URL, outfile=OUT, segments=2))
    while not admission._resting:  # the probe got its 503 and waits before its next try
        await asyncio.sleep_ms(5)
    await DownloadManager.close_session()
    try:
        r = await task
    except Exception as e:
        r = described(e)
    await asyncio.sleep_ms(0)
    result(r=r, part=size(OUT + '.part'), state=state(OUT) is not None, leaks=leaks(base))
run(main())
"""


def test_close_session_while_the_probe_waits_to_try_again_fails_the_download(mpy, fault):
    # Found by tests/test_api_sequences.py: a probe that kept a segmented partial rests after a 503; close_session()
    # ends the rest, and the next probe went to the closed session: RuntimeError("session is closed") out of
    # download_url. As any download under way at close_session(), it fails (False), and the partial stays.
    url = fault.url("/bytes/100000?fail=503&key=p&times=1")
    v = mpy.run(CLOSED_WHILE_THE_PROBE_RESTS, URL=url, OUT="out.bin").value
    assert v == {"r": False, "part": 1000, "state": True, "leaks": NO_LEAKS}, v

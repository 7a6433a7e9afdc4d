"""DownloadManager extras, run on MicroPython against the fault server: admission control (max_connections,
priority, cancellation while queued), speed_callback, downloads(), the User-Agent header, post_url and the
synchronous use of download_url with no event loop running.
"""
import json
import re

import pytest

from tools.testservers import sha256_of

# ---------------------------------------------------------------------------------------------------------------
# 1. Admission control

# Shared MicroPython scaffolding: streaming downloads that hash their chunks and note when their first chunk
# came, plus a sampler that counts downloads in flight (connecting or downloading) every few ms.
ADMISSION_HEAD = """
from mpos import DownloadManager, TaskManager
import asyncio
import hashlib, binascii
from time import ticks_ms, ticks_diff

T0 = ticks_ms()
FIRST = {}     # name -> ms of the first chunk
ORDER = []     # names in the order their first chunk came
DONE_AT = {}   # name -> ms when download_url returned
HASH = {}
STOP = [False]
MAX = {"inflight": 0, "downloading": 0}

def now():
    return ticks_diff(ticks_ms(), T0)

def streamer(name):
    h = hashlib.sha256()
    HASH[name] = h
    def cb(chunk):
        if name not in FIRST:
            FIRST[name] = now()
            ORDER.append(name)
        h.update(chunk)
    return cb

def hexof(name):
    return binascii.hexlify(HASH[name].digest()).decode()

async def fetch(name, url, **kw):
    try:
        return await DownloadManager.download_url(url, chunk_callback=streamer(name), **kw)
    finally:
        DONE_AT[name] = now()

async def sampler():
    while not STOP[0]:
        ds = DownloadManager.downloads()
        inflight = len([d for d in ds if d["state"] in ("connecting", "downloading")])
        down = len([d for d in ds if d["state"] == "downloading"])
        MAX["inflight"] = max(MAX["inflight"], inflight)
        MAX["downloading"] = max(MAX["downloading"], down)
        await asyncio.sleep_ms(3)

async def sampled(aw):
    # -> what aw gives, awaited while the sampler counts
    s = asyncio.create_task(sampler())
    try:
        return await aw
    finally:
        STOP[0] = True
        await s

def report(results, names):
    result(results=results, max=MAX, hashes=[hexof(n) for n in names], queue=len(slot_queue()),
           active=slots_taken())
"""


def test_admission_cap_and_priority_order(mpy, fault):
    # Two blockers take both slots; they end at clearly different times (0.1 s and 0.6 s at 100 kB/s), so the
    # queued downloads (0.2 s each) start one at a time, >= 100 ms apart: the first-chunk order is their
    # admission order. Queued in the order p1, p5, p1, p5, p0: expected start D, F, C, E, G.
    r = mpy.run(ADMISSION_HEAD + """
DownloadManager.max_connections = 2
async def main():
    s = asyncio.create_task(sampler())
    jobs = [("A", URLA, 0), ("B", URLB, 0), ("C", URLC, 1), ("D", URLD, 5), ("E", URLE, 1), ("F", URLF, 5),
            ("G", URLG, 0)]
    rs = await asyncio.gather(*[fetch(n, u, priority=p) for n, u, p in jobs])
    STOP[0] = True
    await s
    result(results=list(rs), order=ORDER, first=FIRST, done=DONE_AT, max=MAX,
           hashes={n: hexof(n) for n, u, p in jobs}, left=DownloadManager.downloads(),
           queue=len(slot_queue()), active=slots_taken())
run(main())
""", URLA=fault.url("/bytes/10000?rate=100000&seed=1"), URLB=fault.url("/bytes/60000?rate=100000&seed=2"),
        URLC=fault.url("/bytes/20000?rate=100000&seed=3"), URLD=fault.url("/bytes/20000?rate=100000&seed=4"),
        URLE=fault.url("/bytes/20000?rate=100000&seed=5"), URLF=fault.url("/bytes/20000?rate=100000&seed=6"),
        URLG=fault.url("/bytes/20000?rate=100000&seed=7"))
    v = r.value
    assert v["results"] == [True] * 7
    sizes = {"A": 10000, "B": 60000, "C": 20000, "D": 20000, "E": 20000, "F": 20000, "G": 20000}
    seeds = {"A": 1, "B": 2, "C": 3, "D": 4, "E": 5, "F": 6, "G": 7}
    for n in sizes:
        assert v["hashes"][n] == sha256_of(sizes[n], seed=seeds[n]), n
    assert v["max"]["inflight"] <= 2 and v["max"]["downloading"] <= 2, v["max"]
    assert v["max"]["downloading"] == 2, v["max"]  # the sampler did see the cap reached
    assert sorted(v["order"][:2]) == ["A", "B"]
    assert v["order"][2:] == ["D", "F", "C", "E", "G"], v
    # nobody queued started before a slot was free: the first queued one waited for A
    assert v["first"]["D"] >= v["done"]["A"] - 20, v
    assert v["left"] == [] and v["queue"] == 0 and v["active"] == 0
    assert fault.requests == 7


def test_close_session_ends_the_download_under_way_and_the_queued_ones_start_afresh(mpy, fault):
    # close_session() while A holds the only slot and B, C, D wait for it: A fails (its old file untouched, its .part
    # kept for a resume), the queued ones had sent nothing and get their exact bodies on a session of their own
    # (file, memory and stream mode); nothing is held after.
    r = mpy.run("""
import asyncio
from mpos import DownloadManager
DownloadManager.max_connections = 1
DownloadManager.session_idle_ms = 0
with open("a.bin", "wb") as f:
    f.write(b"old")
async def main():
    fds = fd_count()
    streamed = []
    a = asyncio.create_task(DownloadManager.download_url(SLOW, outfile="a.bin"))
    b = asyncio.create_task(DownloadManager.download_url(FAST, outfile="b.bin"))
    c = asyncio.create_task(DownloadManager.download_url(FAST))
    d = asyncio.create_task(DownloadManager.download_url(FAST, chunk_callback=streamed.append))
    while [x["state"] for x in DownloadManager.downloads()] != ["downloading", "queued", "queued", "queued"]:
        await asyncio.sleep_ms(5)
    await asyncio.sleep_ms(50)
    await DownloadManager.close_session()
    got = [await a, await b, await c, await d]
    with open("a.bin", "rb") as f:
        old = f.read().decode()
    result(got=[got[0], got[1], sha256(got[2]), got[3]], a=old,
           b=sha256_file("b.bin"), streamed=sha256(b"".join(streamed)), part=size("a.bin.part") > 0,
           fds=fd_count() - fds, active=DownloadManager.is_session_active(), listed=DownloadManager.downloads(),
           slots=slots_taken(), queue=len(slot_queue()))
run(main())
""", SLOW=fault.url("/bytes/200000?rate=100000"), FAST=fault.url("/bytes/3000"))
    v = r.value
    body = sha256_of(3000)
    assert v["got"] == [False, True, body, True] and v["b"] == body and v["streamed"] == body, v
    assert v["a"] == "old" and v["part"], v
    assert v["fds"] == 0 and v["active"] is False and v["listed"] == [] and v["slots"] == 0 and v["queue"] == 0, v


def test_admission_cancel_while_queued_and_failure_releases_slot(mpy, fault):
    # max 2: A (0.3 s) and B (0.6 s) take the slots; C1 (cancelled by a wait_for timeout) and C2
    # (task.cancel()) wait in the queue, then X (a 404), D and E. The cancelled ones never start and leave the
    # queue; when A ends X gets its slot, fails at once and hands the slot on to D, which therefore starts long
    # before B ends; the cap holds throughout and everything else completes.
    r = mpy.run(ADMISSION_HEAD + """
DownloadManager.max_connections = 2
async def main():
    s = asyncio.create_task(sampler())
    ta = asyncio.create_task(fetch("A", URLA))
    tb = asyncio.create_task(fetch("B", URLB))
    await asyncio.sleep_ms(0)
    tc1 = asyncio.create_task(TaskManager.wait_for(fetch("C1", URLC), 0.05))
    tc2 = asyncio.create_task(fetch("C2", URLC))
    tx = asyncio.create_task(fetch("X", URLX))
    td = asyncio.create_task(fetch("D", URLD))
    te = asyncio.create_task(fetch("E", URLE))
    await asyncio.sleep_ms(20)
    states_before = [d["state"] for d in DownloadManager.downloads()]
    tc2.cancel()
    await asyncio.sleep_ms(60)
    queued_after_cancel = len(slot_queue())
    states_after = [d["state"] for d in DownloadManager.downloads()]
    outcomes = {}
    for name, t in (("A", ta), ("B", tb), ("C1", tc1), ("C2", tc2), ("X", tx), ("D", td), ("E", te)):
        try:
            outcomes[name] = await t
        except asyncio.TimeoutError:
            outcomes[name] = "timeout"
        except asyncio.CancelledError:
            outcomes[name] = "cancelled"
    STOP[0] = True
    await s
    result(outcomes=outcomes, first=FIRST, done=DONE_AT, max=MAX, order=ORDER,
           hashes={n: hexof(n) for n in ("A", "B", "D", "E")}, left=DownloadManager.downloads(),
           queue=len(slot_queue()), active=slots_taken(), before=states_before,
           after=states_after, queued_after_cancel=queued_after_cancel)
run(main())
""", URLA=fault.url("/bytes/30000?rate=100000&seed=1"), URLB=fault.url("/bytes/60000?rate=100000&seed=2"),
        URLC=fault.url("/bytes/20000?rate=100000&seed=9"), URLX=fault.url("/status/404"),
        URLD=fault.url("/bytes/20000?rate=100000&seed=4"), URLE=fault.url("/bytes/20000?rate=100000&seed=5"))
    v = r.value
    assert v["outcomes"] == {"A": True, "B": True, "C1": "timeout", "C2": "cancelled", "X": False, "D": True,
                             "E": True}, v
    assert v["before"].count("queued") == 5, v
    assert v["queued_after_cancel"] == 3 and v["after"].count("queued") == 3, v
    assert "C1" not in v["first"] and "C2" not in v["first"] and "X" not in v["first"], v
    assert v["hashes"]["A"] == sha256_of(30000, seed=1)
    assert v["hashes"]["B"] == sha256_of(60000, seed=2)
    assert v["hashes"]["D"] == sha256_of(20000, seed=4)
    assert v["hashes"]["E"] == sha256_of(20000, seed=5)
    assert v["max"]["inflight"] <= 2 and v["max"]["downloading"] <= 2, v["max"]
    assert v["first"]["D"] >= v["done"]["A"] - 20, v  # D waited for a slot ...
    assert v["first"]["D"] < v["done"]["B"] - 100, v  # ... but not for B: the 404 released the one it had
    assert v["order"][2:] == ["D", "E"], v
    assert v["left"] == [] and v["queue"] == 0 and v["active"] == 0
    assert fault.requests == 5  # A, B, X, D, E: the cancelled ones never reached the server


@pytest.mark.parametrize("cap", [0, -1])
def test_a_cap_below_one_lets_one_download_run_at_a_time(mpy, fault, cap):
    # max_connections = 0 (or less) would have every download wait for ever: it means one at a time
    r = mpy.run(ADMISSION_HEAD + """
DownloadManager.max_connections = CAP
async def main():
    try:
        rs = await sampled(asyncio.wait_for(asyncio.gather(*[fetch(n, URL) for n in "ABC"]), 10))
    except asyncio.TimeoutError:
        rs = "never done"
    report(rs, "ABC")
run(main())
""", CAP=cap, URL=fault.url("/bytes/20000?rate=200000"))
    v = r.value
    assert v["results"] == [True] * 3 and v["hashes"] == [sha256_of(20000)] * 3, v
    assert v["max"]["inflight"] == 1 and v["queue"] == 0 and v["active"] == 0, v


def test_a_cap_raised_while_downloads_wait_lets_them_start(mpy, fault):
    # One slot, held by A; B, C and D wait. The app raises the cap to 3: once A ends, B, C and D run together.
    r = mpy.run(ADMISSION_HEAD + """
DownloadManager.max_connections = 1
async def raise_the_cap():
    a = asyncio.create_task(fetch("A", URLA))
    await asyncio.sleep_ms(0)
    waiting = [asyncio.create_task(fetch(n, URL)) for n in "BCD"]
    await asyncio.sleep_ms(20)
    DownloadManager.max_connections = 3
    return await asyncio.gather(a, *waiting)
async def main():
    report(await sampled(raise_the_cap()), "BCD")
run(main())
""", URLA=fault.url("/bytes/20000?rate=100000&seed=1"), URL=fault.url("/bytes/60000?rate=100000"))
    v = r.value
    assert v["results"] == [True] * 4 and v["hashes"] == [sha256_of(60000)] * 3, v
    assert v["max"]["inflight"] == 3 and v["queue"] == 0 and v["active"] == 0, v


def test_deadline_counts_the_wait_for_a_slot(mpy, fault):
    # One slot, held for 2 s by A: B (deadline=0.5) waits behind it and fails when its time is up, without a request
    # of its own; C, queued after B, gets the slot when A ends.
    r = mpy.run(ADMISSION_HEAD + """
DownloadManager.max_connections = 1
SENT = record_ranges()
async def timed(url, **kw):
    t0 = ticks_ms()
    try:
        r = len(await DownloadManager.download_url(url, raise_errors=True, **kw))
    except Exception as e:
        r = [type(e).__name__, getattr(e, 'reason', None)]
    return [r, ticks_diff(ticks_ms(), t0), len(SENT)]
async def main():
    a = asyncio.create_task(fetch("A", URLA))
    await asyncio.sleep_ms(0)
    b = asyncio.create_task(timed(URLB, deadline=0.5))
    c = asyncio.create_task(fetch("C", URLC))
    result(a=await a, b=await b, c=await c, hashes=[hexof("A"), hexof("C")], queue=len(slot_queue()),
           active=slots_taken())
run(main())
""", URLA=fault.url("/bytes/100000?rate=50000&seed=1"), URLB=fault.url("/bytes/1000?seed=2"),
        URLC=fault.url("/bytes/1000?seed=3"))
    v = r.value
    assert v["b"][0] == ["DownloadTimeout", "timeout"] and 450 <= v["b"][1] < 1000 and v["b"][2] == 1, v
    assert v["a"] is True and v["c"] is True, v
    assert v["hashes"] == [sha256_of(100000, seed=1), sha256_of(1000, seed=3)], v
    assert v["queue"] == 0 and v["active"] == 0, v
    assert fault.requests == 2


def test_a_download_awaited_in_another_downloads_callback_does_not_wait_for_its_slot(mpy, fault):
    # max 1: the updater streams the firmware and, on its first chunk, fetches the release notes and awaits them; at
    # 40 % of the .mpk an app fetches its icon the same way. Each inner download needs a slot its own parent holds:
    # it goes at once, past the cap, where waiting would hang both for ever. An icon queued meanwhile still waits
    # for the slot.
    r = mpy.run(ADMISSION_HEAD + """
DownloadManager.max_connections = 1
INNER = {}
async def notes(chunk):
    if "notes" not in INNER:
        INNER["notes"] = None
        INNER["notes"] = sha256(await DownloadManager.download_url(NOTES))
async def icon(percent):
    if percent >= 40 and "icon" not in INNER:
        INNER["icon"] = None
        INNER["icon"] = sha256(await DownloadManager.download_url(ICON))
async def timed(name, download):
    try:
        return await download
    finally:
        DONE_AT[name] = now()
async def main():
    firmware = asyncio.create_task(timed("firmware", DownloadManager.download_url(FIRMWARE, chunk_callback=notes)))
    mpk = asyncio.create_task(timed("mpk", DownloadManager.download_url(MPK, outfile="app.mpk",
                                                                         progress_callback=icon)))
    await asyncio.sleep_ms(0)
    queued = asyncio.create_task(fetch("queued", QUEUED))
    try:
        done = await asyncio.wait_for(asyncio.gather(firmware, mpk, queued), 5)
    except asyncio.TimeoutError:
        done = "hung"
    result(done=done, inner=INNER, mpk=sha256_file("app.mpk"), queued=hexof("queued"), first=FIRST, ended=DONE_AT,
           left=DownloadManager.downloads(), queue=len(slot_queue()), active=slots_taken())
run(main())
""", FIRMWARE=fault.url("/bytes/60000?seed=1"), MPK=fault.url("/bytes/40000?seed=2"),
        NOTES=fault.url("/bytes/2000?seed=3"), ICON=fault.url("/bytes/3000?seed=4"),
        QUEUED=fault.url("/bytes/5000?seed=5"))
    v = r.value
    assert v["done"] == [True, True, True], v
    assert v["inner"] == {"notes": sha256_of(2000, seed=3), "icon": sha256_of(3000, seed=4)}, v
    assert v["mpk"] == sha256_of(40000, seed=2) and v["queued"] == sha256_of(5000, seed=5)
    assert v["first"]["queued"] >= v["ended"]["mpk"] >= v["ended"]["firmware"], v  # the queued icon kept its turn
    assert v["left"] == [] and v["queue"] == 0 and v["active"] == 0


def test_a_slot_asked_for_in_a_full_heap_is_not_taken(mpy):
    # Downloads nest in one task's callbacks until noting one more holder needs heap, and the heap is full: that
    # admission fails holding nothing, as admit() promises, so every slot counted is one a download will give back.
    # (A slot counted for a download that never started is lost for good: max_connections of them, and every
    # later download waits for ever.)
    r = mpy.run("""
import asyncio, micropython
from mpos.net import admission
async def main():
    held, failure = 0, None
    while failure is None and held < 20:
        admit = admission.admit(0, 100, None, None)  # (made while there is heap: only its own steps run in a full one)
        micropython.heap_lock()
        try:
            await admit
            held += 1
        except MemoryError as e:
            failure = e
        finally:
            micropython.heap_unlock()
    result(failed=failure is not None, held=held, counted=slots_taken())
run(main())
""")
    v = r.value
    assert v["failed"] and v["counted"] == v["held"], v


# ---------------------------------------------------------------------------------------------------------------
# 2. speed_callback


def test_speed_callback_once_per_second_with_plausible_speed(mpy, fault):
    r = mpy.run("""
from mpos import DownloadManager
from time import ticks_ms, ticks_diff
CALLS = []
T0 = ticks_ms()
def speed(bps):
    CALLS.append([ticks_diff(ticks_ms(), T0), bps])
async def main():
    data = await DownloadManager.download_url(URL, speed_callback=speed)
    result(data=sha256(data) if data else None, calls=CALLS, ms=ticks_diff(ticks_ms(), T0))
run(main())
""", URL=fault.url("/bytes/300000?rate=100000"))
    v = r.value
    assert v["data"] == sha256_of(300000)
    calls = v["calls"]
    assert 2 <= len(calls) <= 4, v
    assert calls[0][0] >= 950, v
    times = [t for t, _ in calls]
    assert all(b - a >= 950 for a, b in zip(times, times[1:])), v
    assert len(calls) <= v["ms"] // 950, v
    for _, bps in calls:
        assert isinstance(bps, int) and 50_000 <= bps <= 200_000, v


def test_speed_after_a_start_over_counts_the_new_bytes(mpy, fault):
    # The first answer is cut after 150000 bytes; the resume finds a new version (a 200) and the download starts
    # over from byte 0. Each speed reported is the bytes since the one before, never less than none. The clock is
    # the test's: 100 ms pass at every reading.
    r = mpy.run("""
from mpos import DownloadManager
from mpos.net import download
CLOCK = [0]
def clock():
    CLOCK[0] += 100
    return CLOCK[0]
download.ticks_ms = clock
DownloadManager.retry_base_ms = 1
SPEEDS = []
async def main():
    data = await DownloadManager.download_url(URL, speed_callback=SPEEDS.append)
    result(data=sha256(data) if data else None, speeds=SPEEDS, sent=len(SENT))
SENT = record_ranges()
run(main())
""", URL=fault.url("/bytes/200000?drop=150000&key=s&newer=2"))
    v = r.value
    assert v["data"] == sha256_of(200000, seed=1) and v["sent"] == 2, v
    assert len(v["speeds"]) > 2 and min(v["speeds"]) > 0, v


# ---------------------------------------------------------------------------------------------------------------
# 3. downloads()


DOWNLOADS = """
from mpos import DownloadManager
SEEN = {}
BEFORE = {}  # bytes the chunks before the sampled one held
def spy(key):
    n = [0, 0]
    def cb(chunk):
        n[0] += 1
        if key not in SEEN and n[0] >= WHICH:
            SEEN[key] = DownloadManager.downloads()
            BEFORE[key] = n[1]
        n[1] += len(chunk)
    return cb
async def main():
    ok1 = await DownloadManager.download_url(URL, chunk_callback=spy("plain"))
    after1 = DownloadManager.downloads()
    ok2 = await DownloadManager.download_url(URL, chunk_callback=spy("redacted"), redact_url=True)
    after2 = DownloadManager.downloads()
    result(ok=[ok1, ok2], seen=SEEN, before=BEFORE, after=[after1, after2])
run(main())
"""


def test_downloads_lists_running_download(mpy, fault):
    # Sampled in the second chunk callback: the first chunk is counted by then.
    check_downloads_listing(mpy, fault, which=2)


def test_downloads_counts_a_chunk_once_its_callback_returned(mpy, fault):
    # Sampled in the first chunk callback: nothing is delivered yet (a callback that raises takes nothing)
    check_downloads_listing(mpy, fault, which=1)


def check_downloads_listing(mpy, fault, which):
    r = mpy.run(DOWNLOADS, URL=fault.url("/bytes/50000?rate=200000"), WHICH=which)
    v = r.value
    assert v["ok"] == [True, True]
    assert v["after"] == [[], []]
    for key in ("plain", "redacted"):
        ds = v["seen"][key]
        assert len(ds) == 1, ds
        d = ds[0]
        assert d["state"] == "downloading" and d["total"] == 50000, d
        assert d["done"] == v["before"][key] and (d["done"] > 0) == (which > 1), (d, v["before"])
    assert v["seen"]["plain"][0]["url"] == fault.url("/bytes/50000?rate=200000")
    red = v["seen"]["redacted"][0]["url"]
    assert red.startswith(fault.base) and "/bytes" not in red and "rate" not in red, red


RANGED = """
from mpos import DownloadManager
SEEN = []  # (percent, done, total) at each progress callback
def progress(percent):
    d = DownloadManager.downloads()[0]
    SEEN.append((percent, d["done"], d["total"]))
async def main():
    kw = {"outfile": "out.bin"} if MODE == "file" else {"chunk_callback": got.append} if MODE == "stream" else {}
    data = await DownloadManager.download_url(URL, headers={"Range": RANGE}, progress_callback=progress,
                                              chunk_size=100, **kw)
    if MODE == "file":
        data = open("out.bin", "rb").read() if data else None
    elif MODE == "stream":
        data = b"".join(got) if data else None
    result(sha=sha256(data), n=len(data), seen=SEEN)
got = []
run(main())
"""


@pytest.mark.parametrize("mode", ["memory", "file", "stream"])
@pytest.mark.parametrize("asked, first, n, query", [
    ("bytes=0-999", 0, 1000, ""),
    ("bytes=1000-1999", 1000, 1000, ""),
    ("bytes=1000-1999", 1000, 1000, "?norange=1"),  # the whole resource comes, the range is cut out of it
    ("bytes=49000-60000", 49000, 1000, ""),  # past the end: the range is what the resource holds of it
])
def test_a_callers_range_is_the_total_of_downloads_and_of_the_percentages(mpy, fault, mode, asked, first, n, query):
    # What this download delivers is its total: downloads() says it, and the percentages count towards it
    v = mpy.run(RANGED, URL=fault.url("/bytes/50000" + query), RANGE=asked, MODE=mode).value
    import hashlib
    from tools.testservers import payload
    assert v["n"] == n and v["sha"] == hashlib.sha256(payload(50000)[first:first + n]).hexdigest(), v
    seen = v["seen"]
    assert seen[-1][0] == 100 and all(total == n for _, _, total in seen), seen
    assert all(percent == min(done * 100 // n, 99) for percent, done, _ in seen[:-1]), seen
    assert max(percent for percent, _, _ in seen[:-1]) >= 80, seen  # the bar moves all the way, not 2 % then 100


@pytest.mark.parametrize("mode", ["memory", "file", "stream"])
@pytest.mark.parametrize("query", ["", "?norange=1"])
def test_an_open_range_counts_the_bytes_before_it_as_done(mpy, fault, mode, query):
    # bytes=N- is a resume the caller keeps (the OS updater's, after its own try failed): its bar goes on from where
    # it stood, N of the resource's bytes done, as MicroPythonOS's DownloadManager counted it from Content-Range's
    # total. (It ran 0-100 % of the rest before: an update 38 % done started again from 1 %.)
    v = mpy.run(RANGED, URL=fault.url("/bytes/50000" + query), RANGE="bytes=45000-", MODE=mode).value
    import hashlib
    from tools.testservers import payload
    assert v["n"] == 5000 and v["sha"] == hashlib.sha256(payload(50000)[45000:]).hexdigest(), v
    seen = v["seen"]
    assert seen[-1][0] == 100 and all(total == 50000 for _, _, total in seen), seen
    assert all(45000 <= done <= 50000 and percent == min(done * 100 // 50000, 99) for percent, done, _ in seen[:-1])
    assert seen[0][0] == 90, seen  # not 0 %, nor 1


# ---------------------------------------------------------------------------------------------------------------
# 4. User-Agent


def test_user_agent_default_caller_override_and_setting(mpy, fault):
    r = mpy.run("""
from mpos import DownloadManager
import json
def uas(body):
    return [v for k, v in json.loads(body)["headers"] if k.lower() == "user-agent"]
async def main():
    out = {}
    out["default"] = uas(await DownloadManager.download_url(URL))
    out["lower"] = uas(await DownloadManager.download_url(URL, headers={"user-agent": "Mine/2"}))
    out["upper"] = uas(await DownloadManager.download_url(URL, headers={"USER-AGENT": "Mine/3"}))
    out["post_default"] = uas(await DownloadManager.post_url(URL, data=b"x"))
    out["post_caller"] = uas(await DownloadManager.post_url(URL, data=b"x", headers={"User-agent": "P/1"}))
    DownloadManager.user_agent = "X/1"
    out["set"] = uas(await DownloadManager.download_url(URL))
    out["set_caller"] = uas(await DownloadManager.download_url(URL, headers={"User-Agent": "Mine/4"}))
    out["post_set"] = uas(await DownloadManager.post_url(URL, data=b"x"))
    result(**out)
run(main())
""", URL=fault.url("/echo"))
    v = r.value
    assert len(v["default"]) == 1 and re.fullmatch(r"MicroPythonOS/\S+", v["default"][0]), v
    assert v["post_default"] == v["default"]
    assert v["lower"] == ["Mine/2"] and v["upper"] == ["Mine/3"] and v["post_caller"] == ["P/1"]
    assert v["set"] == ["X/1"] and v["post_set"] == ["X/1"]
    assert v["set_caller"] == ["Mine/4"]


def test_the_default_user_agent_names_the_os_release(mpy, fault):
    # On MicroPythonOS, mpos holds BuildInfo (mpos/build_info.py): its release goes into every default User-Agent
    r = mpy.run("""
import mpos, json
from mpos import DownloadManager

class BuildInfo:  # MicroPythonOS's shape
    class version:
        release = "0.18.0"

mpos.BuildInfo = BuildInfo
async def main():
    agents = []
    for i in range(2):
        body = await DownloadManager.download_url(URL)
        agents += [v for k, v in json.loads(body)["headers"] if k.lower() == "user-agent"]
    result(agents=agents)
run(main())
""", URL=fault.url("/echo"))
    assert r.value["agents"] == ["MicroPythonOS/0.18.0"] * 2, r.value


# ---------------------------------------------------------------------------------------------------------------
# 5. post_url


def test_post_url_returns_body_or_none(mpy, fault):
    body = b"hello post " * 300
    r = mpy.run("""
from mpos import DownloadManager
import json
async def main():
    echoed = await DownloadManager.post_url(ECHO, data=BODY)
    e = json.loads(echoed)
    result(type=type(echoed).__name__, method=e["method"], sha=e["body_sha256"], n=e["body_len"],
           s500=await DownloadManager.post_url(S500, data=b"x"),
           s404=await DownloadManager.post_url(S404, data=b"x"))
run(main())
""", ECHO=fault.url("/echo"), S500=fault.url("/status/500"), S404=fault.url("/status/404"), BODY=body)
    import hashlib

    v = r.value
    assert v["type"] == "bytes" and v["method"] == "POST"
    assert v["sha"] == hashlib.sha256(body).hexdigest() and v["n"] == len(body)
    assert v["s500"] is None and v["s404"] is None


# ---------------------------------------------------------------------------------------------------------------
# 6. Synchronous use


def test_sync_download_without_event_loop_and_inside_one(mpy, fault):
    r = mpy.run("""
from mpos import DownloadManager
data = DownloadManager.download_url(URL)
ok = DownloadManager.download_url(URL, outfile=OUT)
session = DownloadManager.is_session_active()
async def main():
    return await DownloadManager.download_url(URL2)
inner = run(main())
result(type=type(data).__name__, data=sha256(data) if isinstance(data, bytes) else repr(data), ok=ok,
       out=sha256_file(OUT), session=session, inner=sha256(inner) if isinstance(inner, bytes) else repr(inner))
""", URL=fault.url("/bytes/30000"), URL2=fault.url("/bytes/12345?seed=3"), OUT="sync_out.bin")
    v = r.value
    assert v["type"] == "bytes" and v["data"] == sha256_of(30000)
    assert v["ok"] is True and v["out"] == sha256_of(30000)
    assert v["session"] is False
    assert v["inner"] == sha256_of(12345, seed=3)


# A thread beside TaskManager's loop: OUT takes what the thread got, the loop's thread reports it
BESIDE_THE_LOOP = """
import _thread, time
from mpos import DownloadManager, TaskManager
OUT = {}

def wait_for_the_loop():
    while TaskManager.loop_thread() is None:  # (the thread may run before start() does)
        time.sleep_ms(1)
"""


def test_a_thread_beside_the_task_managers_loop_gets_the_result_and_the_loop_runs_the_download(mpy, fault):
    # A thread's code is synchronous: as at top level, download_url returns the result (it raises what the download
    # raises). TaskManager's loop runs the download and its callbacks, in the loop's thread; the thread waits.
    r = mpy.run(BESIDE_THE_LOOP + """
def worker():
    wait_for_the_loop()
    try:
        OUT["memory"] = sha256(DownloadManager.download_url(URL))
        OUT["file"] = DownloadManager.download_url(URL, outfile="t.bin")
        OUT["failed"] = DownloadManager.download_url(MISSING)
        try:
            DownloadManager.download_url(MISSING, raise_errors=True)
        except DownloadManager.HTTPError as e:
            OUT["raised"] = e.status
        threads = []
        DownloadManager.download_url(URL, progress_callback=lambda percent: threads.append(_thread.get_ident()))
        OUT["callbacks_in_the_loop"] = set(threads) == {LOOP}
    except Exception as e:
        OUT["error"] = repr(e)
    TaskManager.stop()
LOOP = _thread.get_ident()
TaskManager.start_new_thread(worker)
TaskManager.start()
async def later():
    pass
try:
    TaskManager.run_from_thread(later())  # (start() returned: no loop runs)
except RuntimeError as e:
    OUT["no_loop"] = str(e)
result(out=OUT, file=sha256_file("t.bin"))
""", URL=fault.url("/bytes/3000"), MISSING=fault.url("/status/404"))
    v = r.value
    out = v["out"]
    assert out.pop("no_loop").startswith("run_from_thread: no TaskManager.start()"), v
    assert out == {"memory": sha256_of(3000), "file": True, "failed": None, "raised": 404,
                   "callbacks_in_the_loop": True}, v
    assert v["file"] == sha256_of(3000), v


def test_a_thread_whose_download_the_loop_was_running_when_stop_came_gets_a_runtime_error(mpy, fault):
    # stop() ends start(): the download under way stays in asyncio's queue, and its thread, waiting for a result
    # the loop will not make, is answered at once instead of waiting forever
    r = mpy.run(BESIDE_THE_LOOP + """
def worker():
    wait_for_the_loop()
    try:
        OUT["returned"] = DownloadManager.download_url(URL, progress_callback=lambda percent: TaskManager.stop())
    except RuntimeError as e:
        OUT["raised"] = str(e)
TaskManager.start_new_thread(worker)
TaskManager.start()
while not OUT:
    time.sleep_ms(1)
result(**OUT)
""", URL=fault.url("/bytes/300000?trickle=1"))
    assert r.value == {"raised": "the event loop stopped while it ran this"}

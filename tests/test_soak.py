"""Soak: 300 downloads (1-50 KB) through randomly injected faults, reproducible (fixed seed).

Every download that reports success has exactly the right bytes; every failure left the previous outfile
untouched; recoverable faults (one drop, truncation, stall or 503 per download) are all recovered; permanent
ones all fail; at the end no file descriptor, session or task is left over.
"""
import hashlib
import os
import random

from tools.testservers import sha256_of

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
# reconnect their websockets after every Wi-Fi drop. Each kind of use below runs ROUNDS times to warm up (pools,
# queues and buffers at their size), then ROUNDS times more, measured: what those keep must stay within SLACK bytes
# in all, not per use. SOAK_ROUNDS=1000 runs each that often (minutes), where a leak of one byte per use shows.

SOAK_ROUNDS = int(os.environ.get("SOAK_ROUNDS", "0"))
SLACK = 512  # bytes, all uses together: the collector's own bookkeeping moves by a few blocks

SOAK_HEAP = """
import asyncio, socket
import aiohttp
from aiohttp import connection
from mpos import DownloadManager, TaskManager


def on_loopback(host, port, *args, lookup=connection._getaddrinfo):
    # every name under .test is 127.0.0.1: as many hosts as a test likes, all served by the test's server
    return lookup("127.0.0.1" if host.endswith(".test") else host, port, *args)


connection._getaddrinfo = on_loopback


async def growth(name, use, rounds):
    # -> reports the heap `rounds` more uses kept, after as many to warm up
    for i in range(rounds):
        await use(i)
    before = heap_in_use()
    for i in range(rounds, 2 * rounds):
        await use(i)
    result(use=name, kept=heap_in_use() - before)
"""


def rounds(default):
    return SOAK_ROUNDS or default


def growth_of(run):
    # the use -> the bytes it kept, from the snippet's growth() reports
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
        held = []
        for query in ("seed=1", "chunked=1&pad=3&padlen=5000"):
            for host in ("a.test", "b.test", "c.test", "d.test"):
                await get(session, host, query)
            held.append(heap_in_use())
        result(idle=len(session._idle), more=held[1] - held[0])

run(main())
""", PORT=fault.port)
    assert run.value["idle"] == 4
    assert run.value["more"] <= SLACK, run.value

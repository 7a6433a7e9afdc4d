"""The hot path, by its shape rather than its speed (speed is `make bench`'s job): what a chunk allocates, and
that a download on a link where data is always ready still lets other tasks run.

Why allocation counts matter beyond the garbage itself: MicroPython's allocator only moves its "free memory
starts here" hint on one-block allocations, so a loop whose only garbage is a generator per chunk rescans all
earlier garbage on every allocation. That made the client 15x slower than a raw asyncio loop (see
aiohttp.StreamReader.readinto); these tests keep it from coming back.
"""
import pytest

from tools.bench import WAITS
from tools.testservers import sha256_of

SIZE = 2 * 1024 * 1024

ALLOC = """
import asyncio, gc
from mpos import DownloadManager

DownloadManager.session_idle_ms = 0

async def main():
    await DownloadManager.download_url(URL, outfile=OUT)  # imports and first-use allocations out of the way
    for mode in ("file", "memory"):
        gc.collect()
        gc.disable()  # everything the download allocates stays counted
        a0 = gc.mem_alloc()
        got = await DownloadManager.download_url(URL, outfile=OUT if mode == "file" else None)
        used = gc.mem_alloc() - a0
        gc.enable()
        sha = sha256_file(OUT) if mode == "file" else sha256(got)
        del got
        gc.collect()
        result(mode=mode, used=used, sha=sha)

run(main())
"""


def test_file_and_memory_mode_allocate_nothing_per_chunk(mpy, fault, files):
    out = str(files / "out.bin")
    r = mpy.run(ALLOC, heapsize="16M", URL=fault.url("/bytes/%d" % SIZE), OUT=out)
    by_mode = {v["mode"]: v for v in r.results}
    for mode, v in by_mode.items():
        assert v["sha"] == sha256_of(SIZE), mode
    chunks = SIZE // 1024
    # File mode: the request, response and buffers are a few KB; per chunk (2048 of them) next to nothing.
    # One generator per chunk alone would be > 100 KB.
    assert by_mode["file"]["used"] < 24 * 1024 + 8 * chunks, by_mode["file"]
    # Memory mode: the one preallocated body buffer and the bytes returned, plus the same small change.
    assert by_mode["memory"]["used"] < 2 * SIZE + 24 * 1024 + 8 * chunks, by_mode["memory"]



@pytest.mark.parametrize("query", ["chunks=4096", "chunks=1000,7,1,65536", "chunks=3,5,8190&ext=1&trailer=1",
                                   "chunks=4000&ext=pad"])
def test_chunked_bodies_are_exact_and_allocate_little(mpy, fault, files, query):
    # Chunk-size lines are parsed in place where they are already buffered, also when spaces pad them (as
    # ESPAsyncWebServer sends them); odd sizes, lines split across reads, extensions and trailers take the careful
    # path and still give the exact bytes.
    out = str(files / "chunked.bin")
    r = mpy.run(ALLOC, heapsize="16M", URL=fault.url("/bytes/%d?chunked=1&%s" % (SIZE, query)), OUT=out)
    for v in r.results:
        assert v["sha"] == sha256_of(SIZE), v
    used = {v["mode"]: v["used"] for v in r.results}
    if query in ("chunks=4096", "chunks=4000&ext=pad"):  # 512 chunks of 4 KB: no generator per chunk (each > 100 B)
        assert used["file"] < 24 * 1024 + 64 * (SIZE // 1024), used

READS = """
import asyncio, aiohttp, micropython, select

async def main():
    buf = bytearray(1024)
    sha = new_sha()
    got = free = spent = 0
    last = -1
    async with aiohttp.ClientSession() as s:
        async with s.get(URL) as r:
            poll = select.poll()  # (asks the socket whether bytes wait, before the count starts)
            poll.register(r._conn.sock, select.POLLIN)
            r.content  # (made before the count starts: its module loads when it is first asked for)
            while True:
                # bytes wait, and this is not the read after 64 KB that lets other tasks run (a generator)
                now = HOW == "awaited" and bool(poll.poll(0)) and r._conn.streak + 1024 < 65536
                t0 = micropython.mem_total()  # every byte allocated, even what is freed at once
                if HOW == "awaited":  # the aiohttp way
                    n = await r.content.readinto(buf)
                    ready = now and n == last  # bytes were waiting, and the size is that of the last such read
                    if now:
                        last = n
                elif HOW == "bytes":  # DownloadManager's stream mode: the socket's bytes object, handed on
                    b = r.content.read_nowait(1024)
                    n = len(b) if b else None
                    ready = n is not None
                else:
                    n = r.content.readinto_nowait(buf)
                    ready = n is not None
                used = micropython.mem_total() - t0
                if n is None:
                    n = await r.content.readinto(buf)
                    b = None
                if not n:
                    break
                if ready and not r.content.at_eof():  # the read that ends the body also pools the connection
                    free += 1
                    if HOW == "bytes":  # beyond the bytes object itself: its header and a block's rounding
                        used -= n + 64
                    spent += used
                sha.update(b if HOW == "bytes" and b else memoryview(buf)[:n])
                got += n
    result(sha=hexdigest(sha), got=got, free=free, spent=spent)

run(main())
"""


@pytest.mark.parametrize("how, most", [("nowait", 256), ("awaited", 0), ("bytes", 256)])
def test_readinto_of_waiting_bytes_allocates_nothing(mpy, fault, how, most):
    # readinto_nowait(buf) takes bytes that are already here without allocating; `await readinto(buf)` does the
    # same while the read size repeats (a full buffer). Only a read that waits for the network makes a generator.
    # read_nowait(n) allocates the bytes it returns and nothing else.
    n = 256 * 1024
    v = mpy.run(READS, URL=fault.url("/bytes/%d" % n), HOW=how).value
    assert v["sha"] == sha256_of(n) and v["got"] == n
    assert v["free"] > 100, v  # most reads found bytes waiting
    # nowait: the careful path once, for the bytes that came with the head (a view, and its frame: MicroPython
    # puts the frame of a function needing more than 11 words on the heap at every call), and nothing per chunk,
    # not even a frame (176 bytes per chunk here until readinto_nowait's common case lost its `try`; over 250
    # reads that is 44 KB against this bound of 256 bytes). Awaited, counting repeats only: nothing at all, frames
    # included. The read that ends the body is not counted: it hands the connection back to the pool.
    assert v["spent"] <= most, v


FAIR = """
import asyncio, aiohttp
from mpos import DownloadManager

STOP = [False]
SEEN = {"ticks": 0, "gap": 0}  # the most body bytes that arrived while other tasks waited for a turn

def done():
    if READER:
        return READER[0].total_bytes
    d = DownloadManager.downloads()
    return d[0]["done"] if d else 0

READER = []

async def ticker():
    last = 0
    while not STOP[0]:
        now = done()
        SEEN["gap"] = max(SEEN["gap"], now - last)
        SEEN["ticks"] += 1
        last = now
        await asyncio.sleep_ms(0)

async def main():
    t = asyncio.create_task(ticker())
    await asyncio.sleep_ms(0)
    buf = bytearray(CHUNK)
    if MODE == "client":
        async with aiohttp.ClientSession() as s:
            async with s.get(URL) as r:
                READER.append(r.content)
                while await r.content.readinto(buf):
                    pass
        ok = True
    else:
        ok = await DownloadManager.download_url(URL, outfile=OUT, chunk_size=CHUNK)
    STOP[0] = True
    await t
    result(ok=ok, **SEEN)

run(main())
"""


@pytest.mark.parametrize("mode", ["client", "file"])
@pytest.mark.parametrize("chunk", [1024, 16384])
def test_a_download_on_a_fast_link_lets_other_tasks_run(mpy, fault, files, mode, chunk):
    # Loopback often has data ready, so the reader need not wait: it must still step aside after 64 KB, whatever
    # the chunk size, or the UI would freeze for as long as data keeps coming.
    n = 8 * 1024 * 1024
    v = mpy.run(FAIR, heapsize="4M", URL=fault.url("/bytes/%d" % n), OUT=str(files / "fair.bin"), MODE=mode,
                CHUNK=chunk).value
    assert v["ok"] is True
    assert v["gap"] <= 65536 + 2 * chunk, v


SLOW_SINK = """
import asyncio, os, time, vfs
from faultfs import FaultFS
from mpos import DownloadManager

os.mkdir(ROOT)
fs = FaultFS(ROOT)
fs.write_ms = SINK_MS  # a flash that takes its time over every write
vfs.mount(fs, "/flash")
STOP = [False]
SEEN = {"gap": 0}  # the most bytes that reached the sink while other tasks waited for a turn

def done():
    d = DownloadManager.downloads()
    return d[0]["done"] if d else 0

async def ticker():
    last = 0
    while not STOP[0]:
        now = done()
        SEEN["gap"] = max(SEEN["gap"], now - last)
        last = now
        await asyncio.sleep_ms(0)

def flash_like(chunk):
    time.sleep_ms(SINK_MS)  # a firmware partition written from the callback, as the OS updater does

async def main():
    t = asyncio.create_task(ticker())
    await asyncio.sleep_ms(0)
    if MODE == "stream":
        ok = await DownloadManager.download_url(URL, chunk_callback=flash_like)
    elif MODE == "file":
        ok = await DownloadManager.download_url(URL, outfile="/flash/out.bin")
    else:  # the App Store's way: a progress bar
        ok = await DownloadManager.download_url(URL, outfile="/flash/out.bin", progress_callback=lambda p: None)
    STOP[0] = True
    await t
    result(ok=ok, sha=None if MODE == "stream" else sha256_file("/flash/out.bin"), **SEEN)

run(main())
"""


@pytest.mark.parametrize("mode", ["file", "file+progress", "stream"])
def test_a_slow_sink_lets_the_ui_run_however_fast_the_link(mpy, fault, mode):
    # A flash write (or the app's callback) of a few ms per chunk while the socket always holds the next one: the
    # reader never waits, so 64 KB of fair share would hold the loop for 64 slow writes. It gives a turn every
    # 20 ms as well: about ten chunks of 2 ms (more room here on a loaded machine only makes the gaps smaller).
    n = 256 * 1024
    v = mpy.run(SLOW_SINK, heapsize="4M", URL=fault.url("/bytes/%d" % n), ROOT=str(mpy.tmpdir / "flash"),
                MODE=mode, SINK_MS=2).value
    assert v["ok"] is True
    assert v["sha"] in (None, sha256_of(n))
    assert v["gap"] <= 24 * 1024, v


WAIT_FOR = """
import asyncio, aiohttp

async def main():
    buf = bytearray(1024)
    sha = new_sha()
    got = 0
    async with aiohttp.ClientSession() as s:
        async with s.get(URL) as r:
            await asyncio.sleep_ms(50)  # let bytes pile up (unless they trickle): readinto then answers at once
            while True:
                if READ_N:
                    b = await asyncio.wait_for(r.content.read(1024), 5)
                    n = len(b)
                    sha.update(b)
                else:
                    n = await asyncio.wait_for(r.content.readinto(buf), 5)
                    sha.update(memoryview(buf)[:n])
                if not n:
                    break
                got += n
            last = await asyncio.create_task(r.content.readinto(buf))
    result(sha=hexdigest(sha), got=got, last=last)

run(main())
"""


@pytest.mark.parametrize("read_n", [False, True])
@pytest.mark.parametrize("n, query", [(100000, ""), (20000, "trickle=1"), (20000, "trickle=1&chunked=1")])
def test_reads_work_with_wait_for_and_create_task(mpy, fault, n, query, read_n):
    # readinto and read(n) answer with one reusable awaitable, whether the bytes are waiting or it has to wait
    # for them; wait_for() and create_task() take only coroutines, so it must be one too (it raised TypeError,
    # with the bytes already read), and its wait must wake the task that awaits it, not the one that called.
    v = mpy.run(WAIT_FOR, URL=fault.url("/bytes/%d?%s" % (n, query)), READ_N=read_n).value
    assert v == {"sha": sha256_of(n), "got": n, "last": 0}


@pytest.mark.parametrize("how", ["readinto", "read"])
@pytest.mark.parametrize("framing", ["", "chunked=1&chunks=1024&"])
def test_a_read_that_waits_costs_what_asyncio_costs(mpy, fault, how, framing):
    # Side by side in one run: a read that has to wait for the network leaves the garbage the event loop itself
    # leaves for a socket wait (its poller entry, a turn of the scheduler: about 110 bytes here), and little more.
    # It made three generators per wait: 640 bytes; chunked, 1984 (a chunk-size line read through readline per
    # chunk); read(n) 1856 and 3242, filling a 1 KB buffer and copying it into the bytes.
    n = 16384
    r = mpy.run(WAITS, URL=fault.url("/bytes/%d?%srate=40960" % (n, framing)), HOW=how)
    bare, client = r.results
    assert client["sha"] == sha256_of(n)
    assert bare["waits"] >= 5 and client["waits"] >= 5, r.results  # 2 KB every 50 ms: reads wait
    # The rest: a StopIteration when the read's size changes (read(n): one per read, 96 bytes, as each carries
    # new bytes); chunked, the views that copy a chunk's first bytes, which came with its size line.
    assert client["per_wait"] <= bare["per_wait"] + (96 if framing else 32) + (128 if how == "read" else 0), r.results


KEEPS = """
import aiohttp, asyncio, gc

async def size_of(aw):
    return len(await aw)  # the bytes stay in this coroutine's frame, garbage once it returns

async def main():
    kept = []
    async with aiohttp.ClientSession() as s:
        async with s.get(URL) as r:
            i = 0
            while True:
                if r.content.read_nowait(16000):
                    continue
                gc.collect()
                a = gc.mem_alloc()
                n = await size_of(r.content.read(16000 if i % 2 else 100))  # big and small in turn, after a wait
                if not n:
                    break
                await asyncio.sleep_ms(0)  # MicroPython lets go of the last exception caught at the next turn
                gc.collect()
                i += 1
                if i > 2:  # the reader's one-time objects are made by now
                    kept.append(gc.mem_alloc() - a)
    result(kept=kept)

run(main())
"""


def test_read_n_keeps_no_bytes_it_handed_out(mpy, fault):
    # read(n) after a wait hands its bytes over in the reader's reusable awaitable: once handed out, nothing of
    # the library may keep them (it kept the last ones until the next read: a whole chunk per download, held
    # while the download waits). Big and small reads alternate, so bytes kept show as +-16 KB.
    v = mpy.run(KEEPS, URL=fault.url("/bytes/200000?rate=320000")).value
    assert len(v["kept"]) >= 4, v
    assert max(abs(k) for k in v["kept"][:-1]) < 1024, v  # the last read ends the body: the connection is pooled


LATER = """
import aiohttp, asyncio

async def main():
    out = {}
    async with aiohttp.ClientSession() as s:
        async with s.get(URL) as r:
            await asyncio.sleep_ms(50)  # the whole body is here: every read below finds its bytes at once
            parts = []
            # a read that is cancelled before it ever ran takes nothing from the body
            t = asyncio.create_task(r.content.read(2))
            t.cancel()
            try:
                await t
            except asyncio.CancelledError:
                pass
            # reads made before either is awaited each get their own bytes, in order
            parts += await asyncio.gather(r.content.read(2), r.content.read(3))
            # an awaitable awaited twice says so (the second await would have nothing to give)
            aw = r.content.read(4)
            parts.append(await aw)
            out["again"] = (await error_of(aw))[0]
            parts.append(await r.read())
            out["sha"] = sha256(b"".join(parts))
            # the body is over before a read made earlier runs: it says so (0), it does not wait
            out["after"] = await asyncio.create_task(r.content.readinto(bytearray(10)))
        # the connection is let go before a read made earlier runs: bytes that had arrived, then an error, not a
        # wait on a closed socket
        async with s.get(URL) as r:
            await r.content.read(100)
            read = lambda: r.content.read(100) if READ_N else r.content.readinto(bytearray(100))
            t = asyncio.create_task(read())
            r.release()

            async def rest():
                n = await t
                while n:
                    n = await read()

            out["released"] = (await error_of(rest()))[0]
    result(**out)

run(main())
"""


@pytest.mark.parametrize("read_n", [False, True])
def test_a_read_does_nothing_until_it_runs(mpy, fault, read_n):
    # readinto() and read(n) hand out one reusable awaitable; like a coroutine it reads only when it runs, so
    # what happens between the call and the first run (a cancel, another read, the end of the body, a release)
    # is what it sees. Reading at the call lost bytes to a read cancelled before it ran, gave gather()'s first
    # read the second one's bytes, waited forever on a finished body's pooled socket, and crashed MicroPython
    # (a closed socket handed to the poller).
    v = mpy.run(LATER, URL=fault.url("/bytes/5000"), READ_N=read_n).value
    assert v == {"again": "RuntimeError", "sha": sha256_of(5000), "after": 0,
                 "released": "ServerDisconnectedError"}, v

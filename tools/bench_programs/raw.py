# make bench's program "raw" (tools/bench.py puts the values it is given, URL and the like, in front of it).
import asyncio, time, gc
from mpos import DownloadManager
import aiohttp

async def raw(sink):
    # the baseline: no HTTP client, a bare asyncio stream and one buffer
    r, w = await asyncio.open_connection(HOST, PORT)
    w.write(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % PATH.encode())
    await w.drain()
    while (await r.readline()) not in (b"\r\n", b""):
        pass
    buf = bytearray(1024)
    mv = memoryview(buf)
    n = 0
    while True:
        k = await r.readinto(buf)
        if not k:
            break
        await sink(buf if k == 1024 else mv[:k], n)
        n += k
    await w.wait_closed()
    return n

def rm(path):
    import os
    try:
        os.remove(path)
    except OSError:
        pass

async def best(fn, rounds):
    t = None
    for i in range(rounds):
        # Both sides write a fresh file: replacing a 20 MB file makes ext4 flush the old one (10-20 ms, on
        # whichever side comes next), which is the disk's cost, not the download's.
        rm(OUT)
        rm(OUT + ".raw")
        gc.collect()
        t0 = time.ticks_us()
        await fn()
        dt = time.ticks_diff(time.ticks_us(), t0)
        t = dt if t is None or dt < t else t
    return t

async def pair(name, lib_fn, raw_fn, nbytes):
    # alternate the two sides round by round, keep each side's best
    tl = tr = None
    for i in range(ROUNDS):
        a = await best(raw_fn, 1)
        b = await best(lib_fn, 1)
        tr = a if tr is None or a < tr else tr
        tl = b if tl is None or b < tl else tl
    result(name=name, lib_us=tl, raw_us=tr, mbps_lib=nbytes / tl, mbps_raw=nbytes / tr)

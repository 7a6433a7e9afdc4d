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

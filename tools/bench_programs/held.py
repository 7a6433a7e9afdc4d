# make bench's program "held" (tools/bench.py puts the values it is given, URL and the like, in front of it).
import asyncio, aiohttp
from mpos import DownloadManager

CHUNK = bytes(1024)

async def stand_in(url, chunk_callback):
    await chunk_callback(CHUNK)
    return True

async def held(n, download, tag):
    await at(tag + "-base")
    full = []
    go = asyncio.Event()
    async def one(i):
        async def cb(chunk):
            if len(chunk) == 1024 and i not in full:
                full.append(i)
                if len(full) == n:
                    await at(tag)
                    go.set()
                await go.wait()
        return await download(URL, chunk_callback=cb)
    ok = await asyncio.gather(*[one(i) for i in range(n)])
    assert all(ok), ok
    await DownloadManager.close_session()

async def rounds():
    # warm up: import everything and run one download so that only per-request memory is counted
    await DownloadManager.download_url(URL)
    await DownloadManager.close_session()

    # The client alone, the same way: a request whose body is read into one buffer all requests share and
    # handed to the callback as it is (no copy), on a session made beforehand.
    s = aiohttp.ClientSession()
    buf = bytearray(1024)

    async def client(url, chunk_callback):
        async with s.get(url) as r:
            while True:
                n = await r.content.readinto(buf)
                if not n:
                    return True
                await chunk_callback(buf if n == 1024 else memoryview(buf)[:n])

    async def drop(chunk):
        pass

    await client(URL, drop)  # resp.content's module (aiohttp/streams.py) loads on first use: not per request
    DownloadManager.max_connections = 8
    await held(2, stand_in, "warm")  # asyncio.Event and gather load on first use: not per download
    for n in (1, 8):
        await held(n, stand_in, "harness-client%d" % n)
        await held(n, client, "client%d" % n)
    await s.close()
    for n in (1, 8):
        await held(n, stand_in, "harness%d" % n)
        await held(n, DownloadManager.download_url, "download%d" % n)

# make bench's program "reuse" (tools/bench.py puts the values it is given, URL and the like, in front of it).
import asyncio, aiohttp
from mpos import DownloadManager

async def main():
    ctx = aiohttp.tls_context()
    DownloadManager.session_idle_ms = 60000  # kept between the ten; closed after them, as a round's end

    async def fresh():
        for i in range(10):
            async with aiohttp.ClientSession(ssl=ctx) as s:
                async with s.get(URL) as r:
                    assert len(await r.read()) == 1000

    async def session():
        async with aiohttp.ClientSession(ssl=ctx) as s:
            for i in range(10):
                async with s.get(URL) as r:
                    assert len(await r.read()) == 1000

    async def download_manager():
        for i in range(10):
            assert len(await DownloadManager.download_url(URL)) == 1000
        await DownloadManager.close_session()

    async def floor():
        # one connection, ten requests each written in one piece, each answer read by its Content-Length
        buf = bytearray(1024)
        sock = floor_connect(HOST, PORT)
        for i in range(10):
            assert floor_body(sock, floor_head(sock, HOST, PATH), buf) == 1000
        sock.close()

    await race("10 GETs", [("fresh", fresh), ("session", session), ("dm", download_manager), ("floor", floor)])

asyncio.run(main())

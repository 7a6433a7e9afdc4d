# make bench's program "first_request" (tools/bench.py puts the values it is given, URL and the like, in front of it).
import asyncio, aiohttp

async def main():
    ctx = aiohttp.tls_context()  # made once, as an app would

    async def ours():
        async with aiohttp.ClientSession(ssl=ctx) as s:
            async with s.get(URL) as r:
                assert r.status == 200

    async def floor():
        sock = floor_connect(HOST, PORT)
        assert floor_head(sock, HOST, PATH) == 0
        sock.close()

    await ours()  # the name is in our cache from now on, as the floor's is in the system's
    await race("first request to a host", [("floor", floor), ("lib", ours)])

asyncio.run(main())

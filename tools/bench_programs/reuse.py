# make bench's program "reuse" (tools/bench.py puts the values it is given, URL and the like, in front of it).
import asyncio, time, aiohttp
async def main():
    ctx = aiohttp.tls_context()
    async def reuse():
        async with aiohttp.ClientSession(ssl=ctx) as s:
            for i in range(10):
                async with s.get(URL) as r:
                    assert len(await r.read()) == 1000
    async def fresh():
        for i in range(10):
            async with aiohttp.ClientSession(ssl=ctx) as s:
                async with s.get(URL) as r:
                    assert len(await r.read()) == 1000
    tr = tf = None
    for i in range(ROUNDS):
        for fn, slot in ((fresh, 0), (reuse, 1)):
            t0 = time.ticks_us()
            await fn()
            dt = time.ticks_diff(time.ticks_us(), t0)
            if slot:
                tr = dt if tr is None or dt < tr else tr
            else:
                tf = dt if tf is None or dt < tf else tf
    result(reuse_us=tr, fresh_us=tf)
asyncio.run(main())

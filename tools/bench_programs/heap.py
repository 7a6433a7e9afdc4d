# make bench's program "heap" (tools/bench.py puts the values it is given, URL and the like, in front of it).
import gc

async def at(name):
    gc.collect()
    result(mark=name, heap=gc.mem_alloc())

async def main():
    # 100 readinto calls: what the hot path allocates per chunk (garbage, collected later)
    buf = bytearray(1024)
    s = aiohttp.ClientSession()
    async with s.get(URL) as r:
        await r.content.readinto(buf)
        gc.collect()
        gc.disable()
        b0 = gc.mem_alloc()
        for i in range(100):
            await r.content.readinto(buf)
        b1 = gc.mem_alloc()
        gc.enable()
    await s.close()
    result(readinto_per_chunk=(b1 - b0) / 100)
    await rounds()

asyncio.run(main())

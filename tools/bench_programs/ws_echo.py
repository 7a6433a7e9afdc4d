# make bench's program "ws_echo" (tools/bench.py puts the values it is given, URL and the like, in front of it).
import asyncio, aiohttp, time
import aiohttp.websocket as websocket

def bytewise(data, key, block_key=0):
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))

async def loop(ws, n):
    data = bytes(range(256)) * 16
    t0 = time.ticks_us()
    for i in range(n):
        await ws.send_bytes(data)
        assert len((await ws.receive()).data) == 4096
    return time.ticks_diff(time.ticks_us(), t0)

async def main():
    best = {}
    bulk = websocket._mask
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(URL) as ws:
            await loop(ws, 20)
            for r in range(ROUNDS):
                for name, mask in (("bytewise", bytewise), ("bulk", bulk)):
                    websocket._mask = mask
                    us = await loop(ws, N)
                    best[name] = min(best.get(name, us), us)
            websocket._mask = bulk
    result(bulk=N * 1e6 / best["bulk"], bytewise=N * 1e6 / best["bytewise"])

asyncio.run(main())

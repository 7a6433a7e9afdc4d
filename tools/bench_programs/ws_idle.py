# make bench's program "ws_idle" (tools/bench.py puts the values it is given, URL and the like, in front of it).
import asyncio, aiohttp

async def idle(n):
    session = aiohttp.ClientSession()
    warm = await session.ws_connect(URL)  # loads the module, asyncio's Lock...: not per websocket
    await warm.send_str("warm")
    await warm.receive()
    await warm.close()
    kept = []
    await at("ws-base")
    for i in range(n):
        ws = await session.ws_connect(URL)
        await ws.send_str("hello")
        assert (await ws.receive()).data == "hello"
        kept.append(ws)
    await at("ws-open")
    for ws in kept:
        await ws.close()
    await session.close()

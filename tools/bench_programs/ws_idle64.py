# make bench's program "ws_idle64" (tools/bench.py puts the values it is given, URL and the like, in front of it).
import gc

async def at(name):
    gc.collect()
    result(mark=name, heap=gc.mem_alloc())

asyncio.run(idle(N))

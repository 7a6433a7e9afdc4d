# make bench's program "ws_mask" (tools/bench.py puts the values it is given, URL and the like, in front of it).
import os, time
import aiohttp.websocket as websocket

def bytewise(data, key, block_key=0):
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))

def cost(mask, data, key):
    t0 = time.ticks_us()
    for r in range(REPEAT):
        mv = memoryview(data)
        block_key = int.from_bytes(key * 256, "little")
        for off in range(0, len(data), 1024):
            mask(mv[off : off + 1024], key, block_key)
    return time.ticks_diff(time.ticks_us(), t0) / REPEAT / (len(data) / 1024)

data, key = os.urandom(4096), os.urandom(4)
assert websocket._mask(data[:1024], key) == bytewise(data[:1024], key)
best = {}
for r in range(ROUNDS):
    for name, mask in (("bytewise", bytewise), ("bulk", websocket._mask)):
        us = cost(mask, data, key)
        best[name] = min(best.get(name, us), us)
result(**best)

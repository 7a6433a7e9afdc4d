# make bench's program "segments" (tools/bench.py puts the values it is given, URL and the like, in front of it).
import asyncio, os, time
from mpos import DownloadManager

def rm(p):
    try:
        os.remove(p)
    except OSError:
        pass

async def main():
    DownloadManager.session_idle_ms = 0  # each download opens its own connections, the same for every side
    DownloadManager.max_connections = 4  # segments=4 needs 4 connections (the default allows 3)
    sides = [("none", {}), ("one", {"segments": 1}), ("four", {"segments": 4})]
    best = {}
    for i in range(ROUNDS):
        for name, kw in sides[i % 3:] + sides[:i % 3]:
            rm(OUT)
            t0 = time.ticks_us()
            ok = await DownloadManager.download_url(URL, outfile=OUT, **kw)
            dt = time.ticks_diff(time.ticks_us(), t0)
            assert ok is True and sha256_file(OUT) == SHA, name
            best[name] = min(best.get(name, dt), dt)
    result(**best)

asyncio.run(main())

# make bench's program "streaming" (tools/bench.py puts the values it is given, URL and the like, in front of it).
import os
import requests  # micropython-lib's, frozen into the unix port: the blocking peer

URL = "http://%s:%d%s" % (HOST, PORT, PATH)
MEM = "http://%s:%d%s" % (HOST, PORT, MEMPATH)

def fresh_files():
    # Every side writes a fresh file: replacing a 20 MB file makes ext4 flush the old one (10-20 ms, on whichever
    # side comes next), which is the disk's cost, not the download's.
    for path in (OUT, OUT + ".raw", OUT + ".peer"):
        try:
            os.remove(path)
        except OSError:
            pass

async def main():
    DownloadManager.session_idle_ms = 0
    # Touch the whole heap once: a fresh unix-port heap pays page faults on first use, which would tax
    # whichever side allocates first (a device's heap is always warm).
    gc.collect()
    warm = bytearray(gc.mem_free() - 262144)
    del warm
    gc.collect()
    buf = bytearray(1024)
    view = memoryview(buf)

    def peer(sink):
        # requests as its users read a body: r.raw.readinto into one 1 KB buffer, each piece handed on as a slice
        r = requests.get(URL)
        n = 0
        while True:
            k = r.raw.readinto(buf)
            if not k:
                break
            sink(view[:k])
            n += k
        r.close()
        assert n == SIZE

    async def client_readinto():
        async with aiohttp.ClientSession() as s:
            async with s.get(URL) as r:
                n = 0
                while True:
                    k = await r.content.readinto(buf)
                    if not k:
                        break
                    n += k
        assert n == SIZE

    async def raw_nothing(chunk, n):
        pass

    async def raw_only():
        assert await raw(raw_nothing) == SIZE
    await race("client content.readinto, 1 KB buffer", [("raw", raw_only), ("lib", client_readinto)],
               nbytes=SIZE)

    async def file_mode():
        assert await DownloadManager.download_url(URL, outfile=OUT)

    async def raw_file():
        f = open(OUT + ".raw", "wb")
        async def sink(chunk, n):
            f.write(chunk)
        assert await raw(sink) == SIZE
        f.close()

    async def peer_file():
        with open(OUT + ".peer", "wb") as f:
            peer(f.write)
    await race("DownloadManager file mode", [("raw", raw_file), ("peer", peer_file), ("lib", file_mode)],
               fresh_files, nbytes=SIZE)

    async def cb(chunk):
        pass

    async def stream_mode():
        assert await DownloadManager.download_url(URL, chunk_callback=cb)

    async def raw_stream():
        async def sink(chunk, n):
            await cb(bytes(chunk))
        assert await raw(sink) == SIZE

    def take(chunk):  # the blocking peer's trivial callback
        pass

    async def peer_stream():
        peer(take)

    async def peer_bytes():
        # the same contract as stream mode: every chunk a bytes object of its own, which the callback may keep
        r = requests.get(URL)
        n = 0
        while True:
            chunk = r.raw.read(1024)
            if not chunk:
                break
            take(chunk)
            n += len(chunk)
        r.close()
        assert n == SIZE
    await race("DownloadManager stream mode", [("raw", raw_stream), ("peer", peer_stream), ("peer_bytes", peer_bytes),
                                               ("lib", stream_mode)], nbytes=SIZE)

    async def memory_mode():
        d = await DownloadManager.download_url(MEM)
        assert len(d) == MEMSIZE

    async def raw_memory():
        out = bytearray(MEMSIZE)
        async def sink(chunk, n):
            out[n:n + len(chunk)] = chunk
        global PATH
        p, PATH = PATH, MEMPATH
        try:
            assert await raw(sink) == MEMSIZE
        finally:
            PATH = p
        bytes(out)  # the library returns bytes: the same copy
    await race("DownloadManager memory mode", [("raw", raw_memory), ("lib", memory_mode)], nbytes=MEMSIZE)

asyncio.run(main())

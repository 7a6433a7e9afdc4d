# make bench's program "streaming" (tools/bench.py puts the values it is given, URL and the like, in front of it).
URL = "http://%s:%d%s" % (HOST, PORT, PATH)
MEM = "http://%s:%d%s" % (HOST, PORT, MEMPATH)

async def main():
    DownloadManager.session_idle_ms = 0
    # Touch the whole heap once: a fresh unix-port heap pays page faults on first use, which would tax
    # whichever side allocates first (a device's heap is always warm).
    gc.collect()
    warm = bytearray(gc.mem_free() - 262144)
    del warm
    gc.collect()
    buf = bytearray(1024)

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
    await pair("client content.readinto, 1 KB buffer", client_readinto, raw_only, SIZE)

    async def file_mode():
        assert await DownloadManager.download_url(URL, outfile=OUT)

    async def raw_file():
        f = open(OUT + ".raw", "wb")
        async def sink(chunk, n):
            f.write(chunk)
        assert await raw(sink) == SIZE
        f.close()
    await pair("DownloadManager file mode", file_mode, raw_file, SIZE)

    async def cb(chunk):
        pass

    async def stream_mode():
        assert await DownloadManager.download_url(URL, chunk_callback=cb)

    async def raw_stream():
        async def sink(chunk, n):
            await cb(bytes(chunk))
        assert await raw(sink) == SIZE
    await pair("DownloadManager stream mode", stream_mode, raw_stream, SIZE)

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
    await pair("DownloadManager memory mode", memory_mode, raw_memory, MEMSIZE)

asyncio.run(main())

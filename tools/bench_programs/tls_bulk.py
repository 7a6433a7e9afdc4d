# make bench's program "tls_bulk" (tools/bench.py puts the values it is given, URL and the like, in front of it).
import asyncio, os
from mpos import DownloadManager

def fresh_files():
    for path in (OUT, OUT + ".floor"):  # see streaming.py: a replaced file costs its flush
        try:
            os.remove(path)
        except OSError:
            pass

async def main():
    DownloadManager.session_idle_ms = 0  # each download its own connection and handshake, as the floor's
    buf = bytearray(1024)

    async def ours():
        assert await DownloadManager.download_url(URL, outfile=OUT)

    def floor_to_file(port, secure):
        sock = floor_connect(HOST, port, secure)
        with open(OUT + ".floor", "wb") as f:
            assert floor_body(sock, floor_head(sock, HOST, PATH, close=True), buf, f.write) == SIZE
        sock.close()

    async def floor():
        floor_to_file(PORT, True)

    async def plain():  # the same loop without TLS: what TLS costs the floor
        floor_to_file(PLAIN_PORT, False)
    await race("HTTPS to a file", [("floor", floor), ("plain", plain), ("lib", ours)], fresh_files, nbytes=SIZE)

asyncio.run(main())

# make bench's program "waits" (tools/bench.py puts the values it is given, URL and the like, in front of it).
import asyncio, aiohttp, gc, socket
from asyncio import core

class Wait:  # the least a task can allocate to wait for a socket: asyncio's own bookkeeping
    s = None
    exc = StopIteration()

    def __iter__(self):
        return self

    def __next__(self):
        s = self.s
        if s is not None:
            self.s = None
            core._io_queue.queue_read(s)
            return None
        self.exc.__traceback__ = None
        raise self.exc

async def bare():
    # the same body on a bare socket: 1 KB reads, and the Wait above when the socket has nothing
    host, port = URL.split("/")[2].split(":")
    s = socket.socket()
    s.connect(socket.getaddrinfo(host, int(port))[0][-1])
    s.write(b"GET /%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % URL.split("/", 3)[3])
    s.setblocking(False)
    buf = bytearray(1024)
    w = Wait()
    waits = spent = 0
    while True:
        n = s.readinto(buf)
        if n is None:
            w.s = s
            a0 = gc.mem_alloc()
            await w
            spent += gc.mem_alloc() - a0
            waits += 1
        elif not n:
            break
    s.close()
    return waits, spent, None

async def client():
    buf = bytearray(1024)
    waits = spent = 0
    sha = new_sha()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout()) as s:  # no watchdog ticking meanwhile
        async with s.get(URL) as r:
            while True:
                b = r.content.read_nowait(1024) if HOW == "read" else r.content.readinto_nowait(buf)
                if not b:
                    a0 = gc.mem_alloc()
                    if HOW == "read":
                        b = await r.content.read(1024)
                        used = gc.mem_alloc() - a0 - gc_size(b)
                    else:
                        b = await r.content.readinto(buf)
                        used = gc.mem_alloc() - a0
                    if b and not r.content.at_eof():  # the read that ends the body pools the connection
                        spent += used
                        waits += 1
                if not b:
                    break
                sha.update(b if HOW == "read" else memoryview(buf)[:b])
    return waits, spent, hexdigest(sha)

def gc_size(b):
    # what a bytes object of len(b) takes from the heap: measured on one of the same length
    a0 = gc.mem_alloc()
    c = bytes(len(b))
    return gc.mem_alloc() - a0

async def main():
    gc.collect()
    gc.disable()  # garbage stays counted
    for f in (bare, client):
        waits, spent, sha = await f()
        gc.collect()
        result(what=f.__name__, waits=waits, per_wait=spent // max(waits, 1), sha=sha)

run(main())

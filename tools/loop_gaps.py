"""How long the library holds the event loop (MicroPythonOS's UI thread) without a turn, by operation.

A ticker task beside each operation records the longest gap between its turns and how many turns it got: the
longest stretch of synchronous work, on this machine (an ESP32 runs bytecode 50-100 times slower). Each operation
runs on MicroPython against loopback servers with bodies a server controls: big downloads in each mode, text() in
each charset, a 32 KB head, a gzip bomb, big websocket messages.

    .venv/bin/python tools/loop_gaps.py [NAME_PART ...]
"""
import gzip
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools import mpy, testservers, wsservers  # noqa: E402

TEXT_SIZE = 200 * 1024
RUNS = 3
HEAP = "8M"  # the 200 KB texts and what they decode to


def _texts():
    # body bytes, as labelled (charset, for the Content-Type)
    line = "the quick brown fox jumps over the lazy dog 0123456789\n"
    ascii_text = (line * (TEXT_SIZE // len(line) + 1))[:TEXT_SIZE].encode()
    emoji = ("caf\u00e9 \U0001f600 " * (TEXT_SIZE // 12))[: TEXT_SIZE // 3].encode()[:TEXT_SIZE]
    latin = bytes(range(0x20, 0x100)) * (TEXT_SIZE // 224)
    bad = b"\xff" * TEXT_SIZE
    items = json.dumps([{"id": i, "name": "item %d" % i} for i in range(TEXT_SIZE // 30)]).encode()
    return {
        "/utf8": ("utf-8", ascii_text),
        "/utf8-emoji": ("utf-8", emoji.decode("utf-8", "ignore").encode()),
        "/latin1": ("iso-8859-1", latin),
        "/latin1-ascii": ("iso-8859-1", ascii_text),
        "/cp1252": ("windows-1252", latin),
        "/bad-utf8": ("utf-8", bad),
        "/json": ("utf-8", items),
    }


def _responses():
    out = {}
    for path, (label, body) in _texts().items():
        out[path] = [b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=%s\r\nContent-Length: %d\r\n\r\n"
                     % (label.encode(), len(body)) + body, "close"]
    fields = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 300) for i in range(99))
    out["/big-head"] = [b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 2\r\n\r\nok", "close"]
    return out


TICKER = """
import asyncio, time, aiohttp
from mpos import DownloadManager

class Ticker:
    turns = 0
    gap = 0
    done = False

    async def run(self):
        last = time.ticks_us()
        while not self.done:
            await asyncio.sleep(0)
            now = time.ticks_us()
            self.gap = max(self.gap, time.ticks_diff(now, last))
            last = now
            self.turns += 1

async def measure(name, make):
    ticker = Ticker()
    task = asyncio.create_task(ticker.run())
    await asyncio.sleep(0)
    t0 = time.ticks_us()
    try:
        what = await make()
    except Exception as e:
        what = repr(e)
    total = time.ticks_diff(time.ticks_us(), t0)
    ticker.done = True
    await task
    result(name=name, gap_ms=ticker.gap / 1000, turns=ticker.turns, total_ms=total / 1000, what=what)

def chunk(data):
    pass

def slow_chunk(data):
    time.sleep_ms(2)  # a flash partition written from the callback, as MicroPythonOS's updater does

async def dm(url, **kw):
    got = await DownloadManager.download_url(url, **kw)
    return len(got) if isinstance(got, bytes) else got

async def get(url, how, **kw):
    async with aiohttp.ClientSession() as session:
        async with session.get(url, ssl=False) as resp:
            if how == "read":
                got = await resp.read()
            elif how == "json":
                got = await resp.json(content_type=None)
            elif how == "headers":
                got = resp.headers.get("X-98")
            elif how == "read_n":
                got = 0
                while True:
                    data = await resp.read(1024)
                    if not data:
                        break
                    got += len(data)
                return got
            else:
                got = await resp.text(**kw)
            return len(got)

async def ws(url, size, count):
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url) as sock:
            for text in (True, False):
                for i in range(count):
                    if text:
                        await sock.send_str("\\u00e9" * (size // 2))
                    else:
                        await sock.send_bytes(bytes(size))
                    msg = await sock.receive()
            return len(msg.data)

async def resolve(host):
    from aiohttp import connection
    return repr(await connection.resolve(host, 80, 5000, None))

async def main():
    for name, make in CASES:
        for i in range(RUNS):  # the machine is shared: a run's longest gap may be the OS's, the least of three is ours
            await measure(name, make)

CASES = [
"""


def cases(fault, fault_tls, fast, script, wsserver, out):
    big = 4 * 1024 * 1024
    rows = [
        ("file, plain 4 MB", "dm(%r, outfile=%r)" % (fault.url("/bytes/%d" % big), out)),
        ("file, straight lane 20 MB (fast server)", "dm(%r, outfile=%r)" % (fast.url("/bytes/%d" % (5 * big)), out)),
        ("file, chunked 4 MB", "dm(%r, outfile=%r)" % (fault.url("/bytes/%d?chunked=1&chunks=65536" % big), out)),
        ("file, gzip 4 MB text", "dm(%r, outfile=%r)" % (fault.url("/bytes/%d?text=1&gzip=1" % big), out)),
        ("file, TLS 4 MB", "dm(%r, outfile=%r)" % (fault_tls.url("/bytes/%d" % big), out)),
        ("file, 4 segments 4 MB", "dm(%r, outfile=%r, segments=4)" % (fault.url("/bytes/%d" % big), out)),
        ("memory, plain 1 MB", "dm(%r)" % fault.url("/bytes/%d" % (big // 4))),
        ("memory, chunked 1 MB", "dm(%r)" % fault.url("/bytes/%d?chunked=1&chunks=65536" % (big // 4))),
        ("memory, gzip 1 MB text", "dm(%r)" % fault.url("/bytes/%d?text=1&gzip=1" % (big // 4))),
        ("stream, plain 4 MB", "dm(%r, chunk_callback=chunk)" % fault.url("/bytes/%d" % big)),
        ("stream, 1 MB to a callback of 2 ms a chunk", "dm(%r, chunk_callback=slow_chunk)"
         % fast.url("/bytes/%d" % (big // 4))),
        ("stream, TLS 4 MB", "dm(%r, chunk_callback=chunk)" % fault_tls.url("/bytes/%d" % big)),
        ("stream, gzip bomb 20 MB", "dm(%r, chunk_callback=chunk)" % fault.url("/bytes/1?bomb=20")),
        ("read(1024) loop, gzip bomb 20 MB", "get(%r, 'read_n')" % fault.url("/bytes/1?bomb=20")),
        ("redirects, 10 in a row", "dm(%r)" % fault.url("/chain/10/bytes/10")),
        ("DNS, localhost", "resolve('localhost')"),
        ("32 KB head, 99 fields", "get(%r, 'headers')" % script.url("/big-head")),
        ("read() 200 KB", "get(%r, 'read')" % script.url("/utf8")),
        ("json() 200 KB", "get(%r, 'json')" % script.url("/json")),
        ("text() 200 KB UTF-8, ASCII", "get(%r, 'text')" % script.url("/utf8")),
        ("text() 200 KB UTF-8 with emoji", "get(%r, 'text')" % script.url("/utf8-emoji")),
        ("text() 200 KB latin-1", "get(%r, 'text')" % script.url("/latin1")),
        ("text() 200 KB latin-1, ASCII", "get(%r, 'text')" % script.url("/latin1-ascii")),
        ("text() 200 KB windows-1252, replace", "get(%r, 'text', errors='replace')" % script.url("/cp1252")),
        ("text() 200 KB bad UTF-8, replace", "get(%r, 'text', errors='replace')" % script.url("/bad-utf8")),
        ("text() 200 KB bad UTF-8, ignore", "get(%r, 'text', errors='ignore')" % script.url("/bad-utf8")),
        ("text() 200 KB latin-1 as us-ascii, replace",
         "get(%r, 'text', encoding='ascii', errors='replace')" % script.url("/latin1")),
        ("websocket, 10 + 10 messages of 256 KB", "ws(%r, 256 * 1024, 10)" % wsserver.url("/echo")),
    ]
    return rows


def main(argv):
    with tempfile.TemporaryDirectory() as tmp:
        certs = testservers.make_certs(tmp)
        with testservers.FaultServer() as fault, testservers.FaultServer(certs=certs) as fault_tls, \
                testservers.FastServer() as fast, wsservers.AiohttpWSServer() as wsserver:
            script = testservers.ScriptServer({path: steps for path, steps in _responses().items()})
            try:
                rows = [(n, c) for n, c in cases(fault, fault_tls, fast, script, wsserver, tmp + "/out.bin")
                        if not argv or any(a in n for a in argv)]
                code = "RUNS = %d\n" % RUNS + TICKER + "".join("    (%r, lambda: %s),\n" % row for row in rows) + "]\nrun(main())\n"
                proc, results = mpy.run(code, tmp, timeout=600, heapsize=HEAP)
            finally:
                script.close()
    if proc.returncode:
        print(proc.stdout, proc.stderr)
    print("%-46s %9s %8s %9s  %s" % ("operation", "gap ms", "turns", "total ms", "result"))
    for i in range(0, len(results), RUNS):
        r = min(results[i : i + RUNS], key=lambda r: r["gap_ms"])
        print("%-46s %9.2f %8d %9.1f  %s" % (r["name"], r["gap_ms"], r["turns"], r["total_ms"], r["what"]))


if __name__ == "__main__":
    main(sys.argv[1:])

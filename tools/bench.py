"""`make bench`: speed and memory of the library on the MicroPython unix port, each figure measured side by side
with its baseline in the same MicroPython process (rounds alternate; the best round of each counts), so a noisy
shared machine moves both sides alike. Prints one table; `--json` prints the raw numbers too.

    .venv/bin/python tools/bench.py [--quick] [--json] [--frozen build/unix/micropython]
                                    [--frozen-m32 build/unix-m32-frozen/micropython]
"""
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools import mpy  # noqa: E402
from tools.testservers import FastServer, FaultServer, make_certs, sha256_of  # noqa: E402

PROGRAMS = ROOT / "tools" / "bench_programs"  # the MicroPython side of each figure (tests compile them with mpy-cross)


def _program(name):
    return "\n" + (PROGRAMS / (name + ".py")).read_text()


RAW = _program("raw")

# race(name, sides): the sides of one figure timed in turn, round after round; each keeps its best
RACE = _program("race")

# The floor: a blocking socket, TCP_NODELAY, each request written in one piece (what no client can beat)
FLOOR = _program("floor")

# The library vs the raw asyncio loop and vs micropython-lib's requests, over plain HTTP
STREAMING = RAW + RACE + _program("streaming")

# 10 GETs one after another: a new ClientSession each, one ClientSession, DownloadManager, the floor
REUSE = RACE + FLOOR + _program("reuse")

# 20 MB over TLS to a file: DownloadManager, the floor, and the floor over plain HTTP (what TLS costs it)
TLS_BULK = RACE + FLOOR + _program("tls_bulk")

# A new ClientSession's first request (lookup, TCP, TLS, head) vs the same steps on a blocking socket
FIRST_REQUEST = RACE + FLOOR + _program("first_request")

# Heap held with n requests in flight, read inside a chunk callback once every one holds a full 1 KB chunk (the
# first chunk is often the short rest of the head's packet), minus what the same harness holds around a stand-in
# that hands a ready-made 1 KB chunk to the callback: what is left is the library's share, including the chunk
# copy a download hands out. at(name) reads the heap, each port its own way (HEAP, HEAP32); bench.py subtracts.
HELD = _program("held")

HEAP = HELD + _program("heap")

# Garbage per read that has to wait for the network, next to what the event loop itself allocates for a socket wait
# (tests/test_hot_path.py holds the library to it). HOW: "readinto" or "read" (read(1024), its bytes not counted).
WAITS = _program("waits")

# The same on a 32-bit MicroPython (tools/wasm32.mjs: its mark() reads the heap; top-level await runs it)
HEAP32 = 'URL = "http://127.0.0.1/bytes/200000"\nat = mark\n' + HELD + "await rounds()\n"


def heap_rows(marks, bits):
    # {tag: heap, tag-base: heap} -> table rows: per request (client alone) and per download, 1 and 8 in flight
    def held(tag):
        return marks[tag] - marks[tag + "-base"]

    rows, figures = [], {}
    for kind, what in (("client", "heap per client request (aiohttp alone), %d in flight, %s"),
                       ("download", "heap per download (stream mode), %d in flight, %s")):
        for n in (1, 8):
            harness = "harness-client%d" % n if kind == "client" else "harness%d" % n
            lib = held(kind + str(n)) - held(harness)
            figures["%s%d" % (kind, n)] = lib
            # the target is a device's (32-bit); 64-bit words double most of it, and its figure moves by about
            # 100 bytes with where the heap's tables happen to fall
            target = ("report" if kind == "client" else "(+ the session)" if n == 1
                      else "target <= 2048" if "32-bit" in bits else "report (the target is 32-bit's)")
            rows.append((what % (n, bits), "%d bytes (%d held)" % (lib // n, lib), "", target))
    return rows, figures


# Segmented downloads against a server that limits each connection's rate (as a slow link or a busy mirror
# does): segments=4 vs segments=1, and segments=1 vs no keyword (the same code path: it must cost nothing). The
# server's rate sets these times (they vary by milliseconds), so one round is enough; ROUNDS > 1 rotates the order.
SEGMENTS = _program("segments")

SMALL_HEAP = _program("small_heap")

CODE_RAM = _program("code_ram")

HEAPS_KB = (16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60, 64, 68, 72, 76, 80, 84, 88, 96, 104, 112, 128)


def measure_smallest_heap(work, url, size, frozen=None, frozen_m32=None):
    """-> {"ram": smallest heap in KB that downloads `size` bytes to a file with the .mpy files loaded into RAM,
    "romfs": the same with their bytecode run in place from a ROMFS image (the image's own bytes, and the allocation
    tables' share of them, not counted: mpy.romfs_heapsize),
    "code_ram": heap the library takes when loaded from .mpy files, once a download ran, "code_romfs": the same run
    from the ROMFS image}, and with a `frozen` interpreter (one with the library frozen in, from make frozen)
    "frozen", "code_frozen" (at import) and "used_frozen" (once a download ran), with nothing but its frozen
    modules on the path; with `frozen_m32` (the same built 32-bit, make test-m32-frozen's) the same three figures
    named "frozen_m32", "code_frozen_m32", "used_frozen_m32". A heap figure is None when even the largest tried is
    not enough."""
    import hashlib

    lib = Path(work) / "mpy-lib"
    errors = mpy.compile_lib(lib)
    assert not errors, errors
    out = Path(work) / "small.bin"
    want = sha256_of(size)
    image = Path(work) / "lib.romfs"
    image.write_bytes(mpy.romfs_image(lib))

    def code_ram(where, prelude="", **how):
        # -> (heap at import, heap once a download ran)
        r = check(*mpy.run(prelude + CODE_RAM, work, lib=lib, heapsize="1M", URL=small_url, bare=True,
                           **how), "code ram")[-1]
        assert r["file"].startswith(where), r
        return r["code"], r["used"]

    def downloads_in(kb, snippet, heapsize_of, where, how):
        mpy.no_download_at(out)
        # bare: the test helpers would take heap of their own (~3 KB, compiled from source)
        proc, res = mpy.run(snippet, work, lib=lib, heapsize=str(heapsize_of(kb)), timeout=120, bare=True,
                            URL=url, OUT=str(out), **how)
        if proc.returncode == 0 and res and res[-1]["ok"] is True and out.exists():
            assert res[-1]["file"].startswith(where), res  # the library came from where it should
            return hashlib.sha256(out.read_bytes()).hexdigest() == want
        return False

    def smallest(snippet, heapsize_of, where, **how):
        # the first of HEAPS_KB that is enough, then in 1 KB steps up from the one before it
        below = None
        for kb in HEAPS_KB:
            if downloads_in(kb, snippet, heapsize_of, where, how):
                finer = range(below + 1, kb) if below is not None else ()
                return next((fine for fine in finer if downloads_in(fine, snippet, heapsize_of, where, how)), kb)
            below = kb
        return None

    small_url = url.rsplit("/", 1)[0] + "/1000"  # (url ends in /bytes/<size>)
    def kb_heap(kb):
        return kb * 1024

    def kb_heap_beside_image(kb):  # (the image is read into the heap: the program gets a kb-KB heap's pool besides)
        return mpy.romfs_heapsize(kb * 1024, image.stat().st_size)

    figures = {"ram": smallest(SMALL_HEAP, kb_heap, str(lib)), "code_ram": code_ram(str(lib))[1],
               "romfs": smallest(mpy.ROMFS_PRELUDE + SMALL_HEAP, kb_heap_beside_image, "/rom/", IMAGE=str(image)),
               "code_romfs": code_ram("/rom/", mpy.ROMFS_PRELUDE, IMAGE=str(image))[1]}
    for binary, name in ((frozen, "frozen"), (frozen_m32, "frozen_m32")):
        if binary:
            # frozen modules are named without a folder: mpos/net/download_manager.py, aiohttp/__init__.py
            only_frozen = {"binary": binary, "path": ".frozen:%s" % mpy.TESTLIB}
            figures[name] = smallest(SMALL_HEAP, kb_heap, "mpos/", **only_frozen)
            figures["code_" + name], figures["used_" + name] = code_ram("aiohttp/", **only_frozen)
    return figures


def heap_32bit(work):
    """The heap figures on MicroPython's webassembly port (32-bit, like the ESP32; installed by `make bench`),
    the socket replaced by tools/standin_socket.py. -> (rows, figures); a row saying why when it cannot run."""
    import shutil
    import subprocess

    port = ROOT / ".wasm" / "node_modules" / "@micropython" / "micropython-webassembly-pyscript" / "micropython.mjs"
    if not port.exists() or not shutil.which("node"):
        return [("heap per download, webassembly, 32-bit", "not measured: needs node (make bench installs the port)",
                 "", "")], {}
    script = Path(work) / "heap32.py"
    script.write_text(HEAP32)
    proc = subprocess.run(["node", str(ROOT / "tools" / "wasm32.mjs"), str(port), str(mpy.LIB), str(script)],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        sys.exit("bench heap (32-bit) failed:\n%s\n%s" % (proc.stdout, proc.stderr))
    return heap_rows(json.loads(proc.stdout.splitlines()[-1]), "webassembly, 32-bit")


# --- websockets (aiohttp/websocket.py): heap per idle websocket, a 4 KB echo loop, the cost of masking ----------

# Heap held by n open websockets, each idle after one message there and back. at(name) reads the heap, each port
# its own way (as HELD's); the difference over n is one websocket's share: its object, its connection and socket,
# its send Lock, its slot in the session's list (and one in `kept`, the harness's).
WS_IDLE = _program("ws_idle")

WS_IDLE64 = WS_IDLE + _program("ws_idle64")

WS_IDLE32 = 'URL = "ws://127.0.0.1/echo"\nN = %d\nat = mark\n' + WS_IDLE + "await asyncio.create_task(idle(N))\n"

# The masking of a 4 KB payload (four 1 KB blocks, the key over a block made once, as _send does), and the same with
# a generator that XORs byte by byte, as micropython-lib's websocket client masks; rounds alternate, best counts.
WS_MASK = _program("ws_mask")

# Round trips of a 4 KB binary message to an echo server (aiohttp.web, in this process's thread), with our masking
# and with the byte-by-byte generator in its place: messages per second both ways.
WS_ECHO = _program("ws_echo")


def websocket_rows(work, certs, rounds, quick):
    """The websocket client's rows: heap per open idle websocket (64-bit unix, plain and TLS; 32-bit
    webassembly), a 4 KB echo loop, masking per KB beside a byte-by-byte generator. -> (rows, raw figures)"""
    from tools.wsservers import AiohttpWSServer

    rows, raw, n = [], {}, 8
    with AiohttpWSServer() as srv, AiohttpWSServer(certs=certs) as tls_srv:
        # (mbedTLS's own buffers, 20-40 KB a connection on an ESP32, come from the C heap, not MicroPython's)
        for name, server in (("ws://", srv), ("wss://, without mbedTLS's buffers", tls_srv)):
            marks = {r["mark"]: r["heap"] for r in check(*mpy.run(WS_IDLE64, work, heapsize="8M", N=n,
                                                                   URL=server.url("/echo")), "ws idle")}
            per = (marks["ws-open"] - marks["ws-base"]) // n
            raw["idle64 " + name] = per
            rows.append(("heap per open idle websocket, unix 64-bit (%s)" % name, "%d bytes" % per, "", "report"))
        per = websocket_heap_32bit(work, n)
        raw["idle32"] = per
        rows.append(("heap per open idle websocket, webassembly 32-bit (ws://)",
                     "%d bytes" % per if per else "not measured: needs node (make bench installs the port)", "",
                     "report"))
        r = check(*mpy.run(WS_ECHO, work, timeout=300, URL=srv.url("/echo"), N=100 if quick else 400,
                           ROUNDS=rounds), "ws echo")[-1]
        raw["echo"] = r
        rows.append(("4 KB websocket message echo loop (loopback, aiohttp.web server)",
                     "%.0f msg/s (%.1f MB/s each way) vs %.0f msg/s masking byte by byte"
                     % (r["bulk"], r["bulk"] * 4096 / 1e6, r["bytewise"]), "%.1fx" % (r["bulk"] / r["bytewise"]),
                     "report"))
    r = check(*mpy.run(WS_MASK, work, REPEAT=20 if quick else 100, ROUNDS=rounds), "ws mask")[-1]
    raw["mask"] = r
    rows.append(("websocket masking per KB vs a byte-by-byte generator XOR",
                 "%.1f us vs %.1f us" % (r["bulk"], r["bytewise"]), "%.0fx faster" % (r["bytewise"] / r["bulk"]),
                 "target >= 10x"))
    return rows, raw


def websocket_heap_32bit(work, n):
    """Bytes per open idle websocket on the webassembly port (tools/wasm32.mjs; the standin socket echoes), or None
    when the port or node is missing."""
    import shutil
    import subprocess

    port = ROOT / ".wasm" / "node_modules" / "@micropython" / "micropython-webassembly-pyscript" / "micropython.mjs"
    if not port.exists() or not shutil.which("node"):
        return None
    script = Path(work) / "ws32.py"
    script.write_text(WS_IDLE32 % n)
    proc = subprocess.run(["node", str(ROOT / "tools" / "wasm32.mjs"), str(port), str(mpy.LIB), str(script)],
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        sys.exit("bench websocket heap (32-bit) failed:\n%s\n%s" % (proc.stdout[-3000:], proc.stderr[-3000:]))
    marks = json.loads(proc.stdout.splitlines()[-1])
    return (marks["ws-open"] - marks["ws-base"]) // n

def _mbps(nbytes, us):
    return nbytes / us  # bytes per microsecond: MB/s


def speed_rows(work, certs, srv, size, rounds):
    """The speed rows, each a race in one MicroPython process: the library against the raw asyncio loop and
    micropython-lib's requests (plain HTTP, srv), and against the floor (FastServer, over TLS). -> (rows, raw)"""
    rows, raw = [], {}
    memsize = 3 * 1024 * 1024
    out = str(Path(work) / "out.bin")
    proc, res = mpy.run(STREAMING, work, heapsize="16M", timeout=600, HOST="127.0.0.1", PORT=srv.port,
                        PATH="/bytes/%d" % size, MEMPATH="/bytes/%d" % memsize, SIZE=size, MEMSIZE=memsize,
                        OUT=out, ROUNDS=rounds)
    for r in check(proc, res, "streaming"):
        us, n = r["us"], r["nbytes"]
        rows.append((r["name"] + " (%d MB, loopback)" % (n // 2**20),
                     "%.0f MB/s vs %.0f MB/s raw asyncio readinto" % (_mbps(n, us["lib"]), _mbps(n, us["raw"])),
                     "%.2fx" % (us["raw"] / us["lib"]), "target >= 0.9x"))
        if "peer" in us:
            rows.append(("  the same vs micropython-lib requests, r.raw.readinto into 1 KB (blocking)",
                         "%.0f MB/s vs %.0f MB/s" % (_mbps(n, us["lib"]), _mbps(n, us["peer"])),
                         "%.2fx" % (us["peer"] / us["lib"]), "target >= 0.8x"))
        if "peer_bytes" in us:
            rows.append(("  the same vs requests handing each chunk as bytes of its own (r.raw.read(1024)), as stream mode must",
                         "%.0f MB/s vs %.0f MB/s" % (_mbps(n, us["lib"]), _mbps(n, us["peer_bytes"])),
                         "%.2fx" % (us["peer_bytes"] / us["lib"]), "report"))
        raw[r["name"]] = r
    with FastServer(certs) as tls_srv, FastServer() as plain_srv:
        r = check(*mpy.run(REUSE, work, timeout=300, HOST="127.0.0.1", PORT=tls_srv.port, PATH="/bytes/1000",
                           URL=tls_srv.url("/bytes/1000"), ROUNDS=rounds), "reuse")[-1]
        raw["reuse"] = us = r["us"]
        rows.append(("10 sequential HTTPS GETs, keep-alive vs new connection each (one ClientSession)",
                     "%.1f ms vs %.1f ms" % (us["session"] / 1000, us["fresh"] / 1000),
                     "%.1fx faster" % (us["fresh"] / us["session"]), "target >= 3x"))
        rows.append(("10 sequential keep-alive HTTPS GETs, DownloadManager vs the floor (blocking, TCP_NODELAY)",
                     "%.1f ms vs %.1f ms" % (us["dm"] / 1000, us["floor"] / 1000),
                     "%.2fx" % (us["dm"] / us["floor"]), "target <= 1.5x"))
        rows.append(("  the same with one ClientSession (the client alone)",
                     "%.1f ms vs %.1f ms" % (us["session"] / 1000, us["floor"] / 1000),
                     "%.2fx" % (us["session"] / us["floor"]), "report"))
        path = "/bytes/%d" % size
        r = check(*mpy.run(TLS_BULK, work, heapsize="16M", timeout=600, HOST="127.0.0.1", PORT=tls_srv.port,
                           PLAIN_PORT=plain_srv.port, PATH=path, URL=tls_srv.url(path), SIZE=size, OUT=out,
                           ROUNDS=rounds), "tls bulk")[-1]
        raw["tls_bulk"] = us = r["us"]
        rows.append(("HTTPS to a file (%d MB), DownloadManager vs the floor: blocking TLS readinto + write" % (
                     size // 2**20), "%.0f MB/s vs %.0f MB/s" % (_mbps(size, us["lib"]), _mbps(size, us["floor"])),
                     "%.2fx" % (us["floor"] / us["lib"]), "target >= 0.95x"))
        rows.append(("  the floor's time that is TLS's (the same loop over plain HTTP: %.0f MB/s)"
                     % _mbps(size, us["plain"]), "%.0f %%" % (100 - 100 * us["plain"] / us["floor"]), "", "report"))
        r = check(*mpy.run(FIRST_REQUEST, work, timeout=300, HOST="localhost", PORT=tls_srv.port, PATH="/bytes/0",
                           URL=tls_srv.url("/bytes/0", host="localhost"), ROUNDS=3 * rounds), "first request")[-1]
        raw["first_request"] = us = r["us"]
        rows.append(("first request to a host (cached lookup, TCP, TLS handshake, head), new ClientSession vs by hand",
                     "%.1f ms vs %.1f ms" % (us["lib"] / 1000, us["floor"] / 1000),
                     "%.2fx" % (us["lib"] / us["floor"]), "target <= 1.2x"))
    return rows, raw


def check(proc, res, what):
    if proc.returncode != 0 or not res:
        sys.exit("bench %s failed:\n%s\n%s" % (what, proc.stdout, proc.stderr))
    return res


def main(argv):
    quick = "--quick" in argv
    frozen, frozen_m32 = (str(Path(argv[argv.index(flag) + 1]).resolve()) if flag in argv else None
                          for flag in ("--frozen", "--frozen-m32"))
    size = (4 if quick else 20) * 1024 * 1024
    rounds = 2 if quick else 4
    rows = []
    raw = {}
    with tempfile.TemporaryDirectory() as work:
        certs = make_certs(work)
        with FaultServer() as srv:
            more, speed = speed_rows(work, certs, srv, size, rounds)
            rows += more
            raw.update(speed)
            proc, res = mpy.run(HEAP, work, heapsize="4M", timeout=120, URL=srv.url("/bytes/200000"))
            res = check(proc, res, "heap")
            rows.append(("allocated per content.readinto call (garbage)",
                         "%.0f bytes" % res[0]["readinto_per_chunk"], "", "report"))
            for how in ("readinto", "read"):
                bare, client = check(*mpy.run(WAITS, work, URL=srv.url("/bytes/16384?rate=40960"), HOW=how), "waits")
                raw["wait_" + how] = {"bare": bare["per_wait"], "client": client["per_wait"]}
                rows.append(("garbage per %s that waits for data, vs a bare asyncio socket wait"
                             % ("content.readinto" if how == "readinto" else "content.read(1024), its bytes aside,"),
                             "%d bytes vs %d bytes" % (client["per_wait"], bare["per_wait"]), "", "report"))
            more, raw["heap"] = heap_rows({r["mark"]: r["heap"] for r in res[1:]}, "unix, 64-bit")
            rows += more
            more, raw["heap32"] = heap_32bit(work)
            rows += more
            more, raw["websocket"] = websocket_rows(work, certs, rounds, quick)
            rows += more
            seg_size, seg_rate = 2 * 2**20, 2**20
            proc, res = mpy.run(SEGMENTS, work, timeout=300, URL=srv.url("/bytes/%d?rate=%d" % (seg_size, seg_rate)),
                                SHA=sha256_of(seg_size), OUT=str(Path(work) / "seg.bin"), ROUNDS=1)
            r = check(proc, res, "segments")[-1]
            raw["segments"] = r
            rows.append(("file mode, segments=4 vs segments=1 (2 MB, server: 1 MB/s per connection)",
                         "%.2f s vs %.2f s" % (r["four"] / 1e6, r["one"] / 1e6),
                         "%.1fx faster" % (r["one"] / r["four"]), "target >= 3x"))
            rows.append(("file mode, segments=1 vs no keyword (same server)",
                         "%.3f s vs %.3f s" % (r["one"] / 1e6, r["none"] / 1e6),
                         "%.2fx" % (r["none"] / r["one"]), "target ~1.0x (costs nothing)"))
            small = raw["smallest_heap"] = measure_smallest_heap(work, srv.url("/bytes/%d" % (3 * 2**20)), 3 * 2**20,
                                                                 frozen, frozen_m32)

            def kb(figure):
                return "%s KB" % figure if figure else "> %d KB" % HEAPS_KB[-1]

            rows.append(("smallest heap for 3 MB to a file, bytecode in flash (ROMFS image, run in place)",
                         kb(small["romfs"]), "", "target <= 64 KB"))
            rows.append(("  of which the library once a download ran, run from the ROMFS image",
                         "%.1f KB" % (small["code_romfs"] / 1024), "", "report"))
            if frozen:
                rows.append(("smallest heap for 3 MB to a file, the library frozen in (make frozen)",
                             kb(small["frozen"]), "", "target <= 32 KB"))
                rows.append(("  heap at import of mpos + aiohttp (asyncio's included), frozen in",
                             "%.1f KB" % (small["code_frozen"] / 1024), "", "target <= 16 KB"))
                rows.append(("  the same once a download ran (the client and download.py load with it)",
                             "%.1f KB" % (small["used_frozen"] / 1024), "", "report"))
                if frozen_m32:
                    rows.append(("  the smallest heap, frozen into the unix port built 32-bit (an ESP32's word size)",
                                 kb(small["frozen_m32"]), "", "report"))
                    rows.append(("  heap at import / once a download ran, frozen, 32-bit",
                                 "%.1f / %.1f KB" % (small["code_frozen_m32"] / 1024, small["used_frozen_m32"] / 1024),
                                 "", "report"))
                else:
                    rows.append(("  the same built 32-bit (an ESP32's word size)", "not measured", "",
                                 "needs a 32-bit C toolchain: apt-get install gcc-multilib"))
            rows.append(("smallest heap for 3 MB to a file, .mpy files loaded into RAM",
                         kb(small["ram"]), "", "(no flash to run from)"))
            rows.append(("  of which the library once a download ran, loaded from .mpy files",
                         "%.1f KB" % (small["code_ram"] / 1024), "", ""))
    w = max(len(r[0]) for r in rows)
    print("MicroPythonOS DownloadManager benchmark (%s%s)" % (mpy.micropython(), "; frozen: %s" % frozen if frozen else ""))
    for r in rows:
        print("%-*s  %-44s %-12s %s" % (w, r[0], r[1], r[2], r[3]))
    if "--json" in argv:
        print(json.dumps(raw))


if __name__ == "__main__":
    main(sys.argv[1:])
